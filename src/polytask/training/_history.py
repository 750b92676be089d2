"""Per-epoch record of a fit."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

import pandas as pd


@dataclass
class History:
    """What happened in each epoch of a fit.

    Each epoch is one record (a flat dict) with ``epoch``; ``train_loss`` and ``stop_loss``,
    the same quantity on the two sets: the objective's stop criterion of the epoch's mean task
    losses (the mean task loss for a learned or moving weighting, the combined loss for a fixed
    form such as ``sum`` or ``geometric``); ``train_combined``, the mean over the epoch's steps
    of what each step minimised (a learned weighting's own scale, e.g. negative for DB-MTL);
    ``train_loss/<task>`` and ``stop_loss/<task>`` (each task's own loss), ``weight/<task>``
    (the mean effective weight the task got) and ``seconds``. In an epoch where a task got no
    training batch (a sampling schedule on small data), its ``train_loss/<task>`` and the
    epoch's ``train_loss`` are NaN: a gap in the curves.

    Examples
    --------
    >>> h = History(("a",))
    >>> h.records.append({"epoch": 1, "stop_loss": 0.5})
    >>> h["stop_loss"]
    [0.5]
    >>> h.columns
    ['epoch', 'stop_loss']
    """

    task_names: tuple[str, ...]
    records: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False
    stop_reason: str = ""

    def __getitem__(self, column: str) -> list[float]:
        """The column's values, epoch by epoch (the epochs that recorded it); a column no epoch
        recorded is a KeyError naming the recorded ones (an empty history has every column
        empty)."""
        values = [record[column] for record in self.records if column in record]
        if not values and self.records:
            known = self.columns
            close = difflib.get_close_matches(column, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise KeyError(f"no epoch recorded {column!r}{hint} The columns are {known}")
        return values

    @property
    def columns(self) -> list[str]:
        """Every column some epoch recorded, in the order they first appear."""
        return list(dict.fromkeys(key for record in self.records for key in record))

    def __len__(self) -> int:
        return len(self.records)

    def task_column(self, prefix: str, task: str) -> list[float]:
        """One task's series, e.g. ``task_column("stop_loss", "task0")``."""
        return self[f"{prefix}/{task}"]

    @property
    def best(self) -> dict[str, float]:
        """The record of the epoch whose weights the model holds after the fit."""
        for record in self.records:
            if record["epoch"] == self.best_epoch:
                return record
        return {}

    def to_frame(self) -> pd.DataFrame:
        """One row per epoch."""
        return pd.DataFrame(self.records)

    def to_dict(self) -> dict[str, Any]:
        return {
            "task_names": list(self.task_names),
            "records": self.records,
            "best_epoch": self.best_epoch,
            "stopped_early": self.stopped_early,
            "stop_reason": self.stop_reason,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> History:
        return cls(
            tuple(data["task_names"]),
            [dict(r) for r in data["records"]],
            data["best_epoch"],
            data["stopped_early"],
            data.get("stop_reason", ""),
        )
