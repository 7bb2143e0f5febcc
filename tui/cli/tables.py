"""The house style of the CLI's rich tables."""

from __future__ import annotations

from typing import Any


def house_table(title: str | None = None, **options: Any) -> Any:
    """A borderless rich `Table` with a bold left title: it fits 80 columns over SSH.

    rich is imported here, inside the call, so commands that print JSON never pay for it.
    """
    from rich.table import Table

    return Table(
        title=title,
        title_justify="left",
        title_style="bold",
        box=None,
        pad_edge=False,
        header_style="bold underline",
        **options,
    )
