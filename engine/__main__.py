"""``python -m engine``: the same command line as ``trainlab``."""

import sys

from engine.cli import main

sys.exit(main())
