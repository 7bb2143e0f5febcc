"""Fakes for the TUI tests: a `Services` with canned hardware, and hand-written run folders.

Everything is deterministic (fixed times, fixed numbers), so the snapshot tests draw the
same screens on every machine and every day. Run folders are written with the real
`affiner.runner.run.events.EventWriter`, so the screens read exactly what training would write.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from affiner.planner.errors import AffinerError
from affiner.planner.hardware.device import DeviceTarget
from affiner.planner.hardware.report import CpuInfo, GpuInfo, GpuProcess, HardwareReport
from affiner.runner.run.events import (
    Checkpoint,
    EvalResult,
    Event,
    EventWriter,
    GpuSample,
    Preflight,
    RunFinished,
    RunStarted,
    RunStatus,
    SystemSample,
    TrainLog,
    Warning_,
)
from affiner.tui.services import Services

GIB = 1024**3
#: "Now" for every fake: 2026-11-25 12:00:00 UTC.
NOW = 1_795_608_000.0
CATALOG = ("RTX 4090", "A100 80GB SXM", "H100 80GB SXM")


def fake_cpu() -> CpuInfo:
    return CpuInfo(
        model="Example Xeon 8480",
        physical_cores=2,
        logical_cores=4,
        bf16=True,
        flags=("avx512_bf16",),
    )


def fake_gpu(index: int, *, used_gib: float, name: str = "NVIDIA H100 80GB HBM3") -> GpuInfo:
    total = 80 * GIB
    used = int(used_gib * GIB)
    return GpuInfo(
        index=index,
        name=name,
        uuid=f"GPU-0000000{index}",
        memory_total=total,
        memory_used=used,
        memory_free=total - used,
        compute_capability=(9, 0),
        bf16=True,
        utilization_percent=35 + 40 * index,
        memory_utilization_percent=20,
        temperature_c=41 + 20 * index,
        power_w=120.0 + 300 * index,
        power_limit_w=700.0,
        processes=(GpuProcess(pid=4242 + index, name="python", used_bytes=used),),
    )


def fake_report(gpus: int = 2) -> HardwareReport:
    """Two H100s (one nearly full, to show a red gauge) or, with ``gpus=0``, none."""
    found = tuple(fake_gpu(i, used_gib=(12.5, 74.0, 40.0)[i % 3]) for i in range(gpus))
    return HardwareReport(
        gpus=found,
        gpu_reason=None if gpus else "NVML Shared Library Not Found: no NVIDIA driver is installed",
        driver_version="550.54.15" if gpus else None,
        cuda_driver_version="12.4" if gpus else None,
        cpu=fake_cpu(),
        ram_total=24 * GIB,
        ram_available=15 * GIB,
        disk_path="/data/runs",
        disk_free=300 * GIB,
        disk_total=500 * GIB,
    )


def catalog_target(name: str) -> DeviceTarget:
    if name not in CATALOG:
        raise AffinerError(f"unknown GPU {name!r}", hint="pick one from the list")
    memory = (24 if name == "RTX 4090" else 80) * GIB
    return DeviceTarget(
        kind="cuda",
        name=name,
        source="catalog",
        memory_total=memory,
        memory_free=memory,
        bf16=True,
        fp16=True,
        compute_capability=(8, 9),
    )


@dataclass
class FakeBackend:
    """What the fake services record, for tests to assert on."""

    report: HardwareReport
    stopped: list[Path] = field(default_factory=list)
    resumed: list[Path] = field(default_factory=list)
    probes: int = 0
    alive: bool = True


def fake_services(
    runs_root: Path, *, gpus: int = 2, alive: bool = True, poll: float = 0.05
) -> tuple[Services, FakeBackend]:
    """A `Services` whose back end is in memory. ``alive``: runs with a pid count as live."""
    backend = FakeBackend(report=fake_report(gpus), alive=alive)

    def probe() -> HardwareReport:
        backend.probes += 1
        return backend.report

    def stop(run_dir: Any) -> Any:
        backend.stopped.append(Path(getattr(run_dir, "path", run_dir)))
        return None

    def resume(run_dir: Path) -> str:
        backend.resumed.append(Path(run_dir))
        return f"Resuming {Path(run_dir).name} from its last checkpoint."

    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise AffinerError("not available in this test")

    services = Services(
        probe_hardware=probe,
        resolve_model=refuse,
        make_plan=refuse,
        start_run=refuse,
        stop_run=stop,
        runs_root=runs_root,
        gpu_catalog=lambda: CATALOG,
        catalog_target=catalog_target,
        is_run_alive=lambda pid, path: backend.alive,
        clock=lambda: NOW,
        run_poll_seconds=poll,
        hardware_poll_seconds=60.0,
        resume_run=resume,
    )
    return services, backend


# -- run folders --------------------------------------------------------------------------


class RunFolder:
    """A run folder written by hand: ``run.toml``, ``status.json``, events and a log."""

    def __init__(
        self, root: Path, run_id: str, *, model: str = "smollm2-135m", method: str = "lora"
    ) -> None:
        self.path = root / run_id
        self.path.mkdir(parents=True, exist_ok=True)
        self.run_id = run_id
        (self.path / "run.toml").write_text(
            f'[model]\nname_or_path = "{model}"\n\n[method]\nname = "{method}"\n\n'
            f"[plan]\npredicted_peak_bytes = {int(20 * GIB)}\n",
            encoding="utf-8",
        )
        self._writer = EventWriter(self.path)

    def append(self, events: Iterable[Event]) -> None:
        for event in events:
            self._writer.write(event)

    def append_raw(self, text: str) -> None:
        """Bytes as a writer halfway through a line would leave them (a torn line)."""
        with open(self.path / "events.jsonl", "a", encoding="utf-8") as handle:
            handle.write(text)

    def status(
        self,
        state: str,
        *,
        step: int = 0,
        total: int = 0,
        pid: int | None = 4242,
        best: float | None = None,
    ) -> None:
        data = RunStatus(
            run_id=self.run_id,
            state=state,
            pid=pid,
            step=step,
            total_steps=total,
            updated=NOW - 30,
            started=NOW - 3600,
            best_eval_loss=best,
        )
        (self.path / "status.json").write_text(json.dumps(data.__dict__), encoding="utf-8")

    def log(self, *lines: str) -> None:
        with open(self.path / "train.log", "a", encoding="utf-8") as handle:
            handle.write("".join(line + "\n" for line in lines))

    def close(self) -> None:
        self._writer.close()


def started(
    run_id: str, *, total: int = 200, t: float = NOW - 3600, gpu: bool = True
) -> RunStarted:
    return RunStarted(
        t=t,
        run_id=run_id,
        pid=4242,
        model="smollm2-135m",
        method="lora",
        device="NVIDIA H100 80GB HBM3" if gpu else "cpu",
        total_steps=total,
        epochs=2.0,
        train_rows=800,
        eval_rows=80,
        predicted_peak_bytes=int(20 * GIB),
    )


def train_logs(
    first: int, last: int, *, total: int = 200, every: int = 10, start_loss: float = 3.0
) -> list[Event]:
    """Training logs with a falling, slightly wavy loss and system samples beside them."""
    out: list[Event] = []
    for step in range(first, last + 1, every):
        loss = start_loss * (0.55 + 0.45 * (1 - step / total)) + 0.05 * ((step // every) % 3 - 1)
        out.append(
            TrainLog(
                t=NOW - 3600 + step * 10,
                step=step,
                epoch=round(2.0 * step / total, 3),
                loss=round(loss, 4),
                learning_rate=2e-4 * (1 - step / total),
                grad_norm=1.0,
                tokens_per_second=5230.0,
                eta_seconds=float((total - step) * 10),
                total_steps=total,
            )
        )
        out.append(
            SystemSample(
                t=NOW - 3600 + step * 10,
                step=step,
                gpus=[
                    GpuSample(
                        index=0,
                        memory_used=int((14 + step / total * 4) * GIB),
                        memory_total=80 * GIB,
                    )
                ],
                torch_peak=int(17.5 * GIB),
            )
        )
    return out


def evaluation(
    step: int, loss: float, *, total: int = 200, accuracy: float | None = None
) -> EvalResult:
    return EvalResult(
        t=NOW - 3600 + step * 10 + 1,
        step=step,
        epoch=round(2.0 * step / total, 3),
        loss=loss,
        accuracy=accuracy,
        f1=None if accuracy is None else accuracy - 0.02,
    )


def lm_run(
    root: Path,
    run_id: str = "20261125-110000-lora-smollm2-a1b2",
    *,
    upto: int = 120,
    overfit: bool = False,
) -> RunFolder:
    """A language-model run, live at step ``upto`` of 200, with evals every 40 steps."""
    run = RunFolder(root, run_id)
    run.append(
        [
            started(run_id),
            Preflight(
                t=NOW - 3590,
                device="cuda:0",
                measured_peak_bytes=int(18 * GIB),
                predicted_peak_bytes=int(20 * GIB),
                measured_step_seconds=9.5,  # the logs below take 10 s a step
            ),
        ]
    )
    run.append(train_logs(10, upto))
    for number, step in enumerate(range(40, upto + 1, 40)):
        loss = (
            2.4 - 0.2 * number
            if not overfit
            else 2.4 - 0.2 * min(number, 1) + 0.15 * max(0, number - 1)
        )
        run.append([evaluation(step, round(loss, 4))])
        run.append(
            [
                Checkpoint(
                    t=NOW - 3600 + step * 10 + 2,
                    step=step,
                    path=f"checkpoints/checkpoint-{step}",
                    best=number == 0 or not overfit,
                    eval_loss=round(loss, 4),
                )
            ]
        )
    if overfit:
        run.append(
            [
                Warning_(
                    t=NOW - 3600 + upto * 10 + 3,
                    code="overfitting",
                    message="eval loss rose 2 evaluations in a row while train loss fell",
                    step=upto,
                    action="stop",
                )
            ]
        )
    run.status("running", step=upto, total=200)
    run.log(
        "loading model smollm2-135m",
        "trainable params: 921,600 (0.68%)",
        f"step {upto}/200 loss 2.01",
    )
    return run


def finished_run(
    root: Path,
    run_id: str,
    *,
    state: str = "finished",
    start_loss: float = 3.0,
    classification: bool = False,
) -> RunFolder:
    run = RunFolder(root, run_id, method="qlora" if state == "stopped" else "lora")
    run.append([started(run_id, total=100, t=NOW - 86400 * 2)])
    run.append(train_logs(10, 100, total=100, start_loss=start_loss))
    run.append([evaluation(100, 1.9, total=100, accuracy=0.91 if classification else None)])
    run.append(
        [
            RunFinished(
                t=NOW - 86400, state=state, step=100, best_eval_loss=1.9, message=f"run {state}"
            )
        ]
    )
    run.status(state, step=100, total=100, best=1.9)
    run.close()
    return run
