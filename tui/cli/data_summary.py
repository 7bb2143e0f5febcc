"""What `affiner train` and `affiner preflight` say about the data before they start.

The assistant's data step shows what it found (the format, the rows, what was dropped, how
long the rows are); a run started from the command line used to say nothing, so a detected
format that was not the one meant, or a split that lost half its rows to leakage, was found
only in the model card. This prints the same facts, one plain line each, read as the run
reads them (`affiner.runner.data.load_rows`: detection, invalid rows, de-duplication, the
held-out split, leakage), with token lengths counted as `affiner plan run.toml` counts them:
the model's ``tokenizer.json`` through `tokenizers` alone, so the command stays free of torch,
with the chat template's tokens added (`affiner.tui.cli.template_overhead`).
"""

from __future__ import annotations

from typing import Any

from affiner.planner.errors import AffinerError


def summary_lines(cfg: Any) -> list[str]:
    """The data summary of the run `cfg` (a checked `affiner.runner.config.RunConfig`).

    Raises:
        AffinerError: the data cannot be read (the pre-launch check has reported it first).
    """
    from affiner.runner.data import load_rows

    data = cfg.data
    loaded = load_rows(data, task=cfg.model.task)
    how = "as [data].format states" if data.format != "auto" else "detected"
    lines = [f"format: {loaded.format} ({how})"]
    rows = f"rows: {len(loaded.train):,} training, {len(loaded.eval):,} held out"
    if loaded.eval_source != "none":
        rows += f" ({loaded.eval_source})"
    if loaded.limited:
        rows += f"; {loaded.limited:,} more left out by [data].limit"
    lines.append(rows)
    if loaded.labels:
        lines.append(f"classes: {', '.join(loaded.labels)}")
    if loaded.dropped:
        reasons = ", ".join(f"{n} {kind}" for kind, n in loaded.drop_reasons.items())
        lines.append(f"invalid rows left out: {len(loaded.dropped):,} ({reasons})")
    lines.append(_duplicates(loaded, data.dedupe))
    lines.append(_leakage(loaded))
    lines.extend(_token_lines(cfg, loaded))
    return lines


def _duplicates(loaded: Any, dedupe: bool) -> str:
    if not dedupe:
        return "duplicates: kept ([data].dedupe = false)"
    removed = {split: n for split, n in loaded.duplicates_removed.items() if n}
    if not removed:
        return "duplicates removed: none"
    return "duplicates removed: " + ", ".join(f"{n:,} in {split}" for split, n in removed.items())


def _leakage(loaded: Any) -> str:
    if not loaded.rows_read.get("eval"):
        return "leakage: none possible (the held-out rows are split from the training rows)"
    if not loaded.leaked:
        return "leakage: none (no held-out row is also a training row)"
    return (
        f"leakage: {loaded.leaked:,} held-out rows are also training rows and were left out "
        "of the evaluation"
    )


def _token_lines(cfg: Any, loaded: Any) -> list[str]:
    """Token-length percentiles and truncation, or why they are not known here."""
    from affiner.planner.models import resolve_model
    from affiner.tui.cli.plan_file import data_at_length, measure_data

    seq_len = cfg.data.max_seq_len
    try:
        spec = resolve_model(cfg.model.name_or_path, trust_remote_code=cfg.model.trust_remote_code)
        measured = measure_data(cfg.data, spec, task=cfg.model.task, loaded=loaded)
    except AffinerError as error:
        return [f"tokens: not counted here ({error.message}); the run reports them"]
    if measured["sorted"] is None:
        return [f"tokens: not counted here ({measured['missing']}); the run reports them"]
    lengths = data_at_length(measured, seq_len)["lengths"]
    if not lengths:
        return ["tokens: no row to count"]
    counted = lengths["measured_rows"]
    sample = "" if counted >= len(loaded.train) else f" (an even spread of {counted:,} rows)"
    conversational = cfg.model.task == "causal_lm" and loaded.format != "text"
    template = "; chat template not counted" if conversational and not measured["template"] else ""
    lines = [
        f"tokens a row: p50 {lengths['p50']}, p95 {lengths['p95']}, p99 {lengths['p99']}, "
        f"longest {lengths['max']}{sample}{template}"
    ]
    over = lengths["longer_than_max_seq_len"]
    if over:
        lines.append(
            f"truncated: {over:,} of {counted:,} rows are longer than max_seq_len {seq_len} "
            "and will be cut (raise [data].max_seq_len to keep them whole)"
        )
    else:
        lines.append(f"truncated: none (every row fits max_seq_len {seq_len})")
    return lines


def print_data_summary(cfg: Any, console: Any = None) -> None:
    """`summary_lines` under a heading, on stderr: stdout keeps what scripts read.

    It runs after the pre-launch check has read every row, so a data error here means the
    files changed in between: said in one line, and the run's own check has the last word.
    """
    from affiner.tui.cli.provisioning import stderr_console

    console = console or stderr_console()
    try:
        lines = summary_lines(cfg)
    except AffinerError as error:
        lines = [f"not summarised: {error.message}"]
    console.print("Data, as the run will read it:", markup=False)
    for line in lines:
        console.print(f"  {line}", markup=False, soft_wrap=True)
    console.file.flush()
