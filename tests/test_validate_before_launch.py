"""Issue 13, part 1: `affiner train` refuses bad input before it starts a worker.

Each bad input goes through the real CLI (`affiner.tui.cli.main`): exit code 2, a message that
names the file and line or the run.toml key, no traceback, no "Started run", and no run folder
left under $AFFINER_RUNS. The model is a config.json alone (the check never loads weights);
the warnings the check prints are compared with the ones the worker's data report carries.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from affiner.runner.config import load_config
from affiner.tui.cli import main

LLAMA = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 256,
    "rope_theta": 10000.0,
    "vocab_size": 300,
}
CHAT = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


class Project:
    """A folder with a model config, data files and a run.toml, and the runs root it launches into."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.runs = root / "runs"
        self.model = root / "model"
        self.model.mkdir()
        self.write_model(LLAMA)

    def write_model(self, config: dict) -> None:
        (self.model / "config.json").write_text(json.dumps(config), encoding="utf-8")

    def rows(self, name: str, rows: list, *, raw: bytes | None = None) -> Path:
        path = self.root / name
        if raw is not None:
            path.write_bytes(raw)
        else:
            path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        return path

    def toml(self, *, model: str = "model", data: str = "", train: str = "train.jsonl") -> Path:
        path = self.root / "run.toml"
        path.write_text(
            f'[model]\nname_or_path = "{model}"\n{self._task}\n[method]\nname = "lora"\n\n'
            f'[data]\ntrain = "{train}"\nmax_seq_len = 64\n{data}\n',
            encoding="utf-8",
        )
        return path

    _task = ""

    def classification(self) -> Project:
        self._task = 'task = "classification"\n'
        return self


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AFFINER_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    return Project(tmp_path)


def refused(project: Project, capsys: pytest.CaptureFixture[str], toml: Path) -> str:
    """Run `affiner train TOML`; assert it refused before launching; return its stderr."""
    assert main(["train", str(toml)]) == 2
    out, err = capsys.readouterr()
    assert "Started run" not in out and "Traceback" not in err, (out, err)
    assert not project.runs.exists() or list(project.runs.iterdir()) == []
    return err


def texts(n: int = 30) -> list[dict]:
    return [{"text": f"row number {i}"} for i in range(n)]


# ---------------------------------------------------------------------------- data


def test_latin1_data_names_file_line_and_column(project: Project, capsys) -> None:
    body = "".join(json.dumps(r) + "\n" for r in texts(5)) + '{"text": "caf\xe9"}\n'
    project.rows("train.jsonl", [], raw=body.encode("latin-1"))
    err = refused(project, capsys, project.toml())
    assert "train.jsonl:6: not UTF-8 text: byte 0xe9 at column 14" in err
    assert "byte 15" not in err and "iconv" in err


def test_binary_data_is_refused_at_its_line(project: Project, capsys) -> None:
    project.rows("train.jsonl", [], raw=b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    err = refused(project, capsys, project.toml())
    assert "train.jsonl:1: binary data, not text" in err
    project.rows("train.jsonl", [], raw=b'{"text": "a"}\n{"text": "\x00"}\n')
    assert "train.jsonl:2: a NUL byte at column 11" in refused(project, capsys, project.toml())


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("missing", "train.jsonl: data file not found"),
        ("empty", "train.jsonl: the file holds no examples"),
        ("folder", "train.jsonl: this is a folder, and not a data set saved with `datasets`"),
    ],
)
def test_missing_empty_or_folder_data(project: Project, capsys, setup: str, expected: str) -> None:
    if setup == "empty":
        project.rows("train.jsonl", [], raw=b"\n\n")
    elif setup == "folder":
        (project.root / "train.jsonl").mkdir()
    assert expected in refused(project, capsys, project.toml())


def test_unknown_columns_and_a_rename_to_a_missing_column(project: Project, capsys) -> None:
    project.rows("train.jsonl", [{"question": f"q{i}", "reply": "r"} for i in range(10)])
    err = refused(project, capsys, project.toml())
    assert "train.jsonl: cannot tell the data format from the columns ['question', 'reply']" in err
    project.rows("train.jsonl", texts())
    err = refused(project, capsys, project.toml(data='columns = {text = "review"}'))
    assert "maps text to 'review', which is not a column" in err and "[data].columns" in err


def test_labels_outside_the_label_list(project: Project, capsys) -> None:
    project.classification()
    rows = [{"text": f"t{i}", "label": "meh"} for i in range(10)]
    project.rows("train.jsonl", rows)
    err = refused(project, capsys, project.toml(data='labels = ["good", "bad"]'))
    assert "10 of 10 train rows cannot be used" in err
    assert "train.jsonl:1: unknown label 'meh' (not in [data].labels: good, bad)" in err


