"""``affiner plan --model SPEC``: will it fit, how, and how long — before spending an hour.

Plans every method (full, freeze, LoRA, QLoRA, 8-bit LoRA) against a device: the GPU found on
this machine, a catalog GPU (``--gpu 4090``), a bare memory size (``--vram 24``) or the CPU
(``--cpu``). Prints a table with a memory bar per candidate, the recommendation and its
reasons, or with ``--json`` the report as data. Planning reads configs only: no torch import
(except the CPU's one-off cached speed measurement in `affiner.planner.hardware.device`, and
``--remeasure-cpu``, which times it again before planning).

Every run.toml setting that changes memory or time can be stated, with run.toml's words
(``--optimizer adamw``, ``--gradient-checkpointing off``, ``--targets q_proj,v_proj``...). A
stated setting is planned as it is: when it does not fit, the plan says by how much and names
what would fit instead; only the settings left unstated are chosen, and the reasons say so.

``affiner plan run.toml`` plans that file: its model, method and every such setting stated
(a flag beside it replaces the file's value), and its data's rows and token lengths reported.
``--save run.toml`` writes the chosen plan as a run.toml that ``affiner train`` runs (the data
comes from the planned run.toml or ``--data``/``--eval``); see `affiner.tui.cli.plan_file`.
``--gpus N [--nodes M] --sharding S`` plans every GPU's peak over N GPUs (the total over the
M nodes) and ``--save`` writes it as ``[distributed]``; a run.toml's own ``[distributed]`` is
planned as it is, never changed.
The printed table and the ``--max-seq-len`` answer are drawn in `affiner.tui.cli.plan_render`
(imported here, so ``from affiner.tui.cli.plan import render_plan`` works).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from affiner.planner.data_length import length_from_data, nearest_rank
from affiner.planner.settings import ATTENTIONS, LOSS_KERNEL_SETTINGS, SHARDINGS
from affiner.planner.vocabulary import (
    METHODS,
    OPTIMIZERS,
    PRECISION_SETTINGS,
    QUANTIZATIONS,
    TASKS,
)
from affiner.tui.cli.plan_render import BAR_WIDTH as BAR_WIDTH
from affiner.tui.cli.plan_render import longest_sequence_text, render_plan
from affiner.tui.cli.plan_render import memory_bar as memory_bar

if TYPE_CHECKING:
    from affiner.planner.recommend import PlanReport

#: The max length planned when neither the user nor the data says one.
DEFAULT_SEQ_LEN = 512


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plan",
        help="predict memory and time of each fine-tuning method and recommend one",
        description="Predict the peak memory and the time of full fine-tuning, layer-wise "
        "freeze, LoRA, QLoRA and 8-bit LoRA for a model on a device, and recommend the "
        "best plan that fits. Times are estimates at a stated utilisation.",
    )
    parser.add_argument(
        "config",
        nargs="?",
        metavar="run.toml",
        help="plan exactly this run: its model, method and settings, all stated (a flag "
        "given beside it replaces the file's value)",
    )
    parser.add_argument(
        "--model",
        metavar="SPEC",
        help="folder, config.json, hub id (cached) or a size such as 7B (or give a run.toml)",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--gpu", metavar="NAME", help="plan for a catalog GPU (e.g. 4090, A100 80GB, T4)"
    )
    where.add_argument("--cpu", action="store_true", help="plan a CPU run (memory is RAM)")
    parser.add_argument(
        "--vram", type=float, metavar="GiB", help="plan for a GPU with this much memory, in GiB"
    )
    parser.add_argument(
        "--seq-len",
        type=int,
        metavar="N",
        help="tokens per row (default: the data's p99 length rounded up to a multiple of 16 "
        "when the data's token lengths are known, else 512)",
    )
    parser.add_argument(
        "--batch",
        type=int,
        metavar="N",
        help="effective batch: rows per optimizer step (default 16)",
    )
    parser.add_argument(
        "--micro-batch",
        type=int,
        metavar="N",
        help="force the micro-batch (default: the largest that fits)",
    )
    parser.add_argument("--method", choices=METHODS, help="plan only this method")
    parser.add_argument(
        "--task",
        choices=TASKS,
        help="what the run trains, as run.toml's [model].task: classification replaces a "
        "vocabulary head with a class head (default: causal_lm for a decoder, classification "
        "for an encoder)",
    )
    parser.add_argument(
        "--priority",
        choices=("quality", "speed", "memory"),
        default="quality",
        help="what to optimise (default quality)",
    )
    parser.add_argument("--lora-rank", type=int, metavar="R", help="LoRA rank (default 16)")
    add_setting_flags(parser)
    parser.add_argument(
        "--gpus",
        type=int,
        metavar="N",
        help="GPUs over all nodes (default 1, or the run.toml's [distributed] processes x nodes); "
        "every peak is then per GPU",
    )
    parser.add_argument(
        "--nodes",
        type=int,
        metavar="M",
        help="machines the --gpus are spread over, the same number on each (default 1)",
    )
    parser.add_argument(
        "--sharding",
        choices=[s for s in SHARDINGS if s != "none"],
        help="multi-GPU strategy with --gpus: ddp (a replica each, the default), fsdp (torch's "
        "full sharding), zero2/zero3 (DeepSpeed); --save writes it as [distributed].strategy",
    )
    parser.add_argument(
        "--main-address",
        metavar="HOST",
        help="with --nodes above 1 and --save: the main node's address the others reach",
    )
    parser.add_argument(
        "--max-seq-len",
        action="store_true",
        help="print the longest sequence that fits for the (given or recommended) method",
    )
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.add_argument(
        "--data",
        metavar="FILE",
        help="training data: its rows and token lengths are reported, and --save writes it",
    )
    parser.add_argument(
        "--eval", metavar="FILE", help="held-out data for --save (default: split from --data)"
    )
    parser.add_argument(
        "--save",
        metavar="run.toml",
        help="write the recommended plan (or --method's) as a run.toml `affiner train` runs",
    )
    parser.add_argument("--force", action="store_true", help="let --save overwrite a file")
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow modelling code shipped with the checkpoint",
    )
    from affiner.tui.cli.hw import add_remeasure_flag

    add_remeasure_flag(parser)
    parser.set_defaults(func=run_plan)


def _targets(text: str) -> tuple[str, ...]:
    """``--targets``: ``all-linear`` or module names separated by commas (run.toml's
    ``target_modules``)."""
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    if not names:
        raise argparse.ArgumentTypeError("give all-linear or names such as q_proj,v_proj")
    return names


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """The run.toml settings a plan can be told (left out: the planner chooses)."""
    group = parser.add_argument_group(
        "run settings",
        "run.toml's settings, with its names and values: a stated one is never changed "
        "(a plan that does not fit says so and names what would); left out, the planner "
        "chooses and says why",
    )
    group.add_argument(
        "--targets",
        type=_targets,
        metavar="all-linear|q_proj,v_proj,...",
        help="LoRA target_modules (default all-linear)",
    )
    group.add_argument(
        "--gradient-checkpointing",
        choices=("auto", "on", "off"),
        help="auto: off unless nothing fits without it (the default)",
    )
    group.add_argument(
        "--optimizer", choices=OPTIMIZERS, help="default adamw, adamw8bit only if that fits"
    )
    group.add_argument(
        "--precision",
        choices=PRECISION_SETTINGS,
        help='auto: what precision = "auto" runs here (left out: may choose bf16-pure for '
        "full or freeze when only that fits)",
    )
    group.add_argument("--attention", choices=ATTENTIONS, help="attn_implementation (default sdpa)")
    group.add_argument(
        "--quantization",
        choices=[q for q in QUANTIZATIONS if q != "none"],
        help="base storage of the quantized methods (qlora: nf4 or fp4, lora8: int8)",
    )
    group.add_argument(
        "--no-double-quant",
        dest="double_quant",
        action="store_false",
        default=None,
        help="turn off QLoRA's double quantization",
    )
    group.add_argument("--lora-alpha", type=int, metavar="A", help="default twice the rank")
    group.add_argument("--lora-dropout", type=float, metavar="P", help="default 0.05")
    group.add_argument(
        "--trainable-layers",
        type=int,
        metavar="N",
        help="blocks freeze trains (default: a quarter)",
    )
    group.add_argument(
        "--packing",
        choices=("auto", "on", "off"),
        help="padding-free packed batches; auto: on for a causal LM, off for classification "
        "(the run's default)",
    )
    group.add_argument(
        "--loss-kernel",
        choices=LOSS_KERNEL_SETTINGS,
        help="auto: liger's fused linear cross-entropy on CUDA where liger-kernel is "
        "installed, else torch (the default)",
    )


def run_plan(args: argparse.Namespace) -> int:
    from affiner.planner.errors import AffinerError
    from affiner.planner.hardware import probe, resolve_target
    from affiner.planner.models import resolve_model
    from affiner.planner.models.shapes import spec_for_task
    from affiner.planner.recommend import PlanRequest, longest_sequence_for, plan
    from affiner.tui.cli import plan_file

    cfg = None
    if args.config:
        cfg = plan_file.load_plan_config(args.config)
    elif not args.model:
        raise AffinerError(
            "nothing to plan",
            hint="give a model (--model SPEC: a folder, a hub id or a size such as 7B) or a "
            "run.toml (affiner plan run.toml)",
            where="affiner plan",
        )
    num_gpus, nodes, sharding = plan_file.layout(args, cfg)
    plan_file.check_save(args, cfg)
    model_ref = args.model or cfg.model.name_or_path
    trust = args.trust_remote_code or (cfg is not None and cfg.model.trust_remote_code)
    spec = resolve_model(model_ref, trust_remote_code=trust)
    report_hw = probe()
    if args.remeasure_cpu:
        # Harmless on a GPU plan: the CPU's cached figure is refreshed, the GPU plan unchanged.
        from affiner.tui.cli.hw import remeasure_cpu

        remeasure_cpu(report_hw.cpu, to_stderr=args.json)
    on_cpu = args.cpu or (
        cfg is not None and cfg.training.device == "cpu" and not (args.gpu or args.vram)
    )
    device = resolve_target(report_hw, gpu="cpu" if on_cpu else args.gpu, vram=args.vram)
    fields = {}
    if cfg is not None:
        if args.method:  # another method: the file's settings for it, not its storage
            from dataclasses import replace

            method = replace(cfg.method, name=args.method, quantization="none")
            fields = plan_file.stated_from_config(replace(cfg, method=method), num_gpus)
        else:
            fields = plan_file.stated_from_config(cfg, num_gpus)
    for flag, name in plan_file.FLAG_REQUEST.items():
        if getattr(args, flag) is not None:
            fields[name] = getattr(args, flag)
    if args.gradient_checkpointing is not None:
        fields["gradient_checkpointing"] = {"auto": None, "on": True, "off": False}[
            args.gradient_checkpointing
        ]
    if args.packing is not None:
        fields["packing"] = {"auto": None, "on": True, "off": False}[args.packing]
    if args.micro_batch is not None and args.batch is None and cfg is not None:
        fields["target_batch"] = cfg.training.micro_batch * cfg.training.grad_accum * num_gpus
    fallback = DEFAULT_SEQ_LEN  # the length planned when the data's lengths are unknown
    if args.seq_len is None and cfg is not None and not plan_file.states_max_seq_len(args.config):
        # the file's default, not the user's word: the data may choose
        fallback = fields.pop("seq_len", DEFAULT_SEQ_LEN)
    fields.setdefault("target_batch", 16)
    task = args.task or (
        cfg.model.task
        if cfg is not None
        else ("causal_lm" if spec.is_decoder else "classification")
    )
    spec = spec_for_task(spec, task)
    fields["task"] = task
    data = None
    measured_data = None
    chosen = None  # the max length taken from the data (`affiner.planner.data_length`)
    window = spec.max_position_embeddings or None
    # measured at the length stated, else at the model's window (nothing cut before counting)
    data_section = _data_section(args, cfg, fields.get("seq_len") or window or fallback)
    if data_section is not None and Path(data_section.train).expanduser().exists():
        measured_data = plan_file.measure_data(data_section, spec, task=task)
        if "seq_len" not in fields and measured_data["sorted"]:
            chosen = length_from_data(nearest_rank(measured_data["sorted"]), window=window)
            fields["seq_len"] = chosen.seq_len
        fields.setdefault("seq_len", fallback)
        data = _with_rows(plan_file.data_at_length(measured_data, fields["seq_len"]), cfg, fields)
    fields.setdefault("seq_len", fallback)
    if data is None and data_section is not None:
        data = {
            "path": data_section.train,
            "rows": None,
            "lengths": None,
            "note": f"data not found here: planned at max_seq_len {fields['seq_len']}",
        }
    layout = {
        "priority": args.priority,
        "num_gpus": num_gpus,
        "nodes": nodes,
        "sharding": sharding,
    }
    measured, unused = None, None
    if cfg is not None and not args.model:  # another model's steps were not measured
        named = bool(args.gpu or args.vram)
        measured, unused = plan_file.measured_step_for(args.config, device, named_device=named)
    if measured is not None:
        fields["measured_step_seconds"] = measured.seconds
        fields["measured_step_source"] = measured.source
        if plan_file.given_flags(args) - {"data", "eval"}:  # a "what if" beside the file
            as_ran = PlanRequest(**layout, **plan_file.stated_from_config(cfg, num_gpus))
            ran = plan(spec, device, as_ran)
            same = next((c for c in ran.candidates if c.method == cfg.method.name), None)
            if same is not None and same.time.step_seconds:
                fields["measured_step_estimate"] = same.time.step_seconds
    request = PlanRequest(**layout, **fields)
    report = plan(spec, device, request)
    if chosen is not None and report.best is None and measured_data is not None:
        # the data's length does not fit: the longest that does, if any method fits one
        fits = max(
            (
                longest_sequence_for(spec, device, request, c.method).longest
                for c in report.candidates
            ),
            default=0,
        )
        if 0 < fits < chosen.seq_len:
            chosen = length_from_data(chosen.p99, window=window, fits=fits, device=device.name)
            fields["seq_len"] = chosen.seq_len
            data = _with_rows(plan_file.data_at_length(measured_data, chosen.seq_len), cfg, fields)
            request = PlanRequest(**layout, **fields)
            report = plan(spec, device, request)
    if chosen is not None:
        report.notes.insert(0, chosen.why[:1].upper() + chosen.why[1:] + ".")
    if unused:
        report.notes.append(f"step time not calibrated: {unused}")
    saved = _save(args, cfg, report, model_ref, task, chosen is not None) if args.save else None
    if args.max_seq_len:
        chosen = report.best or report.candidates[0]
        found = longest_sequence_for(spec, device, request, chosen.method)
        plain = None
        s = found.settings
        if s is not None and (s.packing or s.loss_kernel == "liger"):
            from affiner.planner.levers import without_levers

            plain = longest_sequence_for(spec, device, without_levers(request), chosen.method)
        if args.json:
            answer = {
                "method": found.method,
                "micro_batch": found.micro_batch,
                "gradient_checkpointing": found.needs_checkpointing,
                "max_seq_len": found.longest,
                "max_seq_len_without_checkpointing": found.without_checkpointing,
                "context_window": found.window,
                "optimizer": found.settings.optimizer if found.settings else None,
                "precision": found.settings.precision if found.settings else None,
                "safety_margin": found.margin,
                "usable_bytes": found.usable_bytes,
                "packing": found.settings.packing if found.settings else None,
                "loss_kernel": found.settings.loss_kernel if found.settings else None,
                "max_seq_len_without_levers": plain.longest if plain is not None else None,
            }
            sys.stdout.write(json.dumps(answer) + "\n")
        else:
            print(longest_sequence_text(found, device.name, plain))
        return 0
    if args.json:
        out = report.to_json()
        out["run_toml"] = str(Path(args.config).resolve()) if args.config else None
        out["data"] = data
        out["max_seq_len_from_data"] = chosen.why if chosen is not None else None
        out["saved"] = saved
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
        return 0
    from rich.console import Console

    console = Console(highlight=False)
    if args.config:
        console.print(f"Planning [bold]{args.config}[/] (its settings are stated)")
    render_plan(report, console)
    if data is not None:
        console.print(plan_file.data_text(data), markup=False)
    if saved:
        console.print(f"Saved {saved}: run it with `affiner train {saved}`", markup=False)
    return 0


def _data_section(args: argparse.Namespace, cfg: object, seq_len: int) -> object | None:
    """The [data] to read: the run.toml's, with --data/--eval in place of its files."""
    from dataclasses import replace

    from affiner.runner.config import DataSection

    base = cfg.data if cfg is not None else DataSection()  # type: ignore[attr-defined]
    train = args.data or base.train
    if not train:
        return None
    eval_path = args.eval or ("" if args.data else base.eval)
    return replace(base, train=train, eval=eval_path, max_seq_len=seq_len)


