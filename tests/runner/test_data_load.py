"""Reading and checking data without a tokenizer: files, formats, bad rows, split, duplicates, leakage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from affiner.runner.config.schema import DataSection
from affiner.runner.data.prepare import DataError, load_rows
from tests.tiny_models import write_jsonl

CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def rows(n: int, fmt: str = "text") -> list[dict]:
    make = {
        "text": lambda i: {"text": f"row number {i}"},
        "instruction": lambda i: {"instruction": f"say {i}", "input": "", "output": f"{i}"},
        "prompt_completion": lambda i: {"prompt": f"count {i}", "completion": f" {i + 1}"},
        "classification": lambda i: {"text": f"review {i}", "label": "good" if i % 2 else "bad"},
        "chat": lambda i: {
            "messages": [
                {"role": "user", "content": f"q{i}"},
                {"role": "assistant", "content": f"a{i}"},
            ]
        },
    }[fmt]
    return [make(i) for i in range(n)]


def load(tmp_path: Path, name: str, content: str | list[dict], task: str = "causal_lm", **data):
    path = tmp_path / name
    if isinstance(content, list):
        write_jsonl(path, content)
    else:
        path.write_text(content, encoding="utf-8")
    return load_rows(DataSection(train=str(path), **data), task=task)


@pytest.mark.parametrize(
    "fmt", ["text", "instruction", "prompt_completion", "chat", "classification"]
)
def test_every_format_is_detected(tmp_path: Path, fmt: str) -> None:
    task = "classification" if fmt == "classification" else "causal_lm"
    loaded = load(tmp_path, "d.jsonl", rows(20, fmt), task=task)
    assert loaded.format == fmt
    assert len(loaded.train) + len(loaded.eval) == 20 and not loaded.dropped
    if fmt == "classification":
        assert loaded.labels == ["bad", "good"]


def test_sharegpt_conversations_and_column_renames(tmp_path: Path) -> None:
    share = [
        {"conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": "a"}]}
        for i in range(5)
    ]
    loaded = load(tmp_path, "s.jsonl", share, eval_fraction=0)
    assert loaded.format == "chat"
    assert loaded.train[0].data["messages"] == [
        {"role": "user", "content": "q0"},
        {"role": "assistant", "content": "a"},
    ]
    renamed = [{"review": f"r{i}", "sentiment": i % 3} for i in range(9)]
    loaded = load(
        tmp_path,
        "r.jsonl",
        renamed,
        task="classification",
        columns={"text": "review", "label": "sentiment"},
    )
    assert loaded.format == "classification" and loaded.labels == ["0", "1", "2"]


def test_undetectable_columns_suggest_a_rename(tmp_path: Path) -> None:
    with pytest.raises(DataError) as caught:
        load(tmp_path, "q.jsonl", [{"question": "a", "answer": "b"}])
    assert 'instruction = "question"' in str(caught.value) and 'output = "answer"' in str(
        caught.value
    )


def test_json_csv_tsv_text_and_parquet_files(tmp_path: Path) -> None:
    data = rows(6, "instruction")
    (tmp_path / "a.json").write_text(json.dumps(data, indent=2))
    (tmp_path / "b.json").write_text(json.dumps({"data": data}, indent=1))
    (tmp_path / "c.csv").write_text(
        "instruction,input,output\n" + "".join(f'"say, {i}",,{i}\n' for i in range(6))
    )
    (tmp_path / "d.tsv").write_text("text\n" + "".join(f"line {i}\n" for i in range(6)))
    (tmp_path / "e.txt").write_text("".join(f"line {i}\n\n" for i in range(6)))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(data), tmp_path / "f.parquet")
    for name, fmt in [("a.json", "instruction"), ("b.json", "instruction"), ("c.csv", "instruction"),
                      ("d.tsv", "text"), ("e.txt", "text"), ("f.parquet", "instruction")]:  # fmt: skip
        loaded = load_rows(DataSection(train=str(tmp_path / name), eval_fraction=0))
        assert (loaded.format, len(loaded.train)) == (fmt, 6), name
    assert (
        load_rows(DataSection(train=str(tmp_path / "c.csv")))
        .train[0]
        .data["instruction"]
        .startswith("say, ")
    )
    assert (
        load_rows(DataSection(train=str(tmp_path / "b.json"), eval_fraction=0))
        .train[2]
        .where.endswith("b.json:13")
    )


def test_saved_dataset_folder_brings_its_eval_split(tmp_path: Path) -> None:
    from datasets import Dataset, DatasetDict

    DatasetDict(
        {"train": Dataset.from_list(rows(8)), "test": Dataset.from_list(rows(3))}
    ).save_to_disk(tmp_path / "ds")
    loaded = load_rows(DataSection(train=str(tmp_path / "ds")))
    assert (len(loaded.train), len(loaded.eval)) == (
        8,
        0,
    )  # the test rows are all in train: leakage
    assert loaded.leaked == 3 and "split 'test'" in loaded.eval_source


def test_hub_id_when_offline_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="hub is offline"):
        load_rows(DataSection(train="someone/some-dataset"))
    with pytest.raises(DataError, match="not found"):
        load_rows(DataSection(train="missing/train.jsonl"))


def test_bad_json_line_is_dropped_with_its_line(tmp_path: Path) -> None:
    lines = [json.dumps(r) for r in rows(40)]
    lines[2] = '{"text": "broken'
    loaded = load(tmp_path, "t.jsonl", "\n".join(lines) + "\n")
    assert [(d.where, d.split) for d in loaded.dropped] == [
        (str(tmp_path / "t.jsonl") + ":3", "train")
    ]
    assert "not valid JSON" in loaded.dropped[0].reason
    assert loaded.drop_reasons == {"not valid JSON": 1}


@pytest.mark.parametrize(
    ("bad", "fmt", "reason"),
    [
        ({"instruction": "x", "input": ""}, "instruction", "missing field 'output'"),
        ({"instruction": "x", "output": "  "}, "instruction", "field 'output' is empty"),
        (
            {"instruction": "x", "output": 3},
            "instruction",
            "field 'output' must be text, got a number",
        ),
        (
            {"messages": [{"role": "user", "content": "q"}, {"role": "bot", "content": "a"}]},
            "chat",
            "unknown role 'bot'",
        ),
        ({"messages": [{"role": "user", "content": "q"}]}, "chat", "no assistant turn"),
        ({"prompt": "p", "completion": None}, "prompt_completion", "missing field 'completion'"),
        (["not", "an", "object"], "text", "expected an object"),
    ],
)
def test_each_bad_row_says_what_was_expected(
    tmp_path: Path, bad: object, fmt: str, reason: str
) -> None:
    data = rows(40, fmt)
    data.insert(4, bad)  # line 5
    loaded = load(tmp_path, "d.jsonl", data, format=fmt)
    assert len(loaded.dropped) == 1
    assert loaded.dropped[0].where.endswith("d.jsonl:5") and reason in loaded.dropped[0].reason


def test_csv_row_with_extra_fields_names_its_line(tmp_path: Path) -> None:
    body = "".join(f"row {i},{i % 2}\n" for i in range(30))
    loaded = load(
        tmp_path, "c.csv", "text,label\n" + body + "oops,1,extra\n", task="classification"
    )
    assert (
        loaded.dropped[0].where.endswith("c.csv:32")
        and "3 fields where the header has 2" in loaded.dropped[0].reason
    )


def test_unknown_labels_in_eval_and_against_the_label_list(tmp_path: Path) -> None:
    write_jsonl(
        tmp_path / "eval.jsonl", [{"text": "a", "label": "good"}, {"text": "b", "label": "meh"}]
    )
    loaded = load(tmp_path, "t.jsonl", rows(10, "classification"), task="classification", eval=str(tmp_path / "eval.jsonl"),
                  max_dropped_fraction=0.5)  # fmt: skip
    assert [e.data["label"] for e in loaded.eval] == ["good"]
    assert (
        loaded.dropped[0].where.endswith("eval.jsonl:2")
        and "'meh' was not seen in the training data" in loaded.dropped[0].reason
    )
    data = [*rows(30, "classification"), {"text": "x", "label": "ugly"}, {"text": "y", "label": 1}]
    loaded = load(tmp_path, "l.jsonl", data, task="classification", labels=["bad", "good"])
    assert "unknown label 'ugly'" in loaded.dropped[0].reason and loaded.dropped[0].where.endswith(
        ":31"
    )
    assert (
        sum(e.data["label"] == "good" for e in loaded.train + loaded.eval) == 16
    )  # label 1 indexes the list


def test_too_many_bad_rows_refuse_with_the_count_and_examples(tmp_path: Path) -> None:
    data = rows(10) + [{"text": ""}] * 2 + [{"txt": "x"}]
    with pytest.raises(DataError) as caught:
        load(tmp_path, "d.jsonl", data)
    text = str(caught.value)
    assert "3 of 13 train rows cannot be used" in text and "max_dropped_fraction" in text
    assert (
        "d.jsonl:11: field 'text' is empty" in text and "d.jsonl:13: missing field 'text'" in text
    )
    assert len(load(tmp_path, "d.jsonl", data, max_dropped_fraction=0.5).dropped) == 3


def test_duplicates_are_removed_and_counted(tmp_path: Path) -> None:
    loaded = load(tmp_path, "d.jsonl", rows(10) + rows(4), eval_fraction=0)
    assert len(loaded.train) == 10 and loaded.duplicates_removed["train"] == 4
    loaded = load(tmp_path, "d.jsonl", rows(10) + rows(4), eval_fraction=0, dedupe=False)
    assert len(loaded.train) == 14


def test_leaked_eval_rows_are_counted_and_dropped(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "eval.jsonl", [*rows(3), {"text": "only in eval"}])
    loaded = load(tmp_path, "t.jsonl", rows(10), eval=str(tmp_path / "eval.jsonl"))
    assert loaded.leaked == 3 and [e.data["text"] for e in loaded.eval] == ["only in eval"]
    assert loaded.rows_read == {"train": 10, "eval": 4}


def test_seeded_split_is_reproducible_and_disjoint(tmp_path: Path) -> None:
    first = load(tmp_path, "d.jsonl", rows(50), eval_fraction=0.2, seed=7)
    again = load(tmp_path, "d.jsonl", rows(50), eval_fraction=0.2, seed=7)
    other = load(tmp_path, "d.jsonl", rows(50), eval_fraction=0.2, seed=8)
    assert [e.where for e in first.eval] == [e.where for e in again.eval]
    assert [e.where for e in first.eval] != [e.where for e in other.eval]
    assert len(first.eval) == 10 and len(first.train) == 40
    assert not {e.where for e in first.eval} & {e.where for e in first.train}


def test_limit_caps_the_training_rows(tmp_path: Path) -> None:
    loaded = load(tmp_path, "d.jsonl", rows(50), limit=20, eval_fraction=0.1)
    assert (len(loaded.train), len(loaded.eval), loaded.limited) == (18, 2, 30)


def test_compressed_files_and_json_lines_named_json(tmp_path: Path) -> None:
    import gzip

    with gzip.open(tmp_path / "d.jsonl.gz", "wt", encoding="utf-8") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in rows(5))
    (tmp_path / "lines.json").write_text("".join(json.dumps(r) + "\n" for r in rows(5)))
    for name in ("d.jsonl.gz", "lines.json"):
        loaded = load_rows(DataSection(train=str(tmp_path / name), eval_fraction=0))
        assert len(loaded.train) == 5 and loaded.train[4].where.endswith(f"{name}:5")


def test_a_broken_json_document_names_its_line(tmp_path: Path) -> None:
    (tmp_path / "d.json").write_text('[\n  {"text": "a"},\n  {"text": "b",}\n]\n')
    with pytest.raises(DataError) as caught:
        load_rows(DataSection(train=str(tmp_path / "d.json")))
    assert caught.value.where.endswith("d.json:3") and "not valid JSON" in str(caught.value)


def test_a_rename_of_a_column_that_does_not_exist_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="maps text to 'review', which is not a column"):
        load(tmp_path, "d.jsonl", rows(5), columns={"text": "review"})
