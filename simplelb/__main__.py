"""Entry point for ``python -m simplelb``."""

import sys

from .cli import main

sys.exit(main())
