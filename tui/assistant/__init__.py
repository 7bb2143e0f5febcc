"""The assistant's mind, without widgets: the guided conversation (`AssistantFlow`), what it
understands (intents), what it answers, and the data preview it shows.
"""

from affiner.tui.assistant.answers import device_memory, recommended, step_seconds
from affiner.tui.assistant.demo import assistant_preset
from affiner.tui.assistant.flow import AssistantFlow, Reply, Task
from affiner.tui.assistant.preview import DataPreview, build_preview

__all__ = [
    "AssistantFlow",
    "DataPreview",
    "Reply",
    "Task",
    "assistant_preset",
    "build_preview",
    "device_memory",
    "recommended",
    "step_seconds",
]
