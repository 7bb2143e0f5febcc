"""The training process's parts: loading the model (precision, quantization, LoRA), the
Trainer's arguments and collator, the callbacks that write events, metrics, the system sampler,
the pre-flight check, merging an adapter into its base, out-of-memory recognition, versions and
the model card.

The only room where torch, transformers, peft and bitsandbytes are imported at module level:
only the worker process imports it.
"""

from affiner.runner.training.batching import (
    Batching,
    BatchingError,
    decide_batching,
    trainer_arguments,
)
from affiner.runner.training.callbacks import (
    CountingTrainer,
    EventCallback,
    RunInfo,
    StopRequest,
    TokenCounter,
)
from affiner.runner.training.merge import merge_adapter, save_merged
from affiner.runner.training.metrics import make_compute_metrics, preprocess_logits_for_metrics
from affiner.runner.training.model_card import CardFacts, write_model_card
from affiner.runner.training.modeling import (
    load_model,
    load_tokenizer,
    resolve_device,
    resolve_precision,
)
from affiner.runner.training.oom import (
    MAX_BACKOFFS,
    BatchShape,
    OomAt,
    OomBackoff,
    free_accelerator_memory,
    is_oom,
    write_batch,
)
from affiner.runner.training.preflight import (
    changed_settings,
    cuda_context_bytes,
    is_long_run,
    memory_settings,
    run_preflight,
    should_preflight,
)
from affiner.runner.training.sampler import SystemSampler
from affiner.runner.training.setup import build_collator, build_training_args, world_size
from affiner.runner.training.versions import write_command, write_versions

__all__ = [
    "MAX_BACKOFFS",
    "BatchShape",
    "Batching",
    "BatchingError",
    "CardFacts",
    "CountingTrainer",
    "EventCallback",
    "OomAt",
    "OomBackoff",
    "RunInfo",
    "StopRequest",
    "SystemSampler",
    "TokenCounter",
    "build_collator",
    "build_training_args",
    "changed_settings",
    "cuda_context_bytes",
    "decide_batching",
    "free_accelerator_memory",
    "is_long_run",
    "is_oom",
    "load_model",
    "load_tokenizer",
    "make_compute_metrics",
    "memory_settings",
    "merge_adapter",
    "preprocess_logits_for_metrics",
    "resolve_device",
    "resolve_precision",
    "run_preflight",
    "save_merged",
    "should_preflight",
    "trainer_arguments",
    "world_size",
    "write_batch",
    "write_command",
    "write_model_card",
    "write_versions",
]
