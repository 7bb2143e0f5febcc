"""The planner over several GPUs and nodes: per-GPU peaks by strategy, communication in the
step time, and the fewest GPUs a better method fits on."""

from __future__ import annotations

from dataclasses import replace

import pytest

from affiner.planner.communication import communication
from affiner.planner.errors import AffinerError
from affiner.planner.hardware import target_from_catalog
from affiner.planner.hardware.interconnect import INTER_NODE, NVLINK4, PCIE4, gpu_link, ring_link
from affiner.planner.memory import estimate_memory
from affiner.planner.models.sizes import spec_from_size
from affiner.planner.multi_gpu import counts, smallest_layout
from affiner.planner.recommend import PlanRequest, plan
from affiner.planner.sequence_fit import usable_memory
from affiner.planner.settings import TrainSettings
from affiner.planner.timing import estimate_time

H100 = target_from_catalog("H100")
RTX4090 = target_from_catalog("4090")
GIB = 2**30


def _settings(method: str = "full", n: int = 1, sharding: str = "none", **more) -> TrainSettings:
    base = dict(method=method, num_gpus=n, sharding=sharding, micro_batch=1, seq_len=2048,
                gradient_checkpointing=True)  # fmt: skip
    return TrainSettings(**(base | more))


def _peak(spec, method: str, n: int, sharding: str) -> int:
    return estimate_memory(spec, _settings(method, n, sharding), H100).peak_bytes


@pytest.fixture(scope="module")
def llama7b():
    return spec_from_size("7B")


@pytest.mark.parametrize("method", ["full", "lora"])
def test_sharding_strategies_cut_the_per_gpu_peak_as_they_shard(llama7b, method: str) -> None:
    one = _peak(llama7b, method, 1, "none")
    for sharding in ("fsdp", "zero3"):
        peaks = [_peak(llama7b, method, n, sharding) for n in (2, 4, 8)]
        assert peaks[0] < one and peaks[0] > peaks[1] > peaks[2], sharding
    # DDP keeps a whole replica on each GPU, plus its gradient buckets: never less
    ddp = [_peak(llama7b, method, n, "ddp") for n in (2, 8)]
    assert ddp[0] == ddp[1] >= one
    if method == "full":  # ZeRO-2 shards gradients and optimizer state, not the weights
        zero2 = _peak(llama7b, "full", 8, "zero2")
        assert _peak(llama7b, "full", 8, "zero3") < zero2 < one
        assert zero2 > 7e9 * 2  # the whole 16-bit model stays on every GPU


def test_fsdp_full_fine_tuning_per_gpu_is_what_its_shards_add_up_to(llama7b) -> None:
    """A 7B in mixed precision holds 16 bytes a parameter for weights, gradients and AdamW;
    over 8 GPUs each holds an eighth of them, plus the gathered blocks and activations."""
    est = estimate_memory(llama7b, _settings("full", 8, "fsdp"), H100)
    shards = llama7b.params_total * 16 / 8
    assert shards < est.peak_bytes < shards + 8 * GIB
    assert est.details["gathered_block"] > 0


def test_communication_grows_with_the_model_and_is_tiny_for_lora_over_ddp(llama7b) -> None:
    big = spec_from_size("70B")
    small_full = communication(llama7b, _settings("full", 8, "ddp"), H100, 1.0)
    big_full = communication(big, _settings("full", 8, "ddp"), H100, 1.0)
    lora = communication(llama7b, _settings("lora", 8, "ddp"), H100, 1.0)
    assert big_full.bytes_per_step > 8 * small_full.bytes_per_step
    assert big_full.seconds > 8 * small_full.seconds
    # DDP all-reduces fp32 gradients once a step: 2 (N-1)/N x 4 bytes a parameter
    assert small_full.bytes_per_step == pytest.approx(
        2 * 7 / 8 * 4 * llama7b.params_total, rel=0.02
    )
    assert lora.bytes_per_step < 0.01 * small_full.bytes_per_step
    # FSDP gathers the frozen base too: LoRA under FSDP is not cheap to talk about
    fsdp_lora = communication(llama7b, _settings("lora", 8, "fsdp"), H100, 1.0)
    assert fsdp_lora.bytes_per_step > 50 * lora.bytes_per_step
    assert communication(llama7b, _settings("full"), H100, 1.0) is None


def test_the_link_comes_from_the_catalog_and_nodes_add_the_stated_assumption(llama7b) -> None:
    assert gpu_link(H100) == NVLINK4 and gpu_link(RTX4090) == PCIE4
    assert ring_link(H100, 2) == INTER_NODE and "InfiniBand" in INTER_NODE.name
    s = _settings("full", 16, "fsdp")
    one_node = estimate_time(llama7b, s, H100)
    two_nodes = estimate_time(llama7b, s.with_(nodes=2), H100)
    assert two_nodes.communication_seconds > 2 * one_node.communication_seconds
    assert two_nodes.step_seconds > one_node.step_seconds
    note = next(n for n in two_nodes.notes if n.startswith("FSDP over 16 GPUs on 2 nodes"))
    assert "InfiniBand 400 Gb/s per node (assumed; ethernet is several times slower)" in note
    pcie = estimate_time(llama7b, _settings("full", 8, "fsdp"), RTX4090)
    nvlink = estimate_time(llama7b, _settings("full", 8, "fsdp"), H100)
    assert pcie.communication["seconds"] > 10 * nvlink.communication["seconds"]


