"""The one exception type the tool raises on purpose.

The CLI turns a SpectrumError into one line on stderr and a non-zero exit; anything else is a bug.
"""


class SpectrumError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class CheckpointError(SpectrumError):
    """A checkpoint file or index that breaks the safetensors rules (docs/spec.md, "Checkpoint files")."""


class ResumeError(SpectrumError):
    """A journal that cannot be resumed with this checkpoint or these settings."""


class AlreadyReported(SpectrumError):
    """Another rank has said what went wrong: exit non-zero without a line of our own."""

    def __init__(self, message: str = "reported by another rank", code: int = 1):
        super().__init__(message)
        self.code = code


class PeerFailed(SpectrumError):
    """Under torchrun: another rank failed and printed why; this one stops (rank 0 names it)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message
