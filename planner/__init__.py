"""affiner's planner: what the machine is, what the model is, and what a fine-tune of it will cost.

Pure and fast: nothing here imports torch or transformers at import time, so the CLI and the
TUI's first screen never pay for them. It imports no other room: the runner and the TUI build
on it.

Rooms:
    hardware: the hardware report, the prober (NVML, psutil), the GPU catalog, the measured CPU
        rate, and `DeviceTarget`, the device a plan is made for.
    models: `ModelSpec` from a config, a folder, the hub cache or a bare size; exact counts.
    memory: the peak memory of a training step, term by term (`estimate_memory`).
Modules:
    vocabulary: the words a run is described in (methods, quantizations, precisions,
        optimizers), each method's learning rate and what ``auto`` precision means; the
        runner's run.toml and the TUI use the same ones.
    settings: `TrainSettings`, everything a plan is computed for.
    recommend: `plan(spec, device, request) -> PlanReport`, every method and the recommendation.
    plan_request: `PlanRequest`, the settings a request states, and why the unstated are chosen.
    plan_search: one method's base settings, its variants and the micro-batch search, and
        `longest_sequence_for`.
    plan_candidates: `Candidate` and `Alternative`: one sized method, its reasons, and what
        would fit with stated settings left to the planner.
    sequence_fit: the memory budget and the longest sequence that fits.
    timing: step and run time (`estimate_time`).
    explain: the plain words a plan is explained in.
    units: `format_bytes` and `format_duration`, the one way memory (GiB) and time are written.
    errors: `AffinerError`, the one exception a user mistake becomes.
    hub: whether the Hugging Face hub is offline (`hub_offline`), read as huggingface_hub reads it.
    locations: affiner's cache folder (`cache_dir`) and the Hugging Face hub's cache.
"""

__all__ = [
    "errors",
    "explain",
    "hardware",
    "hub",
    "locations",
    "memory",
    "models",
    "plan_candidates",
    "plan_request",
    "plan_search",
    "recommend",
    "sequence_fit",
    "settings",
    "timing",
    "units",
    "vocabulary",
]
