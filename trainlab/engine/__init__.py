"""trainlab's training engine: PyTorch, no UI.

Importing this package is cheap (no torch); the modules that train import it.
"""
