"""Entry point for ``python -m archbench``."""

import sys

from archbench.cli import main

sys.exit(main())
