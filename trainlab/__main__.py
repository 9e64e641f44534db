"""``python -m trainlab``: the same command line as ``trainlab``."""

import sys

from trainlab.cli.main import main

sys.exit(main())
