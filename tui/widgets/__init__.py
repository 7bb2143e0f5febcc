"""Reusable widgets of the affiner TUI: gauges, plots, progress, tables, banners, log tail.

Each widget carries its own ``DEFAULT_CSS``; the app's layout lives in ``tui/app.tcss``.
"""
