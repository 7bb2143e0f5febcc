"""Does the demo in the app report the same before → after as ``affiner demo --headless``?

Runs one demo task twice on this machine, as a user would: headless (``affiner demo TASK
--headless``), then in the app inside a real terminal (tmux), pressing Enter at each step of
the guided walk — model, data, plan, settings, pre-flight, launch — exactly as the README says.
Then it reads both runs' ``events.jsonl`` and holds the held-out evaluations at step 0 and at
the last step side by side. One recipe (issue 17) means the same run.toml and so, on the same
CPU with the same seeds, the same numbers; the bar is a difference of at most 1e-6 in every
metric. The two runs' settings that change what is reported are compared too.

    PYTHONPATH=. python bench/demo_app_vs_headless.py [--task classify|chat] [--json] [--out DIR]

Takes about twice one demo's time (some 11 minutes for classify on two cores). The machine
should be quiet; load changes the time, not the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: bench.tmux_driver must import
    sys.path.insert(0, str(REPO))

from affiner.runner.config.raw import tomllib  # noqa: E402
from bench.tmux_driver import TmuxSession, app_env, tmux_available  # noqa: E402

RESULTS = Path(__file__).with_name("results")
AFFINER = [sys.executable, "-c", "import sys; from affiner.tui.cli import main; sys.exit(main())"]
METRICS = ("loss", "accuracy", "precision", "recall", "f1")
#: the largest difference in any metric that still counts as the same result
BAR = 1e-6
#: the settings that change what a demo reports (the issue's list, and what decides them)
SETTINGS = (
    "training.lr_scheduler", "training.warmup_ratio", "training.learning_rate",
    "training.epochs", "training.max_steps", "training.micro_batch", "training.grad_accum",
    "training.seed", "training.precision", "training.packing", "eval.every_steps",
    "eval.at_start", "data.max_seq_len", "data.labels", "data.seed", "method.name",
    "method.lora_rank", "method.lora_alpha", "method.lora_dropout", "method.target_modules",
)  # fmt: skip
#: The guided walk: what the screen says when each Enter is due (the steps' own questions).
WALK = (
    "Enter uses",  # the demo is ready and its model is the default: Enter takes it
    "Which training data",  # Enter takes its data, the default too
    "Enter accepts the highlighted plan",
    "Enter continues.",  # the settings
    "Enter runs the pre-flight",
    "Enter launches the run",  # after the pre-flight has finished
)


def run_headless(task: str, runs: Path) -> Path:
    cmd = [*AFFINER, "demo", task, "--headless", "--no-samples", "--runs-dir", str(runs)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"headless demo failed ({proc.returncode}):\n{proc.stdout[-2000:]}")
    return only_run(runs)


def run_in_app(task: str, runs: Path, timeout: float = 3600) -> tuple[Path, list[str]]:
    """Walk the app's demo with Enter at each step; wait for the run it launches to end."""
    env = app_env(str(REPO))
    argv = [sys.executable, "-m", "affiner", "demo", task, "--runs-dir", str(runs)]
    seen: list[str] = []
    with TmuxSession(argv, env=env, cwd=str(REPO), width=160, height=50) as term:
        for text in WALK:
            term.wait_for_prose(text, timeout=900)
            seen.append(text)
            time.sleep(0.5)  # the step's widgets settle before the key
            term.send("Enter")
        deadline = time.monotonic() + timeout
        while not finished(runs):
            if time.monotonic() > deadline:
                raise SystemExit(f"the app's run did not finish:\n{term.screen()}")
            time.sleep(2)
        term.send("C-q")
    return only_run(runs), seen


def finished(runs: Path) -> bool:
    folders = [p for p in runs.iterdir() if (p / "status.json").exists()] if runs.exists() else []
    if not folders:
        return False
    state = json.loads((folders[0] / "status.json").read_text(encoding="utf-8")).get("state")
    return state in ("finished", "failed", "stopped")


