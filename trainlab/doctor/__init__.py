"""The doctor: pre-flight checks before a run (``checks``), live detectors that read
its events (``detectors``, torch-free) and the LR range test (``lr_find``)."""
