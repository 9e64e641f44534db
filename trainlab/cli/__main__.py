"""``python -m trainlab.cli COMMAND``: the commands that need no app (the app runs its
doctor, LR finder and detached starts this way, as child processes)."""

import sys

from trainlab.cli.commands import main

sys.exit(main())
