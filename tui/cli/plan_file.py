"""``affiner plan run.toml`` and ``affiner plan ... --save run.toml``: a plan from a file, to a file.

A run.toml states every setting that changes memory or time, so planning one states them all
(`stated_from_config`): the plan is that run, fitting or not. A command-line flag given beside
the file replaces the file's value, as a "what if". The data, when its file is there, is read
without a tokenizer (`affiner.runner.data.load_rows`); token lengths are counted with the
model folder's ``tokenizer.json`` through `tokenizers` alone (no transformers, no torch), so
they leave out the chat template's few tokens and are reported, not planned on: the plan takes
``max_seq_len``, the longest a row can be, since the peak comes from the longest batch.

A run.toml's ``[distributed]`` is planned as it is (`layout`): every peak is then per GPU, and
``--gpus``/``--nodes``/``--sharding`` beside it are a "what if", written by ``--save``.

``--save`` writes the chosen plan with `config_from_plan` and `save_config`; from a run.toml,
everything the plan does not decide (epochs, learning rate, [eval], [checkpoint]...) is
carried over, so ``plan run.toml --save out.toml`` gives the same run.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from affiner.planner.data_length import nearest_rank
from affiner.planner.errors import AffinerError

if TYPE_CHECKING:
    import argparse

    from affiner.planner.models import ModelSpec
    from affiner.runner.config import RunConfig

#: Each plan flag (its `argparse` dest) and the run.toml fields it decides: given beside a
#: run.toml, the flag wins there and ``--save`` writes the plan's value instead of the file's.
FLAG_FIELDS: dict[str, tuple[str, ...]] = {
    "model": ("model.name_or_path",),
    "method": ("method.name", "method.quantization"),
    "seq_len": ("data.max_seq_len",),
    "batch": ("training.grad_accum",),
    "micro_batch": ("training.micro_batch", "training.grad_accum"),
    "lora_rank": ("method.lora_rank",),
    "targets": ("method.target_modules",),
    "gradient_checkpointing": ("training.gradient_checkpointing",),
    "optimizer": ("training.optimizer",),
    "precision": ("training.precision",),
    "attention": ("model.attn_implementation",),
    "quantization": ("method.quantization",),
    "double_quant": ("method.double_quant",),
    "lora_alpha": ("method.lora_alpha",),
    "lora_dropout": ("method.lora_dropout",),
    "trainable_layers": ("method.trainable_layers",),
    "packing": ("training.packing",),
    "loss_kernel": ("training.loss_kernel",),
    "data": ("data.train",),
    "eval": ("data.eval",),
    "gpus": ("distributed.processes", "distributed.nodes"),
    "nodes": ("distributed.processes", "distributed.nodes"),
    "sharding": ("distributed.strategy",),
    "main_address": ("distributed.main_address",),
}
#: The `PlanRequest` field each setting flag fills.
FLAG_REQUEST = {
    "method": "method",
    "seq_len": "seq_len",
    "batch": "target_batch",
    "micro_batch": "micro_batch",
    "lora_rank": "lora_rank",
    "targets": "lora_targets",
    "optimizer": "optimizer",
    "precision": "precision",
    "attention": "attention",
    "quantization": "quantization",
    "double_quant": "double_quant",
    "lora_alpha": "lora_alpha",
    "lora_dropout": "lora_dropout",
    "trainable_layers": "trainable_layers",
    "loss_kernel": "loss_kernel",
}


def layout(args: argparse.Namespace, cfg: RunConfig | None) -> tuple[int, int, str]:
    """(GPUs over all nodes, nodes, strategy) to plan: the flags', else the run.toml's
    ``[distributed]`` as it is (a run is planned as it will run), else one device.

    Raises:
        AffinerError: a count below 1, GPUs that do not spread evenly over the nodes (naming
            the flag), or --nodes without --gpus on a file without [distributed].
    """
    from affiner.planner.plan_request import _check_layout

    d = cfg.distributed if cfg is not None else None
    from_file = d is not None and d.enabled
    gpus = args.gpus
    nodes = args.nodes
    if gpus is None:
        gpus = d.world_size if from_file and d is not None else 1
        if nodes is None and from_file and d is not None:
            nodes = d.nodes
    if nodes is None:
        nodes = 1
    strategy = args.sharding or (d.strategy if from_file and d is not None else "ddp")
    _check_layout(gpus, nodes, strategy)
    if args.sharding and gpus == 1:
        raise AffinerError(
            f"--sharding {args.sharding} spreads a run over several GPUs, and one is planned",
            hint=f"add --gpus N (e.g. --gpus 4 --sharding {args.sharding})",
            where="--sharding",
        )
    return gpus, nodes, strategy if gpus > 1 else "none"


def distributed_overrides(
    args: argparse.Namespace, cfg: RunConfig | None, report: Any
) -> dict[str, Any]:
    """The ``[distributed]`` fields ``--save`` writes beyond the plan's layout (which
    `config_from_plan` carries): the main node's address and a fixed port for several nodes,
    and ``device = "cuda"`` for a GPU layout written from scratch."""
    r = report.request
    out: dict[str, Any] = {}
    if r.num_gpus > 1 and not report.device.is_cpu and cfg is None:
        out["training__device"] = "cuda"
    if r.nodes > 1:
        if args.main_address:
            out["distributed__main_address"] = args.main_address
        if cfg is None or cfg.distributed.main_port == 0:
            out["distributed__main_port"] = DEFAULT_MAIN_PORT
    return out


#: The rendezvous port a saved multi-node run.toml names (torchrun's and accelerate's default).
DEFAULT_MAIN_PORT = 29500


def given_flags(args: argparse.Namespace) -> set[str]:
    """The `FLAG_FIELDS` flags typed on the command line (their defaults are None)."""
    return {name for name in FLAG_FIELDS if getattr(args, name, None) is not None}


def stated_from_config(cfg: RunConfig, num_gpus: int = 1) -> dict[str, Any]:
    """`PlanRequest` fields for `cfg`: its method and every setting that changes memory or time.

    Settings the method does not use (LoRA's for full, layers for LoRA) are left out, so a
    check that applies only to them (dropout on fused experts) is not raised for the wrong run.
    """
    m, t = cfg.method, cfg.training
    out: dict[str, Any] = {
        "method": m.name,
        "seq_len": cfg.data.max_seq_len,
        "target_batch": t.micro_batch * t.grad_accum * num_gpus,
        "micro_batch": t.micro_batch,
        "precision": t.precision,
        "optimizer": t.optimizer,
        "gradient_checkpointing": t.gradient_checkpointing,
        "attention": cfg.model.attn_implementation,
        "epochs": t.epochs,
        # left out of the file (None), packing is the run's to decide: planned as it will
        "packing": t.packing,
        "loss_kernel": t.loss_kernel,
    }
    if cfg.quantization != "none":
        out["quantization"] = cfg.quantization
        out["double_quant"] = m.double_quant
    if cfg.uses_lora:
        targets = m.target_modules
        out["lora_targets"] = (targets,) if isinstance(targets, str) else tuple(targets)
        out["lora_rank"] = m.lora_rank
        out["lora_alpha"] = m.lora_alpha
        out["lora_dropout"] = m.lora_dropout
    if m.name == "freeze":
        out["trainable_layers"] = m.trainable_layers
    return out


#: How many of the data's longest rows a plan keeps: the largest micro-batch it tries.
LONGEST_KEPT = 64


def length_fields(data: dict[str, Any], rows: int | None) -> dict[str, Any]:
    """`PlanRequest` fields from `read_data`'s lengths: the tokens of the `rows` the run trains
    on (their mean is what a packed row computes) and the data's longest rows (the largest
    pack); nothing when the lengths are unknown."""
    lengths = data.get("lengths")
    if not lengths or not rows:
        return {}
    return {
        "train_tokens": max(1, round(lengths["mean"] * rows)),
        "longest_rows": tuple(lengths["longest"]),
    }


def _strings(value: Any) -> list[str]:
    """Every text in a row (a chat's messages, an instruction's fields), in order."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _strings(v)]
    return []


