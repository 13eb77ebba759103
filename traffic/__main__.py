"""Entry point for ``python -m traffic``."""

import sys

from .cli import main

sys.exit(main())
