"""The command line on top of the pipeline: `spectrum-stream scan | select | rebuild | demo ...`."""

from .main import main

__all__ = ["main"]
