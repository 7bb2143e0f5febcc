"""A cheap worker for the run-lock tests: the real ``affiner.runner.worker`` entry point, with
training replaced by a loop that logs a step every 50 ms until SIGTERM.

Everything around training is real: the worker's argument parsing, the lock it adopts from its
launcher (or takes itself), the run folder's events and status. So a test that races two
launches sees exactly what real workers would do, in a fraction of a second instead of loading
a model. With ``AFFINER_TEST_LINGER=S`` set, the worker leaves a forked child behind that keeps
the lock's descriptor for S seconds after the worker exits (as a data loader process would).
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

FAKE_WORKER = """
import os, signal, sys, time
sys.path.insert(0, {repo!r})
import affiner.runner.train as train
from affiner.runner.run.events import (
    EventWriter, RunFinished, RunStarted, RunStatus, TrainLog, read_status, write_status,
)

def fake_training(run_dir, *, resume=False, callbacks=None):
    run_dir = str(run_dir)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    writer = EventWriter(run_dir)
    writer.write(RunStarted(pid=os.getpid(), total_steps=10**6, resumed_from_step=0 if resume else None))
    status = read_status(run_dir) or RunStatus(run_id=os.path.basename(run_dir))
    status.state, status.pid, status.message = "running", os.getpid(), "training"
    write_status(run_dir, status)
    step = 0
    while not stop:
        step += 1
        writer.write(TrainLog(step=step, loss=1.0, total_steps=10**6))
        time.sleep(0.05)
    linger = float(os.environ.get("AFFINER_TEST_LINGER", "0") or 0)
    if linger and os.fork() == 0:  # the child keeps every descriptor, the lock's included
        time.sleep(linger)
        os._exit(0)
    writer.write(RunFinished(state="stopped", step=step, message="stopped"))
    status.state, status.step, status.message = "stopped", step, "stopped"
    write_status(run_dir, status)
    return 3

train.run_training = fake_training
from affiner.runner import worker
sys.exit(worker.main(sys.argv[sys.argv.index("affiner.runner.worker") + 1:]))
"""


def fake_worker_argv(run_dir: str | Path, *extra: str, python: str | None = None) -> list[str]:
    """Drop-in for `affiner.runner.run.process.worker_argv`: the command line names the worker
    module and the run folder, so `is_worker_of` accepts the process as the run's worker."""
    return [
        python or sys.executable,
        "-c",
        FAKE_WORKER.format(repo=str(REPO)),
        "-m",
        "affiner.runner.worker",
        str(Path(run_dir).resolve()),
        *extra,
    ]


def write_stopped_run(root: Path, run_id: str = "20260101-000000-lora-tiny-race") -> Path:
    """A run folder as a stopped run leaves it: run.toml, an attempt's events, status stopped."""
    import json
    import time

    folder = root / run_id
    (folder / "models" / "tiny").mkdir(parents=True)
    (folder / "run.toml").write_text(
        f'[model]\nname_or_path = "{folder / "models" / "tiny"}"\n\n[method]\nname = "lora"\n\n'
        f'[data]\ntrain = "{folder / "train.jsonl"}"\n',
        encoding="utf-8",
    )
    now = time.time()
    lines = [
        {"type": "run_started", "t": now - 10, "total_steps": 10**6},
        {"type": "train_log", "t": now - 9, "step": 1, "loss": 2.0},
        {"type": "run_finished", "t": now - 8, "state": "stopped", "step": 1},
    ]
    (folder / "events.jsonl").write_text(
        "".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8"
    )
    status = {"run_id": run_id, "state": "stopped", "step": 1, "started": now - 10}
    (folder / "status.json").write_text(json.dumps({**status, "updated": now - 8}))
    return folder
