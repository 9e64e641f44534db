"""trainlab: a terminal lab for training neural networks.

The packages, and what each may import:

- ``trainlab.core``: what crosses the boundary between the app and the engine and what
  the app may use: the protocol, the config schema, the run directory and its store,
  starting and finding a served run, labs and presets as data, text formatting, exit
  codes. Never imports torch.
- ``trainlab.engine``: training with PyTorch: building a run, the loop, statistics,
  optimizers, data, models, init, losses, checkpoints, serving a run. Never imports a
  UI library.
- ``trainlab.doctor``: pre-flight checks, live detectors and the LR finder (the
  checks and the finder train, so they import torch; the detectors do not).
- ``trainlab.cli``: the command line (``trainlab ...``).
- ``trainlab.tui``: the Textual app. Never imports torch, the engine or the CLI.

``tests/test_boundaries.py`` reads the sources and fails when one of these rules breaks.
"""
