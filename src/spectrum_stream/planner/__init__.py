"""Planning a Spectrum fine-tune from checkpoint headers: scan cost and per-GPU training memory.

See docs/planner.md.
"""

from .params import Param, stored_view, trainer_view
from .report import build_plan, format_plan_text

__all__ = ["Param", "build_plan", "format_plan_text", "stored_view", "trainer_view"]
