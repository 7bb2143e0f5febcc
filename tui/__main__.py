"""``python -m tui`` is the same as the ``affiner`` command."""

from tui.cli import main

raise SystemExit(main())
