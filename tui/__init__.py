"""affiner's front ends: the Textual application and the scriptable CLI.

Both sit on the planner and on the run folders the runner writes; neither imports torch.
Importing this package is cheap; Textual loads only when a screen is shown.

Rooms:
    cli: the ``affiner`` command and its subcommands.
    assistant: the guided conversation, without widgets (flow, intents, answers, preview).
    live: reading a run as it happens (history, watcher).
    screens: one screen a module, imported when first shown.
    widgets: the widgets the screens are built from.
Modules:
    app: `AffinerApp` and `build_app`; services: the collaborators the app is given;
    messages: the app's messages; commands: the command palette's provider.
"""

__all__ = [
    "app",
    "assistant",
    "cli",
    "commands",
    "live",
    "messages",
    "screens",
    "services",
    "widgets",
]
