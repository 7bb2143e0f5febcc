"""The one way affiner writes memory and time for people: binary units and plain durations.

Memory is in binary units written ``GiB``/``MiB``, as ``nvidia-smi``, nvitop and torch report
it, so a predicted peak reads in the same unit as the measured one next to it (a "GB" from
a plan beside a "GiB" from the monitor differ by 7 % and look like a wrong prediction).
JSON and ``run.toml`` keep plain integer bytes; only what a person reads goes through here.
Pure Python, no imports beyond the standard library: every room can use it.
"""

from __future__ import annotations

import math

KIB = 1024
MIB = 1024**2
GIB = 1024**3

_BYTE_UNITS = ("KiB", "MiB", "GiB", "TiB")


def _three_figures(value: float) -> str:
    """``1.76``, ``44.1``, ``512``: about three significant figures, as the value rounds."""
    if round(abs(value), 2) < 10:
        return f"{value:.2f}"
    if round(abs(value), 1) < 100:
        return f"{value:.1f}"
    return f"{value:.0f}"


def _unit(num_bytes: float) -> tuple[str, float]:
    """The unit a byte count is written in, and its size: the largest that keeps it under 1024."""
    if abs(num_bytes) < KIB:
        return "B", 1
    scale = 1
    for unit in _BYTE_UNITS:
        scale *= 1024
        # 1023.6 MiB would print as "1024 MiB": step up once the rounded figure reaches 1024.
        if abs(num_bytes) / scale < 1023.5 or unit == _BYTE_UNITS[-1]:
            return unit, scale
    raise AssertionError("unreachable")  # pragma: no cover


def _figure(value: float, unit: str) -> str:
    return f"{value:.0f}" if unit == "B" else _three_figures(value)


def format_bytes(num_bytes: float | None) -> str:
    """Bytes as people read memory: ``512 B``, ``900 MiB``, ``1.76 GiB``, ``44.1 GiB``, ``141 GiB``.

    Binary units (1 GiB = 1024³ bytes) with about three significant figures; below 1 GiB the
    figure is in MiB (or KiB, B), so a CUDA context reads ``520 MiB``, not ``0.51 GiB``.

    Args:
        num_bytes: a byte count; None (or NaN) when the reading is missing.

    Returns:
        The figure with its unit, or ``N/A`` for a missing reading.
    """
    if num_bytes is None or math.isnan(num_bytes):
        return "N/A"
    unit, scale = _unit(num_bytes)
    return f"{_figure(num_bytes / scale, unit)} {unit}"


def format_bytes_of(used: float | None, total: float | None) -> str:
    """A part of a whole in the whole's unit, for gauges and bars: ``12.1/24.0 GiB``, ``0.51/24.0 GiB``.

    Args:
        used: the part (a peak, the memory in use); None when the reading is missing.
        total: the whole (the device's memory); None or 0 when unknown, and then only `used`
            is written, as `format_bytes` writes it.
    """
    if used is None or math.isnan(used):
        return "N/A"
    if total is None or math.isnan(total) or not total:
        return format_bytes(used)
    unit, scale = _unit(max(abs(used), abs(total)))
    return f"{_figure(used / scale, unit)}/{_figure(total / scale, unit)} {unit}"


def format_duration(seconds: float | None) -> str:
    """Seconds as people read time: ``<1 ms``, ``850 ms``, ``2.1 s``, ``42 s``, ``12 min``, ``3 h 20 min``, ``2 d 4 h``.

    Used alike for a step time, an ETA, a run's length and how long ago something happened,
    so a predicted step time and a measured one read in the same form.

    Args:
        seconds: a duration; None, NaN, infinite or negative when it is unknown.

    Returns:
        The duration in words, or ``N/A`` when unknown.
    """
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "N/A"
    if seconds == 0:
        return "0 s"
    if seconds < 0.0005:  # "0 ms" for a real, tiny step would read as no time at all
        return "<1 ms"
    if round(seconds * 1000) < 1000:
        return f"{seconds * 1000:.0f} ms"
    if round(seconds, 1) < 10:
        return f"{seconds:.1f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    if seconds < 48 * 3600:
        hours, rest = divmod(round(seconds / 60), 60)
        return f"{hours} h {rest} min" if rest else f"{hours} h"
    days, hours = divmod(round(seconds / 3600), 24)
    return f"{days} d {hours} h" if hours else f"{days} d"
