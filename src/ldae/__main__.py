"""``python -m ldae ...``: the same as the ``ldae`` console script."""
import sys

from .cli import main

if __name__ == "__main__":  # importing this module (e.g. walking the package) runs nothing
    sys.exit(main())
