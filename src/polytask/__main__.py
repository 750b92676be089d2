"""``python -m polytask``: the command line, also under ``torchrun -m polytask``."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
