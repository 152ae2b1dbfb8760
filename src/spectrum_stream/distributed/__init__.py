"""Scanning with several processes under torchrun: which rank does what (split.py), talking
between ranks with timeouts and the group's guarded life (group.py), the scan of one rank
(ranked.py), and one rank's part of a Hub scan (hub.py).

The one-process scan knows nothing of this package; the CLI uses it when torchrun started it.
"""