def test_a_single_class_is_refused(project: Project, capsys) -> None:
    project.classification()
    project.rows("train.jsonl", [{"text": f"t{i}", "label": "good"} for i in range(10)])
    err = refused(project, capsys, project.toml())
    assert "every training row has the label 'good'" in err and "two classes" in err


@pytest.mark.parametrize(
    ("turn", "expected"),
    [
        ({"role": "assistant", "content": "  "}, "train.jsonl:4: turn 2 (assistant) is empty"),
        ({"role": "bot", "content": "hi"}, "train.jsonl:4: turn 2 has unknown role 'bot'"),
    ],
)
def test_bad_chat_turns_name_their_line(project: Project, capsys, turn: dict, expected: str):
    rows = [{"messages": CHAT} for _ in range(6)]
    rows[3] = {"messages": [CHAT[0], turn]}
    project.rows("train.jsonl", rows)
    err = refused(project, capsys, project.toml(data="max_dropped_fraction = 0.0"))
    assert expected in err


def test_a_json_file_holding_one_object(project: Project, capsys) -> None:
    project.rows("train.json", [], raw=b'\n{"text": "just one"}\n')
    err = refused(project, capsys, project.toml(train="train.json"))
    assert "train.json:2: this .json file holds a single object (keys: 'text')" in err
    assert ".jsonl" in err


def test_a_torn_json_string_reads_without_at_at(project: Project, capsys) -> None:
    project.rows("train.jsonl", [], raw=b'{"text": "ok"}\n{"text": "torn')
    err = refused(project, capsys, project.toml())
    assert "train.jsonl:2: not valid JSON (Unterminated string starting at column 10)" in err
    assert "at at" not in err


def test_csv_rows_count_by_kind_not_by_a_literal_n(project: Project) -> None:
    from affiner.runner.config import DataSection
    from affiner.runner.data import load_rows

    path = project.rows("t.csv", [], raw=b"text\n" + b"".join(b"row %d\n" % i for i in range(30)))
    path.write_bytes(path.read_bytes() + b'a,b\n"x",y,z\n')
    loaded = load_rows(DataSection(train=str(path), max_dropped_fraction=0.5))
    assert loaded.drop_reasons == {"wrong number of fields": 2}


def test_a_conversation_is_cut_as_a_whole_and_short_rows_are_left_alone() -> None:
    from affiner.runner.data.rows import cut_values

    row = {"text": "short", "n": 3}
    assert cut_values(row, 96) == (row, False) and cut_values(row, 96)[0] is row
    turns = [("user", "a" * 40), ("assistant", "b" * 60), ("user", "cc"), ("assistant", "d")]
    long = {"messages": [{"role": r, "content": c} for r, c in turns], "text": "x" * 200}
    cut, changed = cut_values(long, 96)  # 96 characters: 3 tokens of max_seq_len at most
    assert changed and cut["text"] == "x" * 96
    assert cut["messages"] == [
        {"role": "user", "content": "a" * 40},
        {"role": "assistant", "content": "b" * 56},  # the turns share the budget, roles aside
        {"role": "user", "content": "c"},  # past it: a character; truncation decides the rest
    ]  # and no more turns than tokens
    assert long["messages"][1]["content"] == "b" * 60  # the row read is not changed in place


# ---------------------------------------------------------------------------- model


def test_missing_model_folder(project: Project, capsys) -> None:
    project.rows("train.jsonl", texts())
    err = refused(project, capsys, project.toml(model="./nowhere"))
    assert (
        "run.toml:2 [model].name_or_path: model folder" in err and "nowhere does not exist" in err
    )


def test_model_folder_without_config(project: Project, capsys) -> None:
    project.rows("train.jsonl", texts())
    (project.model / "config.json").unlink()
    (project.model / "model.safetensors").write_bytes(b"")
    err = refused(project, capsys, project.toml())
    assert "no config.json in the model folder" in err and "model.safetensors" in err


def test_a_broken_model_config_names_its_line(project: Project, capsys) -> None:
    project.rows("train.jsonl", texts())
    (project.model / "config.json").write_text('{\n  "model_type": "llama",\n  "hidden_size": \n')
    err = refused(project, capsys, project.toml())
    assert (
        "config.json:4: the model's config is not valid JSON (Expecting value at column 1)" in err
    )


