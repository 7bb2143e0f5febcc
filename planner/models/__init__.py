"""What a model is, read from its config alone (no weights, no torch).

`ModelSpec` and the shape rules of each family, exact parameter counts (meta-device counting
where the rules end), representative shapes for a bare size such as ``7B``, the models that
ship inside registry packages, and `resolve_model`, which turns whatever the user typed into a
spec.
"""

from affiner.planner.models.offline import (
    COPY_MARKER,
    OFFLINE_MODELS,
    OfflineModel,
    OfflineNotReady,
    converted_dir,
    find_offline_model,
    offline_folder,
    offline_model_for,
    package_dir_of,
    ready_path,
    source_path,
)
from affiner.planner.models.resolve import resolve_model
from affiner.planner.models.shapes import spec_from_config
from affiner.planner.models.sizes import spec_from_size
from affiner.planner.models.spec import MODULE_KEYS, LinearTarget, ModelSpec, has_fused_experts

__all__ = [
    "COPY_MARKER",
    "MODULE_KEYS",
    "OFFLINE_MODELS",
    "LinearTarget",
    "ModelSpec",
    "OfflineModel",
    "OfflineNotReady",
    "converted_dir",
    "find_offline_model",
    "has_fused_experts",
    "offline_folder",
    "offline_model_for",
    "package_dir_of",
    "ready_path",
    "resolve_model",
    "source_path",
    "spec_from_config",
    "spec_from_size",
]
