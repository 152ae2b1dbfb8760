"""Checkpoints with a known answer (planted signal), for the demo, the tests and the benchmarks."""
