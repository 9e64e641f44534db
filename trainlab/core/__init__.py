"""What the app and the engine share, and what the app may use: torch-free.

The protocol, the config schema, the run directory and its store, starting and finding
a served run, labs and presets as data, text formatting and exit codes. Importing any
of it is cheap, and the app imports nothing else of trainlab.
"""