def only_run(runs: Path) -> Path:
    folders = [p for p in runs.iterdir() if (p / "events.jsonl").exists()]
    if len(folders) != 1:
        raise SystemExit(f"expected one run in {runs}, found {len(folders)}")
    return folders[0]


def before_after(run: Path) -> dict[str, dict[str, float]]:
    """The held-out metrics at step 0 and at the last evaluation (the resume rule aside: a
    demo run is one attempt)."""
    evals = []
    for line in (run / "events.jsonl").read_text(encoding="utf-8").splitlines():
        event = json.loads(line)
        if event.get("type") == "eval":
            evals.append(event)
    first = next(e for e in evals if e["step"] == 0)
    last = evals[-1]
    pick = lambda e: {m: e[m] for m in METRICS if e.get(m) is not None}  # noqa: E731
    return {"before": pick(first) | {"step": 0}, "after": pick(last) | {"step": last["step"]}}


def settings(run: Path) -> dict[str, object]:
    config = tomllib.loads((run / "run.toml").read_text(encoding="utf-8"))
    out = {}
    for dotted in SETTINGS:
        section, key = dotted.split(".")
        out[dotted] = config.get(section, {}).get(key)
    return out


def compare(headless: Path, app: Path) -> dict:
    a, b = before_after(headless), before_after(app)
    gaps = {
        f"{when}.{m}": abs(a[when][m] - b[when][m])
        for when in ("before", "after")
        for m in a[when]
        if m != "step" and m in b[when]
    }
    sa, sb = settings(headless), settings(app)
    differ = {k: [sa[k], sb[k]] for k in SETTINGS if sa[k] != sb[k]}
    same_steps = a["after"]["step"] == b["after"]["step"]
    return {
        "headless": a,
        "app": b,
        "largest_gap": max(gaps.values(), default=0.0),
        "settings_that_differ": differ,
        "same": same_steps and not differ and max(gaps.values(), default=0.0) <= BAR,
    }


def table(report: dict) -> str:
    lines = [
        f"demo {report['task']}: headless against the app (Enter at each step)",
        "",
        f"{'':<8} {'metric':<10} {'headless':>10} {'app':>10} {'gap':>9}",
    ]
    for when in ("before", "after"):
        h, a = report["headless"][when], report["app"][when]
        for m in METRICS:
            if m in h and m in a:
                lines.append(
                    f"{when + ' ' + str(h['step']):<8} {m:<10} {h[m]:>10.4f} {a[m]:>10.4f} "
                    f"{abs(h[m] - a[m]):>9.1e}"
                )
    differ = report["settings_that_differ"] or "none"
    lines += [
        "",
        f"settings that differ: {differ}",
        f"same before → after (every gap <= {BAR:g}): {'yes' if report['same'] else 'NO'}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=("classify", "chat"), default="classify")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--out", type=Path, help="write demo_app_vs_headless_cpu.{json,md} here")
    args = parser.parse_args(argv)
    if not tmux_available():
        print("tmux is not installed: the app is driven in a real terminal", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="affiner-app-vs-headless-"))
    started = time.time()
    load = os.getloadavg()[0]
    headless = run_headless(args.task, work / "runs-headless")
    app, walked = run_in_app(args.task, work / "runs-app")
    report = {
        "task": args.task,
        **compare(headless, app),
        "walked": walked,
        "machine": f"{platform.machine()}, {os.cpu_count()} logical cores",
        "load_before": round(load, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "wall_seconds": round(time.time() - started, 1),
        "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "runs": [str(headless), str(app)],
    }
    text = table(report)
    print(json.dumps(report, indent=2) if args.json else text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "demo_app_vs_headless_cpu.json").write_text(json.dumps(report, indent=2))
        header = f"Measured {report['measured']} on {report['machine']}, load {load:.2f} before."
        (args.out / "demo_app_vs_headless_cpu.md").write_text(
            f"# {args.task} demo: the app against headless\n\n{header}\n\n```\n{text}\n```\n"
        )
    return 0 if report["same"] else 1


if __name__ == "__main__":
    sys.exit(main())
