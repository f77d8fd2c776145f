"""``python -m mnist_ddp.bench``: see :mod:`mnist_ddp.bench`."""

import sys

from mnist_ddp.bench import main

sys.exit(main())
