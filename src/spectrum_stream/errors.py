"""Every exception class of the package, by what the catcher does with it.

- `SpectrumError` (and its kinds): stop the run; the CLI prints one `error: ...` line, exit 1.
- `ModuleFailed`: fail this one module (journaled with the reason) and go on with the scan. It is
  deliberately not a SpectrumError, so no caller mistakes it for a reason to stop.
- `ScanInterrupted`: Ctrl-C or SIGTERM reached the scan loop; the journal keeps what finished.
  The signal arrives as KeyboardInterrupt (SIGTERM's handler raises the same) and the loop turns
  it into this, once; the CLI prints how to resume and exits 130.
- `HubDownloadError`: a shard download failed mid-scan: stop, keeping the journal's work.
- Under torchrun: `AlreadyReported` (another rank printed the line: exit with its code, silently)
  and `PeerFailed` (another rank failed: stop; rank 0 logs which and why, distributed/ranked.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .options import ScanReport


class SpectrumError(Exception):
    """A problem with the user's input or environment, explained in one line: the run stops."""


class CheckpointError(SpectrumError):
    """A checkpoint file or index that breaks the safetensors rules (docs/spec.md, "Checkpoint files")."""


class ResumeError(SpectrumError):
    """A journal that cannot be resumed with this checkpoint or these settings."""


class JsonFileError(SpectrumError):
    """A JSON file (or line) that cannot be read, is not JSON, or does not fit its schema.

    str() is the whole line (`<where>: not <what>: <why>`); `why` is the last part alone.
    """

    def __init__(self, message: str, why: str = ""):
        super().__init__(message)
        self.why = why or message


class SchemaMismatch(Exception):
    """Raised by a JSON schema check: `at` is the key path (e.g. `["weight_map"]["x.weight"]`);
    source/jsonfile.py turns it into a JsonFileError naming the file."""

    def __init__(self, at: str, problem: str):
        super().__init__(f"{at or 'the top level'} {problem}")


class AlreadyReported(SpectrumError):
    """Another rank has said what went wrong: exit non-zero without a line of our own."""

    def __init__(self, message: str = "reported by another rank", code: int = 1):
        super().__init__(message)
        self.code = code


class ModuleFailed(Exception):
    """One module cannot be scanned (NaN values, no memory to decompose it, an SVD that failed):
    it is journaled as failed with `reason` and the scan goes on."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class HubDownloadError(Exception):
    """A shard download failed mid-scan. Deliberately not a SpectrumError, so that the scan loop
    does not record the shard's modules as failed: the scan stops and the journal keeps its work."""

    def __init__(self, shard: str, reason: str):
        super().__init__(f"{shard}: {reason}")
        self.shard, self.reason = shard, reason


class ScanInterrupted(SpectrumError):
    """Ctrl-C or SIGTERM: finished modules are kept; the report says how far it got."""

    def __init__(self, report: ScanReport):
        super().__init__("scan interrupted")
        self.report = report


class RanksInterrupted(ScanInterrupted):
    """Ctrl-C or SIGTERM under torchrun: what to tell the user is about every rank's journal."""

    def __init__(self, report: ScanReport, line: str):
        super().__init__(report)
        self.line = line


class KeyGrammarError(SpectrumError):
    """A results key or pattern that is not a module name (results/key_grammar.py)."""


class UnsafeFileError(SpectrumError):
    """A file that is not a regular file inside its folder (source/safe_files.py)."""


class WouldOverwrite(SpectrumError):
    """An output that would replace a file the tool did not write, or the command's own input."""


class PeerFailed(SpectrumError):
    """Under torchrun: another rank failed and printed why; this one stops (rank 0 names it)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message
