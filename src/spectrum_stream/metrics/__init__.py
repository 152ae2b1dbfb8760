"""Spectral metrics beyond the SNR."""
