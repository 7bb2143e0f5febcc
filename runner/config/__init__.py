"""``run.toml``: its shape (`RunConfig`), reading and writing it with file:line errors, the
checks that refuse impossible combinations, and the run.toml a plan becomes.
"""

from affiner.runner.config.checks import MOE_DROPOUT, MOE_DROPOUT_HINT, effective_device
from affiner.runner.config.from_plan import config_from_plan
from affiner.runner.config.io import (
    config_from_dict,
    load_config,
    resolve_paths,
    save_config,
    validate_config,
)
from affiner.runner.config.raw import read_raw_config
from affiner.runner.config.schema import (
    DataSection,
    MethodSection,
    ModelSection,
    RunConfig,
    TrainingSection,
)

__all__ = [
    "MOE_DROPOUT",
    "MOE_DROPOUT_HINT",
    "DataSection",
    "MethodSection",
    "ModelSection",
    "RunConfig",
    "TrainingSection",
    "config_from_dict",
    "config_from_plan",
    "effective_device",
    "load_config",
    "read_raw_config",
    "resolve_paths",
    "save_config",
    "validate_config",
]
