"""``python -m ldae ...``: the same as the ``ldae`` console script."""
import sys

from .cli import main

sys.exit(main())
