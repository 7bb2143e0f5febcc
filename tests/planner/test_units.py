"""The one way memory and time are written: boundaries of `format_bytes` and `format_duration`."""

from __future__ import annotations

import math

import pytest

from affiner.planner.units import GIB, MIB, format_bytes, format_bytes_of, format_duration


@pytest.mark.parametrize(
    ("num_bytes", "text"),
    [
        (None, "N/A"),
        (math.nan, "N/A"),
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.00 KiB"),
        (520 * MIB, "520 MiB"),
        (1023 * MIB, "1023 MiB"),
        # The MiB/GiB boundary: a figure that would round to "1024 MiB" is written in GiB.
        (1023.6 * MIB, "1.00 GiB"),
        (GIB, "1.00 GiB"),
        (1536 * MIB, "1.50 GiB"),
        (9.996 * GIB, "10.0 GiB"),
        (44.1 * GIB, "44.1 GiB"),
        (141 * GIB, "141 GiB"),
        (1023 * GIB, "1023 GiB"),
        (2 * 1024 * GIB, "2.00 TiB"),
        (5000 * 1024 * GIB, "5000 TiB"),
    ],
)
def test_format_bytes(num_bytes: float | None, text: str) -> None:
    assert format_bytes(num_bytes) == text


def test_decimal_gigabytes_read_in_gib() -> None:
    """What the plan once called "44.1 GB" is 41.1 GiB, the unit nvidia-smi and the monitor use."""
    assert format_bytes(44.1e9) == "41.1 GiB" and format_bytes(23.7e9) == "22.1 GiB"


def test_format_bytes_of_uses_the_whole_s_unit() -> None:
    assert format_bytes_of(12.1 * GIB, 24 * GIB) == "12.1/24.0 GiB"
    assert format_bytes_of(520 * MIB, 24 * GIB) == "0.51/24.0 GiB"
    assert format_bytes_of(61 * GIB, 24 * GIB) == "61.0/24.0 GiB"
    assert format_bytes_of(300 * MIB, 900 * MIB) == "300/900 MiB"
    assert format_bytes_of(None, 24 * GIB) == "N/A"
    assert format_bytes_of(GIB, None) == format_bytes_of(GIB, 0) == "1.00 GiB"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "N/A"),
        (math.nan, "N/A"),
        (math.inf, "N/A"),
        (-1, "N/A"),
        (0, "0 s"),
        (0.05, "50 ms"),
        (0.25, "250 ms"),
        (0.9996, "1.0 s"),  # not "1000 ms"
        (2.14, "2.1 s"),
        (9.96, "10 s"),  # not "10.0 s"
        (42, "42 s"),
        (89.6, "90 s"),
        (90, "2 min"),
        (600, "10 min"),
        (3600, "60 min"),
        (5399, "90 min"),
        (5400, "1 h 30 min"),
        (7200, "2 h"),
        (7200 + 1200, "2 h 20 min"),
        (48 * 3600 - 1, "48 h"),
        (3 * 86400, "3 d"),
        (2 * 86400 + 4 * 3600, "2 d 4 h"),
    ],
)
def test_format_duration(seconds: float | None, text: str) -> None:
    assert format_duration(seconds) == text
