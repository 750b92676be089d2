"""Callbacks observe a fit without changing it."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

    from ._history import History
    from ._trainer import FitState


class Callback:
    """Base class: override the hooks you need. Hooks must not change the model or the data."""

    def on_fit_start(self, state: FitState) -> None:
        """Before the first step."""

    def on_before_backward(
        self, state: FitState, losses: Tensor, positions: tuple[int, ...] | None
    ) -> None:
        """After the step's losses are computed, before the objective's backward pass (the
        graph is alive: a monitor may take per-task gradients here with ``retain_graph``)."""

    def on_step_end(self, state: FitState) -> None:
        """After each optimizer step (gradients are still in ``.grad``)."""

    def on_epoch_end(self, state: FitState, record: dict[str, float]) -> None:
        """After each epoch's record is complete."""

    def on_fit_end(self, state: FitState, history: History) -> None:
        """After the best weights are restored."""
