"""trainlab's training engine: PyTorch only, no UI.

Importing this package is cheap (no torch); the modules that train import it.
"""
