"""``affiner model SPEC``: a model's shape, exact parameter counts and LoRA targets.

SPEC is a folder with ``config.json``, a ``config.json``, a Hugging Face id (from the local
cache; the hub only when online) or a size such as ``7B``. Only the config is read, so this
answers in well under a second for a 400B model, and imports no torch for the families
affiner counts by arithmetic. rich is imported only when tables are drawn.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from affiner.planner.models import MODULE_KEYS
from affiner.tui.cli.tables import house_table

if TYPE_CHECKING:
    from rich.console import Console

    from affiner.planner.models import ModelSpec

#: The LoRA rank the "what would LoRA add" line assumes (a common default).
EXAMPLE_RANK = 16
BAR_WIDTH = 20

_SOURCES = {
    "folder": "local folder",
    "config": "config file",
    "hub-cache": "Hugging Face cache",
    "hub": "Hugging Face hub (config.json only)",
    "size": "representative shape for a size",
    "meta": "counted on the meta device",
}
_KIND_NOTES = {"conv1d": "Conv1D", "expert": "per expert"}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "model",
        help="show a model's shape, exact parameter counts and LoRA targets",
        description="Show a model's architecture, exact parameter count (and active "
        "parameters for mixtures of experts), where the parameters sit, and the linear "
        "layers LoRA can wrap. Only config.json is read: no weights are loaded or downloaded.",
    )
    parser.add_argument(
        "spec",
        metavar="MODEL",
        help="a folder with config.json, a config.json, a Hugging Face id such as "
        "Qwen/Qwen2.5-0.5B (read from the local cache; fetched only when HF_HUB_OFFLINE is "
        "unset), or a size such as 135M, 0.5B, 7B, 70B, 8x7B",
    )
    parser.add_argument("--json", action="store_true", help="print the spec as JSON")
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow modelling code shipped with the checkpoint (architectures transformers "
        "does not include); off by default",
    )
    parser.set_defaults(func=run_model)


def run_model(args: argparse.Namespace) -> int:
    from affiner.planner.models import resolve_model

    spec = resolve_model(args.spec, trust_remote_code=args.trust_remote_code)
    if args.json:
        sys.stdout.write(json.dumps(spec.to_json(), indent=2) + "\n")
        return 0
    from rich.console import Console

    render_spec(spec, Console(highlight=False))
    return 0


def human(count: int | float) -> str:
    """``8030261248`` → ``8.03B``; three significant digits, as model cards write sizes."""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(count) >= scale:
            value = count / scale
            digits = 2 if value < 10 else 1 if value < 100 else 0
            return f"{value:.{digits}f}{unit}"
    return str(int(count))


def _attention_kind(spec: ModelSpec) -> str:
    if spec.num_kv_heads == 1 and spec.num_attention_heads > 1:
        return "multi-query"
    if spec.num_kv_heads < spec.num_attention_heads:
        return "grouped-query"
    return "multi-head"


def summary_table(spec: ModelSpec) -> Any:
    """Architecture and the shape numbers a plan depends on."""
    table = house_table(show_header=False)
    table.add_column("what", style="bold", no_wrap=True)
    table.add_column("value")
    table.add_row("architecture", f"{spec.architecture} [dim]({spec.model_type})[/dim]")
    table.add_row("parameters", f"[bold]{human(spec.params_total)}[/bold]  ({spec.params_total:,})")
    if spec.num_experts:
        table.add_row(
            "active / token",
            f"{human(spec.active_params)}  ({spec.active_params:,}; "
            f"{spec.experts_per_token} of {spec.num_experts} experts)",
        )
    table.add_row("tied embeddings", "yes" if spec.tied_embeddings else "no")
    table.add_row("layers", str(spec.num_layers))
    table.add_row("hidden size", str(spec.hidden_size))
    table.add_row(
        "attention",
        f"{spec.num_attention_heads} heads, {spec.num_kv_heads} key/value "
        f"({_attention_kind(spec)}), head dim {spec.head_dim}",
    )
    mlp = f"{spec.mlp_kind} {spec.hidden_act}".strip()
    table.add_row("MLP", f"{mlp}, intermediate {spec.intermediate_size}")
    table.add_row(
        "norm", spec.norm_kind + (", parallel residual" if spec.parallel_residual else "")
    )
    table.add_row("vocabulary", f"{spec.vocab_size:,}")
    if spec.max_position_embeddings:
        table.add_row("context", f"{spec.max_position_embeddings:,} positions")
    if spec.dtype:
        table.add_row("checkpoint dtype", spec.dtype)
    if not spec.is_decoder:
        table.add_row("kind", "encoder (not a text generator)")
    return table


def modules_table(spec: ModelSpec) -> Any:
    """Where the parameters sit, with each part's share of the total."""
    table = house_table("Parameters by part")
    table.add_column("part", no_wrap=True)
    table.add_column("params", justify="right", no_wrap=True)
    table.add_column("exact", justify="right", no_wrap=True)
    table.add_column("share", justify="right", no_wrap=True)
    table.add_column("", no_wrap=True)
    total = max(spec.params_total, 1)
    for key in MODULE_KEYS:
        count = spec.modules.get(key, 0)
        note = " [dim](tied to embeddings)[/dim]" if key == "head" and spec.tied_embeddings else ""
        fraction = count / total
        bar = "█" * round(fraction * BAR_WIDTH)
        table.add_row(
            key + note, human(count), f"{count:,}", f"{fraction:.1%}", f"[cyan]{bar}[/cyan]"
        )
    return table


def lora_table(spec: ModelSpec) -> Any:
    """The linear layers LoRA can wrap (the output head left out), with shapes and counts."""
    table = house_table("LoRA targets")
    for column in ("name", "part", "in → out", "bias", "count", "params"):
        table.add_column(
            column, justify="right" if column in ("count", "params") else "left", no_wrap=True
        )
    for target in spec.lora_targets:
        note = _KIND_NOTES.get(target.kind, "")
        table.add_row(
            target.name + (f" [dim]({note})[/dim]" if note else ""),
            target.part,
            f"{target.in_features} → {target.out_features}",
            "yes" if target.bias else "no",
            str(target.count),
            human(target.params),
        )
    return table


def lora_params(spec: ModelSpec, rank: int = EXAMPLE_RANK) -> int:
    """Adapter parameters LoRA of rank `rank` on every target adds: r × (in + out) per layer."""
    return sum(rank * (t.in_features + t.out_features) * t.count for t in spec.lora_targets)


def render_spec(spec: ModelSpec, console: Console) -> None:
    """Everything `affiner model` shows, in the order a person reads it."""
    where = spec.path or ""
    console.print(f"[bold]{spec.name}[/bold]")
    console.print(
        f"[dim]{_SOURCES.get(spec.source, spec.source)}{': ' + where if where else ''}[/dim]"
    )
    console.print()
    console.print(summary_table(spec))
    console.print()
    console.print(modules_table(spec))
    console.print()
    if spec.lora_targets:
        console.print(lora_table(spec))
        added = lora_params(spec)
        console.print(
            f"[dim]LoRA r={EXAMPLE_RANK} on all of these adds {human(added)} trainable "
            f"parameters ({added / max(spec.params_total, 1):.2%} of the model).[/dim]"
        )
    else:
        console.print("[yellow]No linear layers LoRA can wrap were found.[/yellow]")
