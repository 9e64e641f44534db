"""``python -m tui``: the same command line as ``trainlab``."""

import sys

from tui.cli import main

sys.exit(main())
