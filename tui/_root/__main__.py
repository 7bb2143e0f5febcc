"""``python -m affiner`` is the ``affiner`` command: with no arguments it opens the app."""

from affiner.tui.cli.entry import main

raise SystemExit(main())
