"""The TUI's collaborators, passed in rather than imported, so tests swap in fakes.

`AffinerApp` takes a `Services`; `Services.default()` wires the real planner and runner,
and tests build one with in-memory fakes (no patching). Each default imports its module
inside the call, so building the app costs nothing before a screen needs the work done.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from affiner.planner.hardware import DeviceTarget, HardwareReport, HostLoad
from affiner.planner.models import ModelSpec

_load_lock = threading.Lock()
_load_sampler: Any = None


def _catalog_names() -> list[str]:
    """Every GPU in `affiner.planner.hardware.catalog.CATALOG`, by its display name."""
    from affiner.planner.hardware import CATALOG

    models = CATALOG.values() if isinstance(CATALOG, dict) else CATALOG
    return [model.name for model in models]


def _catalog_target(name: str) -> DeviceTarget:
    from affiner.planner.hardware import target_from_catalog

    return target_from_catalog(name)


def _is_run_alive(pid: int | None, run_dir: Path) -> bool:
    from affiner.runner.run import is_worker_of

    return is_worker_of(pid, run_dir)


def _read_load() -> HostLoad:
    """CPU use, load average and the busiest processes since the previous call.

    One sampler for the process: CPU percentages are differences between two readings of the
    same counters, so the sampler must outlive each poll (the lock keeps two polls apart).
    """
    global _load_sampler
    from affiner.planner.hardware import LoadSampler

    with _load_lock:
        if _load_sampler is None:
            _load_sampler = LoadSampler()
        return _load_sampler.read()


def _live_runs(runs_root: Path) -> list[Any]:
    """The runs under `runs_root` whose worker is alive now (`RunSummary`, newest first)."""
    from affiner.runner.run import list_runs

    return [summary for summary in list_runs(runs_root) if summary.live]


def _resolve_device(report: HardwareReport) -> DeviceTarget:
    """GPU 0, else the CPU from its cached or estimated speed (no torch on the first screen)."""
    from affiner.planner.hardware import resolve_target

    return resolve_target(report, measure=False)


def _inspect_data(
    path: str, spec: ModelSpec | None, seq_len: int, model_ref: str | None = None
) -> Any:
    from affiner.tui.assistant import build_preview

    return build_preview(path, spec, seq_len, model_ref)


def _preflight(config: Any, progress: Callable[[Any], None] | None = None) -> Any:
    """The pre-flight in a child process (`affiner.runner.run.preflight`), never in the TUI.

    Run here, it would leave torch, the model and a CUDA context in the TUI for good, on the GPU
    the plan assumed free. Called from a Textual worker, the child is stopped when the worker is
    cancelled (the screen closes, the app quits).
    """
    from textual.worker import NoActiveWorker, get_current_worker

    from affiner.runner.run import run_preflight_process

    try:
        worker = get_current_worker()
    except NoActiveWorker:
        return run_preflight_process(config, progress=progress)
    return run_preflight_process(config, cancelled=lambda: worker.is_cancelled, progress=progress)


#: A line of the conversion child's progress (``" 40%  reading the GGUF file"``).
_PROGRESS_LINE = re.compile(r"^\s*\d+%\s+\S")


def _make_model_ready(
    ref: str, progress: Callable[[str], None], cancelled: Callable[[], bool] = lambda: False
) -> str | None:
    """Convert (or copy) the offline model `ref` names into affiner's cache if it is not there
    yet, so the data step, the pre-flight and the run all load a folder; None when `ref` names
    no offline model or it is ready, else the model's title once converted.

    The conversion loads torch and transformers, so it runs in a child process
    (``python -m affiner.runner.demo.provision``), never in the TUI; each of its progress lines
    goes to `progress`. A cancelled worker (the app quits) stops the child; its half-written
    folder is a scratch copy it never renames into place.

    Raises:
        AffinerError: the model's package is missing (with the install command), or the
            conversion failed (with the child's own words).
    """
    import subprocess
    import sys

    from affiner.planner.errors import AffinerError
    from affiner.tui.cli.provisioning import offline_readiness

    model, ready = offline_readiness(ref)
    if model is None or ready is not None:
        return None
    command = [sys.executable, "-m", "affiner.runner.demo.provision", model.key]
    said: list[str] = []
    with subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    ) as child:
        assert child.stderr is not None
        for line in child.stderr:
            if cancelled():
                child.terminate()
                break
            line = line.strip()
            if _PROGRESS_LINE.match(line):
                progress(line)
            elif line:
                said.append(line)
        code = child.wait()
    if code and not cancelled():
        words = next((line for line in reversed(said) if line.startswith("error:")), None)
        raise AffinerError(
            f"Converting {model.title} for training failed: "
            + (words.removeprefix("error:").strip() if words else f"exit code {code}"),
            hint=f"Run it by hand to see everything: python -m affiner.runner.demo.provision {model.key}",
        )
    return model.title


def _prepare_demo(key: str, runs_root: Path | None = None) -> dict[str, Any]:
    """Provision a demo's model and data (`affiner.runner.demo.tasks`) and say how to pre-fill the assistant."""
    from affiner.runner.demo import prepare_demo
    from affiner.tui.assistant import assistant_preset

    return assistant_preset(prepare_demo(key, workdir=runs_root))


def _resume_run(run_dir: Path) -> str:
    """Relaunch a stopped, failed or interrupted run's worker with ``--resume``, detached;
    what the resume does, in words (`affiner.runner.run.check_resumable` refuses a finished
    run or one still going, with the reason)."""
    from affiner.runner.run import check_resumable, launch_worker

    rd, message = check_resumable(str(run_dir))
    launch_worker(rd, resume=True, message=message)
    return message or f"Resuming {rd.run_id}."


def _chat_session(run_dir: Path) -> Any:
    """The run's models in a child process (`affiner.runner.inference.ChatProcess`), not here.

    Loaded in the TUI, torch, the model's memory and a CUDA context would stay until it quits;
    the playground closes this session when it opens another run or goes away.
    """
    from affiner.runner.inference import ChatProcess

    return ChatProcess.from_run(run_dir)


@dataclass
class Services:
    """What the screens may call. Every callable may be slow: call it from a worker.

    Attributes:
        probe_hardware: returns the machine's `HardwareReport`.
        resolve_model: turns a model reference (folder, hub id, ``7B``) into a `ModelSpec`.
        make_plan: ``(spec, device, request) -> PlanReport`` (see `affiner.planner.recommend`).
        start_run: ``(run_config) -> RunDir``: writes the run folder and launches training.
        stop_run: ``(run_dir) -> None``: asks a run to stop gracefully.
        runs_root: the folder holding run folders.
        gpu_catalog: names of the catalog GPUs a plan can be made "as if" for.
        catalog_target: ``(name) -> DeviceTarget`` for one of those names.
        is_run_alive: ``(pid, run_dir) -> bool``: is that pid the run's training process now?
            A "running" status whose process is gone is shown as interrupted.
        clock: the time screens show ages and elapsed times against (tests fix it, so
            snapshots never depend on when they were taken).
        run_poll_seconds: how often a watched run folder is read for new events.
        hardware_poll_seconds: how often the hardware screen probes again (and reads the load).
        read_load: ``() -> HostLoad``: CPU use, load average and the busiest processes since
            the previous call (`affiner.planner.hardware.LoadSampler`). `default` sets the real
            one; None (services built by hand, the tests' canned hardware) reads no load, so
            nothing drawn depends on what else the machine is doing.
        live_runs: ``(runs_root) -> [RunSummary]``: the runs training now, newest first; the
            app points at them when it opens and says they go on when it quits.
        resolve_device: ``(report) -> DeviceTarget``: the device the assistant plans for.
        inspect_data: ``(path, spec, seq_len, model_ref) -> DataPreview`` for the data step
            (rows, bad lines, token lengths, one rendered example; see `affiner.tui.assistant.preview`).
        preflight: ``(run_config, progress) -> Preflight`` event: measured peak memory and step
            time, in a child process (the TUI never loads torch or the model); ``progress`` is
            called with each `PreflightProgress` on the calling thread (or None).
        chat_session: ``(run_dir) -> session`` for the playground: ``load``, ``stream``,
            ``classify``, ``task``, ``base``, ``adapter`` and, if it has one, ``close``. By
            default a `ChatProcess` (`affiner.runner.inference`): the models load in a child.
        prepare_demo: ``(key) -> preset``: readies the offline demo ``chat`` or ``classify``
            and returns what to pre-fill (``default_model``, ``default_data``, ``settings``).
        resume_run: ``(run_dir) -> message``: continues a stopped, failed or interrupted run
            from its last checkpoint in a new detached worker.
        make_model_ready: ``(ref, progress, cancelled) -> title or None``: converts an offline
            model the user named (``smollm2``) on first use, in a child, before the model step
            reads its shape; ``progress`` gets each progress line (see `_make_model_ready`).
            `default` sets the real one; None (services built by hand) converts nothing.
    """

    probe_hardware: Callable[[], HardwareReport]
    resolve_model: Callable[[str], ModelSpec]
    make_plan: Callable[..., Any]
    start_run: Callable[..., Any]
    stop_run: Callable[..., Any]
    runs_root: Path
    gpu_catalog: Callable[[], Sequence[str]] = _catalog_names
    catalog_target: Callable[[str], DeviceTarget] = _catalog_target
    is_run_alive: Callable[[int | None, Path], bool] = _is_run_alive
    clock: Callable[[], float] = time.time
    run_poll_seconds: float = 0.5
    hardware_poll_seconds: float = 2.0
    read_load: Callable[[], HostLoad] | None = None
    live_runs: Callable[[Path], list[Any]] = _live_runs
    resolve_device: Callable[[HardwareReport], DeviceTarget] = _resolve_device
    inspect_data: Callable[..., Any] = _inspect_data
    preflight: Callable[..., Any] = _preflight
    chat_session: Callable[[Path], Any] = _chat_session
    prepare_demo: Callable[[str], dict[str, Any]] = _prepare_demo
    resume_run: Callable[[Path], str] = _resume_run
    make_model_ready: Callable[..., str | None] | None = None

    @classmethod
    def default(cls, runs_root: str | os.PathLike[str] | None = None) -> Services:
        """The real planner and runner."""
        from affiner.runner.run import runs_root as default_root

        root = default_root(runs_root)

        def probe_hardware() -> HardwareReport:
            from affiner.planner.hardware import probe

            return probe(runs_dir=root)

        def resolve_model(ref: str) -> ModelSpec:
            from affiner.planner.models import resolve_model as resolve

            return resolve(ref)

        def make_plan(spec: ModelSpec, device: Any, request: Any) -> Any:
            from affiner.planner.recommend import plan

            return plan(spec, device, request)

        def start_run(config: Any) -> Any:
            from affiner.runner.run import start_run as start

            return start(config, runs_root=root)

        def stop_run(run_dir: Any) -> Any:
            from affiner.runner.run import stop_run as stop

            return stop(run_dir)

        return cls(
            probe_hardware=probe_hardware,
            resolve_model=resolve_model,
            make_plan=make_plan,
            start_run=start_run,
            stop_run=stop_run,
            runs_root=root,
            prepare_demo=lambda key: _prepare_demo(key, root),
            read_load=_read_load,
            make_model_ready=_make_model_ready,
        )
