"""affiner's runner: the only place that trains.

Its contract with everything else is the run directory (see `affiner.runner.run.rundir`): ``run.toml``
says what to do, ``events.jsonl`` says what happened, ``status.json`` says where it stands.
Importing this package is cheap; torch and friends load inside the training process only.
"""
