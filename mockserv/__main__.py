"""Entry point for ``python -m mockserv``."""

import sys

from .cli import main

sys.exit(main())
