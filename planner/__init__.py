"""affiner's planner: hardware probe, model shapes, memory and time model, recommendation.

Pure and fast: nothing here imports torch or transformers at import time, so the CLI and
the TUI's first screen never pay for them.
"""
