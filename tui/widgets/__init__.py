"""Reusable widgets of the affiner TUI: gauges, plots, progress, tables, banners, log tail.

Each widget carries its own ``DEFAULT_CSS``; the app's layout lives in ``tui/app.tcss``.
Nothing is imported here: a screen imports the widget modules it draws, so a screen without
plots never loads textual-plotext.
"""

__all__ = [
    "conversation",
    "example_view",
    "gauge",
    "plan_bars",
    "plots",
    "rank_memory",
    "run_log",
    "run_panels",
    "run_summary",
    "settings_form",
    "side_by_side",
    "token_histogram",
]
