"""One screen a module; the app imports each the first time it is shown.

Nothing is imported here, so the first screen does not pay for the others (the monitor's
plots load textual-plotext).
"""

__all__ = [
    "assistant",
    "confirm",
    "hardware",
    "hardware_text",
    "help",
    "monitor",
    "playground",
    "run_facts",
    "runs",
    "runs_columns",
    "runs_compare",
]
