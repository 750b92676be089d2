"""Progress display for fits (silent in quiet mode)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from types import TracebackType

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn


class EpochProgress(AbstractContextManager["EpochProgress"]):
    """A one-line bar of epochs with the latest stop loss; does nothing when ``quiet``."""

    def __init__(self, total: int, label: str, quiet: bool) -> None:
        self._progress = (
            None
            if quiet
            else Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("epoch {task.completed}/{task.total}"),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                transient=True,
            )
        )
        self._total = total
        self._label = label
        self._task = None

    def __enter__(self) -> EpochProgress:
        if self._progress is not None:
            self._progress.start()
            self._task = self._progress.add_task(self._label, total=self._total, info="")
        return self

    def advance(self, info: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=1, info=info)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()
