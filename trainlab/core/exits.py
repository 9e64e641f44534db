"""The exit codes of ``trainlab`` and its commands (the app reads them from its child
processes too): 0 the run completed (or stopped early by rule or on request); 1 user code
or the engine failed (also while ``doctor``, ``lr-find`` or ``probe`` built the run); 2 bad
input (config, file, flag); 3 the loss became non-finite; 4 ``doctor`` found a check that
failed; 130 interrupted with Ctrl-C."""

EXIT_OK = 0
"""The run completed, or stopped early by rule or on request; the report was printed."""
EXIT_FAILED = 1
"""User code or the engine failed: the traceback (of the user's code when it raised) is
on stderr. The same for every command that builds a run."""
EXIT_BAD_INPUT = 2
"""Bad input: a config value, a file or a flag; the message on stderr names it."""
EXIT_NON_FINITE = 3
"""The training loss became non-finite (NaN/inf) and the run stopped."""
EXIT_CHECK_FAILED = 4
"""``trainlab doctor``: the report was printed and a check failed. Its own code, so a
script (or the app) tells a verdict from a crash building the run (EXIT_FAILED)."""
EXIT_INTERRUPTED = 130
"""Interrupted with Ctrl-C (128 + SIGINT, the shell's convention)."""
