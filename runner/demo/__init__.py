"""The offline demos: their data sets and presets, the model conversion that makes a packaged
model loadable (`python -m affiner.runner.demo.provision NAME`), and reading a demo's result.
"""

from affiner.runner.demo.evaluate import collect_result, wait_for_baseline
from affiner.runner.demo.provision import provision as provision_model
from affiner.runner.demo.tasks import get_preset, planned_seconds, prepare_demo, shrink_from_env

__all__ = [
    "collect_result",
    "get_preset",
    "planned_seconds",
    "prepare_demo",
    "provision_model",
    "shrink_from_env",
    "wait_for_baseline",
]
