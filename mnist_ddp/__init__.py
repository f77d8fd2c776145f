"""mnist_ddp: the blog's MNIST dropout MLP, trained fast on one process or many with DDP."""

import importlib.util
import sys
import time

__version__ = "0.1.0"
# The first thing any ``python -m mnist_ddp.<command>`` runs: the run's clock counts from here
# when /proc's start time belongs to a shell that exec'd Python (see metrics.process_start_time).
PACKAGE_IMPORTED_AT = time.time()

# ``python -m mnist_ddp.<command>`` with an interpreter that lacks torch (the system Python
# beside a venv that is not active): one line that names the interpreter, not a traceback.
if sys.argv[:1] == ["-m"] and importlib.util.find_spec("torch") is None:
    sys.stderr.write(
        f"error: {sys.executable} cannot import torch; run the interpreter you installed mnist_ddp into"
        " (README.md's set-up: .venv/bin/python), or install it into this one\n"
    )
    raise SystemExit(2)
