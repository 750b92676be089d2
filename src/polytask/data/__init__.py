"""Task-aware data: datasets, splits and built-in generators."""

from ._multitarget import MultiTargetData
from ._split import SPLIT_NAMES, split
from ._synthetic import make_hetero, make_phase, task_names

__all__ = ["SPLIT_NAMES", "MultiTargetData", "make_hetero", "make_phase", "split", "task_names"]
