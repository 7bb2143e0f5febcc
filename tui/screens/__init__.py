"""One screen a module; the app imports each the first time it is shown."""
