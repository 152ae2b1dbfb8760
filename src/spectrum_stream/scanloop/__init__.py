"""The scan loop, split along its seams (docs/architecture.md, "The scan loop").

- `steps.py`     the work handed out (decode, decompose, streamed gram), passed in, not global
- `placement.py` DevicePolicy: the device budget, where each job goes, reading it there
- `batch.py`     Pending / Batch: same-shape matrices waiting to be decomposed together
- `work.py`      Outcome, and decomposing a batch or a streamed matrix into outcomes
- `recorder.py`  Recorder: each outcome's spectrum and journal line, and the report's counts
- `progress.py`  the progress bar, counting estimated flops (bytes and modules beside it)
- `runner.py`    Runner (the loop over jobs, per-shard release) and `run_jobs`, its entry point
"""

from .runner import run_jobs
from .steps import STEPS, Steps

__all__ = ["STEPS", "Steps", "run_jobs"]