def test_the_plan_names_communication_when_it_is_a_real_share_of_the_step(llama7b) -> None:
    request = PlanRequest(seq_len=2048, method="full", num_gpus=16, nodes=2, sharding="fsdp")
    (cand,) = plan(llama7b, H100, request).candidates
    assert cand.time.communication_share > 0.1
    assert any(r.startswith("communication takes") and "InfiniBand" in r for r in cand.reasons)
    lora = plan(llama7b, H100, replace(request, method="lora", sharding="ddp")).candidates[0]
    assert lora.time.communication_share < 0.05
    assert not any(r.startswith("communication takes") for r in lora.reasons)


def test_more_gpus_for_one_step_tokens_shortens_the_step(llama7b) -> None:
    one = estimate_time(llama7b, _settings("full", 1, grad_accum=8), H100)
    eight = estimate_time(llama7b, _settings("full", 8, "fsdp", grad_accum=1), H100)
    assert one.tokens_per_step == eight.tokens_per_step
    assert eight.step_seconds < one.step_seconds / 5


def test_the_smallest_layout_is_the_fewest_gpus_that_fit(llama7b) -> None:
    """13B on a machine with eight 24 GiB cards: only lower-fidelity methods fit one of them;
    the plan names the fewest cards for full fine-tuning and for LoRA, and the machine's count."""
    spec = spec_from_size("13B")
    machine = replace(RTX4090, source="detected", count=8)
    report = plan(spec, machine, PlanRequest(seq_len=1024))
    assert report.best is not None and report.best.method not in ("full", "lora")
    full, lora = report.layouts
    assert (full.method, lora.method) == ("full", "lora")
    assert full.candidate.fits and full.peak_bytes <= report.usable_bytes
    assert full.text().startswith(f"{full.num_gpus} of these GPUs with {full.strategy_name} fit")
    assert full.text().endswith("this machine has 8") and full.on_this_machine
    # one GPU fewer does not fit, with any strategy tried
    fewer = PlanRequest(seq_len=1024, num_gpus=full.num_gpus - 1, sharding="fsdp", method="full")
    assert not plan(spec, machine, fewer).candidates[0].fits
    assert report.to_json()["layouts"][0]["num_gpus"] == full.num_gpus


def test_nothing_fits_suggests_gpus_and_strategy_for_a_gpu_not_on_this_machine() -> None:
    spec = spec_from_size("13B")
    report = plan(spec, RTX4090, PlanRequest(seq_len=1024, method="full"))
    assert report.best is None
    line = next(s for s in report.suggestions if "of these GPUs" in s)
    assert "fit full fine-tuning" in line and "per GPU" in line and "this machine" not in line
    # a catalog GPU is tried in nodes of eight
    assert counts(RTX4090)[:4] == [(2, 1), (4, 1), (8, 1), (16, 2)]
    layout = smallest_layout(
        spec, RTX4090, PlanRequest(seq_len=1024), "lora", usable_memory(RTX4090)
    )
    assert layout is not None and layout.sharding == "fsdp" and layout.num_gpus == 2


def test_a_layout_that_does_not_spread_evenly_is_refused() -> None:
    with pytest.raises(AffinerError) as info:
        PlanRequest(num_gpus=6, nodes=4)
    assert info.value.where == "--gpus"
    with pytest.raises(AffinerError):
        TrainSettings(num_gpus=6, nodes=4)


def test_each_gpu_takes_its_share_of_the_effective_batch(llama7b) -> None:
    for n in (1, 4, 16):
        request = PlanRequest(seq_len=1024, target_batch=16, method="full", num_gpus=n,
                              sharding="fsdp" if n > 1 else "none")  # fmt: skip
        s = plan(llama7b, H100, request).candidates[0].settings
        assert s.effective_batch == 16, n


def test_cpu_processes_share_the_machines_rate() -> None:
    """Two CPU processes each compute half the step's rows on half the cores: the step takes
    no less than one process's, plus the gloo all-reduce over loopback."""
    from affiner.planner.hardware.device import DeviceTarget

    cpu = DeviceTarget(kind="cpu", name="CPU", source="cpu", memory_total=64 * GIB,
                       memory_free=48 * GIB, bf16=False, fp16=False, peak_tflops_fp32=1.0)  # fmt: skip
    spec = spec_from_size("135M")
    one = estimate_time(spec, _settings("lora", 1, precision="fp32", grad_accum=2), cpu)
    two = estimate_time(spec, _settings("lora", 2, "ddp", precision="fp32", grad_accum=1), cpu)
    assert one.tokens_per_step == two.tokens_per_step
    assert two.step_seconds >= one.step_seconds * 0.99
    assert "gloo" in two.communication["link"]
