"""affiner.planner.hardware.probe.probe against the fake NVML (any GPU mix) and against this machine."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from affiner.planner.hardware.nvml import cuda_version_text
from affiner.planner.hardware.probe import nearest_existing, probe, read_cpu
from tests.fake_nvml import (
    GIB,
    NVMLError,
    NVMLError_DriverNotLoaded,
    NVMLError_LibraryNotFound,
    NVMLError_NoPermission,
    NVMLError_NotSupported,
    NVMLError_Uninitialized,
    ProcessInfo,
    gpu,
    make_fake_nvml,
)


def test_eight_gpus_are_read_in_full(tmp_path: Path) -> None:
    gpus = [
        gpu(name="NVIDIA A100-SXM4-80GB", uuid=f"GPU-{i}", memory_used=i * GIB) for i in range(8)
    ]
    gpus[0]["compute_processes"] = [ProcessInfo(pid=4242, usedGpuMemory=3 * GIB)]
    nvml = make_fake_nvml(gpus, driver=b"550.54.15", cuda=12040)

    report = probe(runs_dir=tmp_path, nvml=nvml)

    assert report.gpu_reason is None
    assert [g.index for g in report.gpus] == list(range(8))
    first, last = report.gpus[0], report.gpus[7]
    assert first.name == "NVIDIA A100-SXM4-80GB" and last.uuid == "GPU-7"
    assert last.memory_used == 7 * GIB and last.memory_free == 73 * GIB
    assert first.compute_capability == (9, 0) and first.bf16 is True
    assert first.utilization_percent == 35 and first.memory_utilization_percent == 20
    assert first.temperature_c == 41
    assert first.power_w == pytest.approx(123.5) and first.power_limit_w == 700.0
    assert first.processes[0].pid == 4242 and first.processes[0].used_bytes == 3 * GIB
    assert report.driver_version == "550.54.15" and report.cuda_driver_version == "12.4"
    assert nvml.calls == ["init", "shutdown"]
    with pytest.raises(NVMLError_Uninitialized):  # shut down: the fake behaves like pynvml
        nvml.nvmlDeviceGetCount()


def test_fake_builds_error_subclasses_by_code() -> None:
    error = NVMLError(12)
    assert isinstance(error, NVMLError_LibraryNotFound)
    assert str(error) == "NVML Shared Library Not Found"


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (NVMLError_LibraryNotFound, "NVIDIA driver not found"),
        (NVMLError_DriverNotLoaded, "not loaded"),
        (NVMLError_NoPermission, "no permission"),
    ],
)
def test_nvml_that_will_not_start_gives_a_reason(tmp_path: Path, error: type, words: str) -> None:
    report = probe(runs_dir=tmp_path, nvml=make_fake_nvml(init_error=error))
    assert report.gpus == ()
    assert words in report.gpu_reason
    assert "--gpu" in report.gpu_reason
    assert report.driver_version is None


def test_driver_with_no_gpus(tmp_path: Path) -> None:
    nvml = make_fake_nvml([])
    report = probe(runs_dir=tmp_path, nvml=nvml)
    assert report.gpus == ()
    assert "reports no GPUs" in report.gpu_reason
    assert report.driver_version == "550.54.15"
    assert nvml.calls == ["init", "shutdown"]


def test_pynvml_not_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    report = probe(runs_dir=tmp_path)
    assert report.gpus == ()
    assert "nvidia-ml-py is not installed" in report.gpu_reason


def test_default_import_is_the_boundary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", make_fake_nvml([gpu(name="NVIDIA L4")]))
    report = probe(runs_dir=tmp_path)
    assert [g.name for g in report.gpus] == ["NVIDIA L4"]


def test_odd_values_become_none(tmp_path: Path) -> None:
    odd = gpu(
        name=b"Tesla T4",
        uuid=b"GPU-t4",
        compute_capability=(7, 5),
        temperature=NVMLError_NotSupported,
        power=NVMLError_NotSupported,
        power_limit=NVMLError_NotSupported,
        utilization=NVMLError_NotSupported,
        compute_processes=[ProcessInfo(pid=999_999_999, usedGpuMemory=None)],
        graphics_processes=NVMLError_NotSupported,
    )
    nvml = make_fake_nvml([odd], process_names={999_999_999: "/usr/bin/python3"})
    (info,) = probe(runs_dir=tmp_path, nvml=nvml).gpus
    assert info.name == "Tesla T4" and info.uuid == "GPU-t4"
    assert info.bf16 is False
    assert info.temperature_c is None and info.power_w is None and info.power_limit_w is None
    assert info.utilization_percent is None and info.memory_utilization_percent is None
    (proc,) = info.processes
    assert proc.used_bytes is None
    assert proc.name == "python3"  # psutil cannot see that pid; NVML's name is used
    assert nvml.calls == ["init", "shutdown"]


def test_refused_memory_and_a_lost_gpu_are_warnings(tmp_path: Path) -> None:
    nvml = make_fake_nvml([gpu(memory=NVMLError_NotSupported), gpu(open=False)])
    report = probe(runs_dir=tmp_path, nvml=nvml)
    (info,) = report.gpus
    assert info.memory_total == 0
    assert any("memory" in w for w in report.warnings)
    assert any("GPU 1 could not be opened" in w for w in report.warnings)


def test_processes_are_named_through_psutil(tmp_path: Path) -> None:
    import psutil

    me = os.getpid()
    nvml = make_fake_nvml(
        [
            gpu(
                compute_processes=[ProcessInfo(pid=me, usedGpuMemory=GIB)],
                graphics_processes=[ProcessInfo(pid=me, usedGpuMemory=GIB // 2)],
            )
        ]
    )
    (info,) = probe(runs_dir=tmp_path, nvml=nvml).gpus
    name = psutil.Process(me).name()
    # one process in both of NVML's lists is one holder (its memory is not counted twice)
    assert [(p.name, p.kind, p.used_bytes) for p in info.processes] == [
        (name, "compute+graphics", GIB),
    ]


def test_cuda_visible_devices_is_pointed_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    report = probe(runs_dir=tmp_path, nvml=make_fake_nvml([gpu(), gpu()]))
    assert any("CUDA_VISIBLE_DEVICES" in w for w in report.warnings)


def test_cuda_version_text() -> None:
    assert cuda_version_text(12040) == "12.4"
    assert cuda_version_text(11080) == "11.8"
    assert cuda_version_text(None) is None


def test_disk_is_measured_at_the_nearest_existing_folder(tmp_path: Path) -> None:
    missing = tmp_path / "not" / "yet" / "runs"
    assert nearest_existing(missing) == tmp_path
    report = probe(runs_dir=missing, nvml=make_fake_nvml([]))
    assert report.disk_path == str(tmp_path)
    assert 0 < report.disk_free <= report.disk_total


def test_cpu_from_a_cpuinfo_file(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu avx2 fma amx_bf16\n"
    )
    cpu = read_cpu(str(cpuinfo))
    assert cpu.model == "Test CPU 9000"
    assert cpu.bf16 is True
    assert cpu.flags == ("avx2", "fma", "amx_bf16")
    assert cpu.logical_cores >= 1


def test_this_machine_has_no_gpu_and_says_why(tmp_path: Path) -> None:
    """The development machine has no NVIDIA driver; on a GPU machine test_real_nvml covers it."""
    report = probe(runs_dir=tmp_path)
    if report.gpus:
        pytest.skip("this machine has an NVIDIA GPU")
    assert report.gpu_reason
    assert report.cpu.logical_cores >= 1
    assert report.ram_total >= report.ram_available > 0
    data = report.to_json()
    assert data["gpus"] == [] and isinstance(data["cpu"]["flags"], list)


def _with_memory_v2(nvml, reserved: int):
    """Give the fake nvidia-ml-py 12+'s memory call: ``version=nvmlMemory_v2`` returns
    c_nvmlMemory_v2_t (total, reserved, free, used) where used no longer counts reserved."""
    v1 = nvml.nvmlDeviceGetMemoryInfo
    nvml.nvmlMemory_v2 = 0x02000028

    def memory(handle, version=None):
        m = v1(handle)
        if not version:
            return m
        return SimpleNamespace(
            version=version, total=m.total, reserved=reserved, free=m.free, used=m.used - reserved
        )

    nvml.nvmlDeviceGetMemoryInfo = memory
    return nvml


def test_memory_is_read_as_v2_so_the_drivers_reserve_is_not_used_memory(tmp_path: Path) -> None:
    nvml = _with_memory_v2(make_fake_nvml([gpu(memory_used=GIB)]), reserved=GIB // 2)
    info = probe(runs_dir=tmp_path, nvml=nvml).gpus[0]
    assert (info.memory_used, info.memory_reserved) == (GIB // 2, GIB // 2)
    assert info.memory_free == 79 * GIB  # free is the same in v1 and v2


def test_memory_falls_back_to_v1_on_an_old_driver(tmp_path: Path) -> None:
    nvml = make_fake_nvml([gpu(memory_used=GIB)])
    v1 = nvml.nvmlDeviceGetMemoryInfo
    nvml.nvmlMemory_v2 = 0x02000028

    def memory(handle, version=None):
        if version:  # pynvml: _nvmlGetFunctionPointer("nvmlDeviceGetMemoryInfo_v2") fails
            raise NVMLError(13)  # NVML_ERROR_FUNCTION_NOT_FOUND
        return v1(handle)

    nvml.nvmlDeviceGetMemoryInfo = memory
    info = probe(runs_dir=tmp_path, nvml=nvml).gpus[0]
    assert (info.memory_used, info.memory_reserved) == (GIB, None)


def test_a_gpu_in_mig_mode_warns_that_cuda_sees_only_slices(tmp_path: Path) -> None:
    nvml = make_fake_nvml([gpu(), gpu(uuid="GPU-2")])
    slices = {0: ("NVIDIA H100 80GB HBM3 MIG 3g.40gb", 40 * GIB), 1: ("... MIG 1g.10gb", 10 * GIB)}
    name, memory = nvml.nvmlDeviceGetName, nvml.nvmlDeviceGetMemoryInfo
    # pynvml: (current, pending) mode; empty slots raise NVMLError_NotFound (code 6).
    nvml.nvmlDeviceGetMigMode = lambda h: (1, 1) if h == 0 else (0, 0)
    nvml.nvmlDeviceGetMaxMigDeviceCount = lambda h: 7
    nvml.nvmlDeviceGetMigDeviceHandleByIndex = lambda h, i: (
        ("mig", i) if i in slices else (_ for _ in ()).throw(NVMLError(6))
    )
    nvml.nvmlDeviceGetName = lambda h: slices[h[1]][0] if isinstance(h, tuple) else name(h)
    nvml.nvmlDeviceGetMemoryInfo = lambda h: (
        SimpleNamespace(total=slices[h[1]][1], used=0, free=slices[h[1]][1])
        if isinstance(h, tuple)
        else memory(h)
    )
    report = probe(runs_dir=tmp_path, nvml=nvml)
    mig = [w for w in report.warnings if "MIG mode" in w]
    assert len(mig) == 1 and mig[0].startswith("GPU 0 ")
    assert "3g.40gb 40.0 GiB" in mig[0] and "1g.10gb 10.0 GiB" in mig[0] and "--vram" in mig[0]
    assert len(report.gpus) == 2


@pytest.mark.gpu
def test_real_nvml(tmp_path: Path) -> None:
    pynvml = pytest.importorskip("pynvml")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as error:
        pytest.skip(f"no NVIDIA driver here: {error}")
    count = pynvml.nvmlDeviceGetCount()
    pynvml.nvmlShutdown()
    report = probe(runs_dir=tmp_path)
    assert len(report.gpus) == count
    for info in report.gpus:
        assert info.memory_total > 0 and info.memory_free <= info.memory_total
        assert info.compute_capability is not None
        # v2 (R510+ drivers): used + free + reserved adds up to the total, within a MiB.
        if info.memory_reserved is not None:
            parts = info.memory_used + info.memory_free + info.memory_reserved
            assert abs(parts - info.memory_total) <= 2**20, info
    assert report.driver_version