def test_offline_hub_id_not_in_the_cache(project: Project, capsys) -> None:
    project.rows("train.jsonl", texts())
    err = refused(project, capsys, project.toml(model="someone/unseen-model"))
    assert "[model].name_or_path: someone/unseen-model is not a local folder" in err
    assert "HF_HUB_OFFLINE is set" in err and "hf download someone/unseen-model" in err


def test_a_cached_hub_id_is_checked_from_its_cache_entry(project: Project) -> None:
    from affiner.runner.run.validate import check_model, locate_model_config

    repo = project.root / "hf" / "hub" / "models--someone--tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "config.json").write_text(json.dumps(LLAMA))
    project.rows("train.jsonl", texts())
    cfg = load_config(project.toml(model="someone/tiny"))
    assert locate_model_config(cfg) == repo / "snapshots" / "abc123" / "config.json"
    assert check_model(cfg) == []


def test_config_with_only_model_type(project: Project, capsys) -> None:
    project.rows("train.jsonl", texts())
    project.write_model({"model_type": "llama"})
    err = refused(project, capsys, project.toml())
    assert "config.json: config.json names model_type 'llama' but none of the model's sizes" in err


def test_remote_code_hint_names_trust_remote_code(project: Project, capsys) -> None:
    project.rows("train.jsonl", texts())
    custom = dict(LLAMA, model_type="my_own_arch", auto_map={"AutoConfig": "conf.MyConfig"})
    project.write_model(custom)
    err = refused(project, capsys, project.toml())
    assert "run.toml:1 [model].trust_remote_code: this model's architecture ('my_own_arch')" in err
    assert "set trust_remote_code = true under [model]" in err


def test_max_seq_len_past_a_learned_position_table_is_refused(project: Project, capsys) -> None:
    project.rows("train.jsonl", texts())
    bert = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2,
            "max_position_embeddings": 32, "position_embedding_type": "absolute"}  # fmt: skip
    project.write_model(bert)
    err = refused(project, capsys, project.toml())
    assert "run.toml:9 [data].max_seq_len: [data].max_seq_len is 64, but the model has 32" in err
    assert "max_seq_len = 32" in err


# ---------------------------------------------------------------------------- warnings


def test_warnings_before_launch_for_what_trains_but_not_as_meant(project: Project) -> None:
    from affiner.runner.run.validate import check_before_launch

    project.write_model(dict(LLAMA, max_position_embeddings=32))  # rotary: a warning
    rows = [{"messages": [CHAT[1], CHAT[0], CHAT[1]]} for _ in range(3)]
    rows += [{"messages": [{"role": "user", "content": f"q{i}"}, CHAT[1]]} for i in range(20)]
    rows.append({"messages": [CHAT[0], {"role": "assistant", "content": "x" * 5000}]})
    project.rows("train.jsonl", rows)
    project.rows("eval.jsonl", rows[3:5])  # both also in train: the eval set is emptied
    cfg = load_config(project.toml(data='eval = "eval.jsonl"\ndedupe = false'))
    warnings = check_before_launch(cfg)
    text = "\n".join(warnings)
    assert "beyond the model's 32 positions" in text
    assert "3 chat rows have turns out of order (" in text and "train.jsonl:1: it opens" in text
    assert "No eval row is left, so the run will not evaluate" in text
    assert "1 row has a text longer than 2,048 characters" in text
    assert len(warnings) == 4


def test_prepare_run_reports_the_warnings_and_a_one_row_eval(project: Project) -> None:
    from affiner.runner.run import prepare_run

    project.rows("train.jsonl", texts(10))
    prepared = prepare_run(project.toml(data="eval_fraction = 0.1"), preflight=False)
    assert any("The eval set has 1 row" in w for w in prepared.warnings)
    assert prepared.run_dir.path.is_dir()


def test_the_worker_reports_the_same_data_warnings(project: Project) -> None:
    """`prepare_data` (the worker) words the warnings the pre-launch check printed."""
    from affiner.runner.data import prepare_data
    from affiner.runner.data.notices import loading_warnings
    from affiner.runner.data.rows import load_rows
    from tests.tiny_models import build_tokenizer

    rows = [{"messages": [CHAT[1], CHAT[0], CHAT[1]]}]
    rows += [{"messages": [{"role": "user", "content": f"q{i}"}, CHAT[1]]} for i in range(20)]
    rows += [{"messages": "not a list"}]
    rows.append({"messages": [CHAT[0], {"role": "assistant", "content": "x" * 5000}]})
    project.rows("train.jsonl", rows)
    cfg = load_config(project.toml(data="max_dropped_fraction = 0.2\neval_fraction = 0"))
    before = loading_warnings(load_rows(cfg.data, keep_rows=False))
    report = prepare_data(cfg, build_tokenizer(project.root / "tok")).report
    assert {w.code for w in before} == {"dropped_rows", "chat_order", "long_rows"}
    assert [w for w in report.warnings if w.code != "truncation"] == before
    assert report.cut_rows == 1 and report.train_tokens.truncated >= 1