def _with_rows(data: dict, cfg: object, fields: dict) -> dict:
    """Put the rows (and, for a run that stops at ``max_steps``, the rows those steps take)
    and the data's token lengths into the plan's `fields`; returns `data`."""
    from affiner.tui.cli import plan_file

    fields["train_rows"] = data["rows"]
    max_steps = cfg.training.max_steps if cfg is not None else 0  # type: ignore[attr-defined]
    if max_steps > 0:
        fields["train_rows"], fields["epochs"] = max_steps * fields["target_batch"], 1.0
    fields.update(plan_file.length_fields(data, fields["train_rows"]))
    return data


def _save(
    args: argparse.Namespace,
    cfg: object,
    report: PlanReport,
    model_ref: str,
    task: str,
    length_from_data: bool = False,
) -> str:
    """``--save``: the chosen plan as a run.toml; refused when nothing fits."""
    from affiner.planner.errors import AffinerError
    from affiner.tui.cli import plan_file

    best = report.best
    if best is None:
        raise AffinerError(
            f"nothing fits, so there is no plan to save to {args.save}",
            hint="plan again without --save to see what would fit",
            where="--save",
        )
    if report.spec.source == "size":
        raise AffinerError(
            f"{model_ref} is a size, not a model to train",
            hint="give a model folder or a cached hub id to --model",
            where="--save",
        )
    spec = report.spec  # a folder as a folder, a config.json as its folder, a hub id as given
    model = model_ref
    if args.model and spec.source in ("folder", "config") and spec.path:
        model = spec.path if spec.source == "folder" else str(Path(spec.path).parent)
    written = plan_file.save_plan(
        args,
        cfg,  # type: ignore[arg-type]
        best,
        model=str(model),
        task=task,
        seq_len=report.request.seq_len,
        length_from_data=length_from_data,
        extra={"plan__device": report.device.name}
        | ({"training__device": "cpu"} if report.device.is_cpu and cfg is None else {})
        | plan_file.distributed_overrides(args, cfg, report),
    )
    return str(written)
