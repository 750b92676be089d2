"""Task-aware data: datasets, splits, schedules and built-in generators and loaders."""

from ._loaders import as_loaders, mix_loaders
from ._multitarget import MultiTargetData
from ._schedules import Schedule
from ._split import SPLIT_NAMES, split
from ._synthetic import make_hetero, make_phase, task_names
from ._taskdata import TaskData, csr_batch
from ._text import bag_of_words, read_labelled_sentences

__all__ = [
    "SPLIT_NAMES",
    "MultiTargetData",
    "Schedule",
    "TaskData",
    "as_loaders",
    "bag_of_words",
    "csr_batch",
    "make_hetero",
    "make_phase",
    "mix_loaders",
    "read_labelled_sentences",
    "split",
    "task_names",
]
