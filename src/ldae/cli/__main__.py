"""``python -m ldae.cli ...``: the same as the ``ldae`` console script."""
import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