def _contents(data: dict[str, Any], fmt: str) -> list[str]:
    """The texts a chat template wraps: a chat row's turn contents (its roles are the
    template's to write), every text of another row."""
    if fmt == "chat":
        messages = data.get("messages")
        return [
            m["content"]
            for m in (messages if isinstance(messages, list) else [])
            if isinstance(m, dict) and isinstance(m.get("content"), str)
        ]
    return _strings(data)


def read_data(
    cfg_data: Any, spec: ModelSpec, *, task: str, seq_len: int, measured: int = 5000
) -> dict[str, Any]:
    """What the plan says about the data: rows, and token lengths when the model folder has a
    ``tokenizer.json`` (an even spread of at most `measured` rows, chat template not counted).

    Raises:
        AffinerError: the data cannot be read (`affiner.runner.data.DataError`).
    """
    return data_at_length(measure_data(cfg_data, spec, task=task, measured=measured), seq_len)


def measure_data(
    cfg_data: Any, spec: ModelSpec, *, task: str, measured: int = 5000, loaded: Any = None
) -> dict[str, Any]:
    """The data's rows and its rows' token lengths, sorted (None without a tokenizer.json):
    measured once, so a max length chosen from them (`affiner.planner.data_length`) and the
    report at that length (`data_at_length`) read the file once. `loaded`: the rows
    `affiner.runner.data.load_rows` already read for `cfg_data`, when the caller has them.

    Raises:
        AffinerError: the data cannot be read (`affiner.runner.data.DataError`).
    """
    from affiner.runner.data import load_rows

    if loaded is None:
        loaded = load_rows(cfg_data, task=task)
    rows = len(loaded.train)
    if cfg_data.limit:
        rows = min(rows, cfg_data.limit)
    out: dict[str, Any] = {
        "path": cfg_data.train,
        "rows": rows,
        "sorted": None,
        "missing": "",
        "template": False,
    }
    folder = Path(spec.path) if getattr(spec, "path", None) else None
    if folder is not None and folder.is_file():
        folder = folder.parent
    tokenizer_file = folder / "tokenizer.json" if folder is not None else None
    if tokenizer_file is None or not tokenizer_file.is_file():
        out["missing"] = "token lengths need the model folder's tokenizer.json"
        if getattr(spec, "source", "") == "offline":  # a GGUF not converted yet
            out["missing"] += (
                f"; {spec.name} gets one when `affiner train` or `affiner preflight` first "
                "converts it"
            )
        return out
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    # a tokenizer.json may pad or cut every row to a fixed length (sentence-transformers' do)
    tokenizer.no_padding()
    tokenizer.no_truncation()
    sample = loaded.train[:: max(1, len(loaded.train) // measured)]
    texts = ["\n".join(_strings(example.data)) for example in sample]
    counts = [len(e.ids) for e in tokenizer.encode_batch(texts)] if texts else []
    # a conversation's rows get the chat template's markers (and any default system prompt)
    overhead = None
    if task == "causal_lm" and loaded.format != "text" and folder is not None:
        from affiner.tui.cli.template_overhead import row_roles, template_overhead

        overhead = template_overhead(folder, tokenizer)
        if overhead is not None:  # each turn's content alone, then the template's own tokens
            pieces = [_contents(example.data, loaded.format) for example in sample]
            flat = [text for piece in pieces for text in piece]
            ids = iter(tokenizer.encode_batch(flat, add_special_tokens=False) if flat else [])
            counts = [
                sum(len(next(ids).ids) for _ in piece)
                + overhead(row_roles(example.data, loaded.format))
                for piece, example in zip(pieces, sample, strict=True)
            ]
    out["template"] = overhead is not None
    out["sorted"] = sorted(counts)
    return out


def data_at_length(measured: dict[str, Any], seq_len: int) -> dict[str, Any]:
    """`measure_data`'s figures as the plan reports them at max length `seq_len`."""
    rows = measured["rows"]
    out: dict[str, Any] = {"path": measured["path"], "rows": rows, "lengths": None}
    lengths = measured["sorted"]
    if lengths is None:
        out["note"] = f"planned at max_seq_len {seq_len}: {measured['missing']}"
        return out
    if lengths:
        cut = [min(n, seq_len) for n in lengths]  # a row is cut at max_seq_len
        # each measured row stands for `stride` rows of the whole set: its longest rows are
        # estimated as the sample's, each repeated that many times
        stride = max(1, round(rows / len(lengths)))
        longest = [n for n in reversed(cut[-LONGEST_KEPT:]) for _ in range(stride)]
        out["lengths"] = {
            # nearest rank in whole numbers (0.99 * 100 rows is 99.000…01 in floats: row 100)
            "p50": nearest_rank(lengths, 50),
            "p95": nearest_rank(lengths, 95),
            "p99": nearest_rank(lengths, 99),
            "max": lengths[-1],
            "mean": sum(cut) / len(cut),
            "longest": longest[: min(LONGEST_KEPT, rows)],
            "measured_rows": len(lengths),
            "longer_than_max_seq_len": sum(1 for n in lengths if n > seq_len),
        }
    counted = (
        "with the chat template's tokens"
        if measured.get("template")
        else ("without a chat template")
    )
    out["note"] = (
        f"planned at max_seq_len {seq_len}, the longest a row can be (the peak comes from the "
        f"longest batch); lengths counted with tokenizer.json, {counted}"
    )
    return out


def states_max_seq_len(config_path: str | None) -> bool:
    """Whether the run.toml at `config_path` writes ``[data].max_seq_len`` itself (a length
    the user states is never replaced by one chosen from the data)."""
    if not config_path:
        return False
    from affiner.runner.config import read_raw_config

    try:
        data = read_raw_config(Path(config_path).expanduser()).get("data")
    except (OSError, ValueError):
        return True  # unreadable: keep what the loaded file says
    return isinstance(data, dict) and "max_seq_len" in data


def load_plan_config(config_path: str) -> RunConfig:
    """The run.toml a plan is made from; an offline model not converted yet is kept by name.

    A plan needs only the model's shape, which affiner carries for its offline models
    (`affiner.planner.models.offline_spec`), so ``affiner plan run.toml`` naming ``smollm2``
    plans at once, without the half-minute conversion `affiner train` does on first use.
    """
    from affiner.planner.models import OfflineNotReady
    from affiner.runner.config import config_from_dict, load_config, read_raw_config, resolve_paths

    try:
        return load_config(config_path)
    except OfflineNotReady:
        file = Path(config_path).expanduser()
        text = file.read_text(encoding="utf-8")
        cfg = config_from_dict(read_raw_config(file), source=str(file), text=text)
        name = cfg.model.name_or_path
        cfg.model.name_or_path = ""  # the data's paths resolved as load_config would
        resolve_paths(cfg, file.resolve().parent)
        cfg.model.name_or_path = name
        return cfg


def data_text(data: dict[str, Any]) -> str:
    """The data line of the table view."""
    line = f"Data: {data['path']}, {data['rows']:,} training rows"
    lengths = data.get("lengths")
    if lengths:
        line += (
            f"; tokens p50 {lengths['p50']}, p95 {lengths['p95']}, p99 {lengths['p99']}, "
            f"max {lengths['max']}"
        )
        if lengths["longer_than_max_seq_len"]:
            line += f" ({lengths['longer_than_max_seq_len']} measured rows will be truncated)"
    return line + (f"\n  {data['note']}" if data.get("note") else "")


def check_save(args: argparse.Namespace, cfg: RunConfig | None) -> None:
    """Refuse ``--save`` before planning when it could not write a run.toml that runs."""
    if not args.save:
        return
    if not (args.data or (cfg is not None and cfg.data.train)):
        raise AffinerError(
            "no training data to write into the run.toml (a run.toml names its data)",
            hint="add --data train.jsonl (and --eval held-out.jsonl to evaluate on your own "
            "split; without it a tenth of the training rows is held out)",
            where="--save",
        )
    nodes = args.nodes if args.nodes is not None else (cfg.distributed.nodes if cfg else 1)
    address = args.main_address or (cfg.distributed.main_address if cfg else "127.0.0.1")
    if nodes > 1 and address.strip() in ("", "127.0.0.1", "localhost", "::1"):
        raise AffinerError(
            f"{nodes} nodes need the main node's address, as the other nodes reach it, to "
            "write into the run.toml",
            hint="add --main-address 10.0.0.1 (the address of the node with node_rank 0)",
            where="--main-address",
        )
    if Path(args.save).exists() and not args.force:
        raise AffinerError(
            f"{args.save} exists",
            hint="add --force to overwrite it, or give another path",
            where="--save",
        )


def save_plan(
    args: argparse.Namespace,
    cfg: RunConfig | None,
    candidate: Any,
    *,
    model: str,
    task: str,
    seq_len: int,
    extra: dict[str, Any] | None = None,
    length_from_data: bool = False,
) -> Path:
    """Write `candidate` as a run.toml at ``args.save`` (checked, so `affiner train` runs it).

    From a run.toml `cfg`, every field no given flag decides is the file's (the plan states
    them all, so the plan's settings equal the file's); [plan] holds the new prediction.
    `extra` are more `config_from_plan` overrides (the device planned for);
    `length_from_data`: `seq_len` was chosen from the data, so it replaces the file's default.
    """
    from affiner.runner.config import config_from_plan, save_config

    overrides: dict[str, Any] = {"max_seq_len": seq_len}
    train = args.data or (cfg.data.train if cfg is not None else "")
    eval_path = args.eval or (cfg.data.eval if cfg is not None and not args.data else "")
    if cfg is not None:
        decided = {f for flag in given_flags(args) for f in FLAG_FIELDS[flag]}
        decided |= {"model.name_or_path", "model.task", "data.train", "data.eval"}
        if length_from_data:
            decided.add("data.max_seq_len")
        if "method.name" in decided:  # another method: its own settings, not the file's
            decided |= {f"method.{f.name}" for f in dataclasses.fields(cfg.method)}
        for section in dataclasses.fields(cfg):
            if section.name == "plan":
                continue
            part = getattr(cfg, section.name)
            for f in dataclasses.fields(part):
                value = getattr(part, f.name)
                if f"{section.name}.{f.name}" not in decided and value is not None:
                    overrides[f"{section.name}__{f.name}"] = value
    overrides.update(extra or {})
    saved = config_from_plan(
        candidate, model=model, train=train, eval=eval_path, task=task, **overrides
    )
    return save_config(saved, args.save)


def measured_step_for(
    config_path: str, device: Any, *, named_device: bool
) -> tuple[Any | None, str | None]:
    """The step time measured in the run.toml's own run folder, when it fits this plan's device.

    Returns (`affiner.runner.run.MeasuredStep` or None, why it is not used or None). A figure
    measured on the CPU says nothing of a GPU and the other way round; one measured on a GPU
    calibrates a plan for a GPU named on the command line (``--gpu``) only when the pre-flight
    recorded that same card.
    """
    from affiner.runner.run import measured_step

    found = measured_step(Path(config_path).expanduser().resolve().parent)
    if found is None:
        return None, None
    if found.on_cpu is None:
        return None, f"{found.source} did not record its device: not used"
    if found.on_cpu != bool(device.is_cpu):
        where = "the CPU" if found.on_cpu else "a GPU"
        return None, f"{found.source} ran on {where}, not on {device.name}: not used"
    if not found.on_cpu and named_device:
        ran = _plain(found.device)
        if not ran or not (_plain(device.name) in ran or ran in _plain(device.name)):
            return None, f"{found.source} ran on {found.device or 'another GPU'}: not used"
    return found, None


def _plain(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())
