"""Scanning with several processes under torchrun: which rank does what (split.py), talking
between ranks with timeouts (group.py), and the scan of one rank (ranked.py).

The one-process scan knows nothing of this package; the CLI uses it when torchrun started it.
"""
