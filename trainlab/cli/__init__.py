"""The command line: ``trainlab`` (``main``: the app, or a subcommand) and the commands
that need no app (``commands``: run headless, resume, fork, runs, export, doctor, ...)."""
