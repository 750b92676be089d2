"""``python -m polytask``: the command line, also under ``torchrun -m polytask``."""

import sys

from .cli import main

sys.exit(main())
