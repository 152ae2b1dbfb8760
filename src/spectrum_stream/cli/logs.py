"""The CLI's view of the library's log: one line per message on stderr, through the progress bar
(tqdm.write), so that a warning never tears the bar apart. API callers see the same records
through their own logging setup."""

from __future__ import annotations

import logging
import sys

from ..printable import printable_lines


class _BarFriendly(logging.Handler):
    def __init__(self, rank: str = ""):
        super().__init__()
        self.rank = rank  # "[rank R/W] " under torchrun: whose line it is

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = printable_lines(record.getMessage())  # names from strangers' files
            if record.levelno >= logging.ERROR:
                message = f"error: {message}"
            elif record.levelno >= logging.WARNING:
                message = f"warning: {message}"
            from tqdm.auto import tqdm  # imported by the first line logged, not by --help

            tqdm.write(self.rank + message, file=sys.stderr)
        except Exception:  # a log line must never end a scan
            self.handleError(record)


def install(quiet: bool = False, rank: str = "") -> None:
    """Show the package's INFO lines (a Hub scan's plan, each download) and its warnings; `quiet`
    (no progress bar) also drops the line per download; `rank` starts every line (torchrun)."""
    logger = logging.getLogger("spectrum_stream")
    for handler in list(logger.handlers):
        if isinstance(handler, _BarFriendly):
            logger.removeHandler(handler)
    logger.addHandler(_BarFriendly(rank))
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logging.getLogger("spectrum_stream.source.hub.downloads").setLevel(
        logging.WARNING if quiet else logging.NOTSET
    )
