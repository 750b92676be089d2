"""More loss-level weightings, wrapped from torchjd's ``scalarization`` module."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torchjd import scalarization

from ._base import LossObjective, Positions
from ._loss_level import check_option
from ._streams import RandomStream


class _EveryTask(LossObjective):
    """A torchjd scalarizer whose state covers every task: each step must hold all of them."""

    needs_every_task = True

    def _all(self, positions: Positions) -> None:
        if positions is not None and len(positions) != len(self.task_names):
            raise ValueError(
                f"{type(self).__name__} keeps per-task state and needs every task in every step; "
                "use the round_robin schedule (and no missing labels)"
            )

    def combine(self, losses: Tensor, positions: Positions = None) -> Tensor:
        self._all(positions)
        return self.scalarizer(losses)


class DWA(_EveryTask):
    """Dynamic Weight Average (Liu, Johns and Davison, CVPR 2019, "End-to-End Multi-Task
    Learning with Attention"): weights from the ratio of each task's average loss over the two
    previous epochs, softmaxed with a temperature (torchjd's ``DWA``).

    Parameters
    ----------
    temperature
        The softmax temperature (finite and positive; 2 as in the paper).

    Examples
    --------
    >>> objective = DWA(); objective.bind(["a", "b"])
    >>> float(objective.combine(torch.tensor([1.0, 3.0])))  # uniform weights in the first epochs
    4.0
    """

    def __init__(self, temperature: float = 2.0) -> None:
        super().__init__()
        check_option("DWA", "temperature", temperature, low=0.0, strict=True)
        self.temperature = temperature

    def _on_bind(self) -> None:
        self.scalarizer = scalarization.DWA(self.temperature)

    def extra_repr(self) -> str:
        return ", ".join([f"temperature={self.temperature!r}", super().extra_repr()]).rstrip(", ")

    def _dwa_weights(self, losses: Tensor) -> Tensor:
        # torchjd's forward also adds the losses to the epoch's averages; this reads the weights
        # alone, so the stop-set evaluation does not count as training data
        return self.scalarizer._compute_weights(losses)

    def weights(self, losses: Tensor, value: Tensor, positions: Positions = None) -> Tensor:
        return self._dwa_weights(losses)

    def end_epoch(self) -> None:
        self.scalarizer.step()


class RLW(RandomStream, _EveryTask):
    """Random Loss Weighting (Lin et al., TMLR 2022, "Reasonable Effectiveness of Random
    Weighting"): each step weights the losses with ``softmax`` of standard normal draws (torchjd's
    ``Random``). The draws come from the method's own generator, seeded by the fit
    (:class:`~polytask.objectives._streams.RandomStream`), so they do not move with the dropout
    masks and the processes of a data-parallel fit draw the same weights.

    Examples
    --------
    >>> objective = RLW(); objective.bind(["a", "b"]); objective.fit_seed = 3
    >>> first = objective.combine(torch.tensor([1.0, 3.0]))
    >>> objective.bind(["a", "b"])  # a new fit: the same stream again
    >>> bool(objective.combine(torch.tensor([1.0, 3.0])) == first), 1.0 < float(first) < 3.0
    (True, True)
    """

    def _on_bind(self) -> None:
        self.scalarizer = scalarization.Random()
        self.reset_stream()

    def combine(self, losses: Tensor, positions: Positions = None) -> Tensor:
        self._all(positions)
        return self.lend(self.scalarizer, losses)  # torchjd draws from the global generator


class IMTLL(_EveryTask):
    """IMTL-L (Liu et al., ICLR 2021, "Towards Impartial Multi-task Learning"): learned loss
    scales ``exp(s_t) * L_t - s_t`` (torchjd's ``IMTLL``); its parameters train with the model."""

    def _on_bind(self) -> None:
        self.scalarizer = scalarization.IMTLL(len(self.task_names))


class FAMO(_EveryTask):
    """Fast Adaptive Multitask Optimization (Liu et al., NeurIPS 2023): task logits updated
    after each step from how much each (log) loss fell, with an O(1) cost per step instead of
    per-task gradients (torchjd's ``FAMO``). After the model's step the trainer recomputes the
    batch's losses once (no gradient) and hands them to :meth:`after_step`.

    Parameters
    ----------
    lr
        The learning rate of the task logits (finite, non-negative).
    weight_decay
        Their weight decay (finite, non-negative).
    """

    def __init__(self, lr: float = 0.025, weight_decay: float = 1e-3) -> None:
        super().__init__()
        # torchjd refuses negative values when the objective binds, but lets NaN through
        check_option("FAMO", "lr", lr, low=None)
        check_option("FAMO", "weight_decay", weight_decay, low=None)
        self.lr, self.weight_decay = lr, weight_decay

    def extra_repr(self) -> str:
        options = f"lr={self.lr!r}, weight_decay={self.weight_decay!r}"
        return ", ".join([options, super().extra_repr()]).rstrip(", ")

    def _on_bind(self) -> None:
        self.scalarizer = scalarization.FAMO(
            len(self.task_names), lr=self.lr, weight_decay=self.weight_decay
        )

    def parameters(self, recurse: bool = True):
        return iter(())  # FAMO steps its own logits; the model's optimizer must not

    def after_step(self, recompute: Callable[[], Tensor]) -> None:
        with torch.no_grad():
            losses = recompute()
        self.scalarizer.update(losses)