# ---------------------------------------------------------------------------- the process


def _cli(args: list[str], env: dict[str, str], **kwargs) -> subprocess.CompletedProcess[str]:
    code = "import sys; from affiner.tui.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *args], env=env, text=True, timeout=120, **kwargs
    )


def test_a_real_affiner_train_exits_2_and_leaves_nothing(project: Project) -> None:
    project.rows("train.jsonl", [], raw=b'{"text": "a"}\n{"text": "\xff"}\n')
    result = _cli(["train", str(project.toml())], dict(os.environ), capture_output=True)
    assert result.returncode == 2, result.stderr
    assert "train.jsonl:2: not UTF-8 text" in result.stderr and "Traceback" not in result.stderr
    assert "Started run" not in result.stdout and not project.runs.exists()


def test_a_closed_pipe_and_a_full_disk_end_quietly(project: Project) -> None:
    env = dict(os.environ)
    closed = subprocess.Popen(
        [sys.executable, "-c", "import sys; from affiner.tui.cli import main; "
         "sys.exit(main(['runs', '--json']))"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert closed.stdout is not None
    closed.stdout.close()  # the reader is gone before the first line is written
    _, err = closed.communicate(timeout=120)
    assert closed.returncode == 141 and err == "", err
    with open("/dev/full", "w") as full:  # every write to it fails with ENOSPC
        result = _cli(["runs", "--json"], env, stdout=full, stderr=subprocess.PIPE)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("affiner: no space left on") and result.stderr.count("\n") == 1


BIG_LINE_SCRIPT = """
import json, sys, threading, time
from pathlib import Path

def rss():
    with open("/proc/self/status") as status:
        return next(int(l.split()[1]) * 1024 for l in status if l.startswith("VmRSS"))

def peak_during(work):
    base, top, done = rss(), [0], threading.Event()
    def watch():
        while not done.is_set():
            top[0] = max(top[0], rss())
            time.sleep(0.005)
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        result = work()
    finally:
        done.set()
        watcher.join()
    return result, max(top[0], rss()) - base

from affiner.runner.config import load_config
from affiner.runner.run.validate import check_data
cfg = load_config(sys.argv[1])
warnings, check_peak = peak_during(lambda: check_data(cfg))
from affiner.runner.data import prepare_data
from tests.tiny_models import build_tokenizer
tokenizer = build_tokenizer(Path(sys.argv[2]))
prepared, prepare_peak = peak_during(lambda: prepare_data(cfg, tokenizer))
report = prepared.report
print(json.dumps({"warnings": warnings, "check_peak": check_peak, "prepare_peak": prepare_peak,
                  "cut": report.cut_rows, "truncated": report.train_tokens.truncated}))
"""


@pytest.mark.slow
def test_a_64_mb_line_stays_cheap_before_and_after_the_launch(project: Project) -> None:
    """The issue's 200 MB line drove the worker past 6 GB while tokenizing; cut to the character
    budget first, a 64 MB line costs the check and the tokenizer a few copies of the line."""
    line = 64 << 20
    with open(project.root / "train.jsonl", "w", encoding="utf-8") as handle:
        for i in range(20):
            handle.write(json.dumps({"text": f"row number {i}"}) + "\n")
        handle.write('{"text": "' + "the cat sat on a mat " * (line // 21) + '"}\n')
    toml = project.toml(data="eval_fraction = 0")
    repo = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run(
        [sys.executable, "-c", BIG_LINE_SCRIPT, str(toml), str(project.root / "tok")],
        env=env, capture_output=True, text=True, timeout=300, cwd=repo,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["cut"] == 1 and seen["truncated"] == 1
    assert any("1 row has a text longer than 2,048 characters" in w for w in seen["warnings"])
    assert seen["check_peak"] < 6 * line, seen
    assert seen["prepare_peak"] < 6 * line, seen


def test_enospc_from_any_command_is_one_line_naming_the_file(
    project: Project, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import errno

    import affiner.tui.cli.runs as runs_cli

    target = project.root / "runs" / "x" / "status.json"

    def full(_args) -> int:
        raise OSError(errno.ENOSPC, "No space left on device", str(target))

    monkeypatch.setattr(runs_cli, "cmd_runs", full)
    assert main(["runs"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"affiner: no space left on the disk holding {target} (")
    assert " free); free some space" in err and err.count("\n") == 1
