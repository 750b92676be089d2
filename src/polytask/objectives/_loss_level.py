"""Loss-level combiners: a fixed function of the task losses, backpropagated once.

Where torchjd's ``scalarization`` module has the method, it does the arithmetic; these classes
add task binding, validation, closed-form effective weights and device handling.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor
from torchjd import scalarization

from ._base import LossObjective, Positions


def check_option(
    method: str, name: str, value: object, low: float | None = 0.0, strict: bool = False
) -> None:
    """Refuse a numeric option of ``method`` that is not a finite real number (bools and strings
    are not numbers here), or that lies below ``low`` (at or below it if ``strict``; ``None``:
    no bound). A NaN or infinite option would only show up later, as a non-finite loss.

    Raises
    ------
    ValueError
        Naming the method, the option, the expected range and the value.

    Examples
    --------
    >>> check_option("CAGrad", "c", float("nan"))
    Traceback (most recent call last):
    ...
    ValueError: CAGrad: c must be a finite number >= 0, got nan
    """
    real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if real and math.isfinite(value) and (low is None or (value > low if strict else value >= low)):
        return
    bound = "" if low is None else f" {'>' if strict else '>='} {low:g}"
    raise ValueError(f"{method}: {name} must be a finite number{bound}, got {value!r}")


def _plain(value: object) -> object:
    """A numpy scalar or a 0-dim tensor as the Python number it holds; anything else as is."""
    if isinstance(value, np.generic) or (isinstance(value, Tensor) and value.ndim == 0):
        return value.item()
    return value


class Sum(LossObjective):
    """The plain sum of the task losses (every task weight 1).

    Examples
    --------
    >>> import torch
    >>> objective = Sum(); objective.bind(["a", "b"])
    >>> float(objective.value(torch.tensor([1.0, 2.0])))
    3.0
    """

    fixed_form = True
    linear = True

    def _on_bind(self) -> None:
        self.scalarizer = scalarization.Sum()

    def combine(self, losses: Tensor, positions: Positions = None) -> Tensor:
        return self.scalarizer(losses)

    def weights(self, losses: Tensor, value: Tensor, positions: Positions = None) -> Tensor:
        return torch.ones_like(losses)


class Mean(LossObjective):
    """The mean of the task losses (every task weight 1/T). CLI names ``mean`` and ``mse``:
    with regression tasks it is the mean squared error over all target columns.

    Examples
    --------
    >>> import torch
    >>> objective = Mean(); objective.bind(["a", "b"])
    >>> float(objective.value(torch.tensor([1.0, 2.0])))
    1.5
    """

    fixed_form = True
    linear = True

    def _on_bind(self) -> None:
        self.scalarizer = scalarization.Mean()

    def combine(self, losses: Tensor, positions: Positions = None) -> Tensor:
        return self.scalarizer(losses)  # the mean over the tasks present

    def weights(self, losses: Tensor, value: Tensor, positions: Positions = None) -> Tensor:
        return torch.full_like(losses, 1.0 / losses.numel())


class Weighted(LossObjective):
    """``sum_t w_t * loss_t`` with fixed weights.

    Parameters
    ----------
    weights
        One finite, non-negative weight per task: a mapping task -> weight, or a sequence in
        task order (a list, a 1-D numpy array or tensor; numpy and torch scalars are read as
        Python numbers). Checked against the tasks when the trainer binds the objective.

    Examples
    --------
    >>> import torch
    >>> objective = Weighted({"a": 1.0, "b": 3.0}); objective.bind(["a", "b"])
    >>> float(objective.value(torch.tensor([1.0, 2.0])))
    7.0
    """

    fixed_form = True
    linear = True

    def __init__(
        self, weights: Mapping[str, float] | Sequence[float] | np.ndarray | Tensor
    ) -> None:
        super().__init__()
        if isinstance(weights, Mapping):
            weights = {task: _plain(w) for task, w in weights.items()}
        elif isinstance(weights, Tensor | np.ndarray | np.generic):
            if weights.ndim != 1:
                raise ValueError(
                    "Weighted: weights: expected one weight per task (1-D), got shape "
                    f"{tuple(weights.shape)}"
                )
            weights = weights.tolist()
        values = list(weights.values()) if isinstance(weights, Mapping) else list(weights)
        values = [_plain(w) for w in values]
        bad = [w for w in values if not isinstance(w, int | float) or not math.isfinite(w) or w < 0]
        if bad or not values:
            raise ValueError(f"Weighted: weights must be finite and non-negative, got {values}")
        if not any(values):
            raise ValueError(f"Weighted: every weight is 0 ({values}), so nothing would train")
        self.given = dict(weights) if isinstance(weights, Mapping) else tuple(values)

    def _on_bind(self) -> None:
        names = self.task_names
        if isinstance(self.given, dict):
            if set(self.given) != set(names):
                raise ValueError(
                    f"Weighted: weights given for tasks {sorted(self.given)}, "
                    f"the model's tasks are {list(names)}"
                )
            values = [float(self.given[t]) for t in names]
        else:
            if len(self.given) != len(names):
                raise ValueError(
                    f"Weighted: {len(self.given)} weights given for "
                    f"{len(names)} tasks {list(names)}"
                )
            values = [float(w) for w in self.given]
        self.scalarizer = scalarization.Constant(torch.tensor(values))
        # torchjd keeps the weights as a plain attribute; as a buffer they follow .to(device).
        weights = self.scalarizer.weights
        del self.scalarizer.weights
        self.scalarizer.register_buffer("weights", weights)

    def combine(self, losses: Tensor, positions: Positions = None) -> Tensor:
        if positions is None:
            return self.scalarizer(losses)
        return (self._present(positions, losses) * losses).sum()

    def extra_repr(self) -> str:
        given = self.given if isinstance(self.given, dict) else list(self.given)
        return ", ".join([repr(given), super().extra_repr()]).rstrip(", ")

    def _present(self, positions: Positions, losses: Tensor) -> Tensor:
        weights = self.scalarizer.weights.to(losses.dtype)
        return weights if positions is None else weights[self._index(positions, losses.device)]

    def weights(self, losses: Tensor, value: Tensor, positions: Positions = None) -> Tensor:
        return self._present(positions, losses)


class GeometricMean(LossObjective):
    """The geometric mean of the task losses, ``exp(mean_t log loss_t)`` (GLS, Chennupati et al.
    2019, "MultiNet++"). With MSE task losses this is the closed-form heteroscedastic loss
    ``exp(mean_t(log(mean_batch((y_pred_t - y_true_t)^2))))``: the maximum-likelihood loss when
    each task has its own unknown noise variance.

    A task whose loss is exactly 0 would make ``log`` infinite and the gradient NaN; losses are
    floored at the smallest positive normal float, so such a task just gets weight 0.
    (torchjd's ``GeometricMean`` computes the same formula but checks the sign of the losses on
    every call, a device-to-host sync on a GPU; the floor makes that check unnecessary, and the
    tests use torchjd's version as the independent reference.)

    The effective weight of task t is ``value / (T * loss_t)``: noisier tasks count less.

    Examples
    --------
    >>> import torch
    >>> objective = GeometricMean(); objective.bind(["a", "b"])
    >>> float(objective.value(torch.tensor([1.0, 4.0])))
    2.0
    """

    fixed_form = True

    def _floor(self, losses: Tensor) -> Tensor:
        return losses.clamp_min(torch.finfo(losses.dtype).tiny)

    def combine(self, losses: Tensor, positions: Positions = None) -> Tensor:
        return self._floor(losses).log().mean().exp()  # over the tasks present

    def weights(self, losses: Tensor, value: Tensor, positions: Positions = None) -> Tensor:
        floored = self._floor(losses)
        # clamp_min passes no gradient below the floor: such a task's weight is 0
        return torch.where(losses >= floored, value / (losses.numel() * floored), 0.0)


class Uncertainty(LossObjective):
    """Learned uncertainty weighting (UW; Kendall, Gal and Cipolla, CVPR 2018).

    Each task t gets a learned log-variance ``s_t`` and the combined loss is
    ``sum_t (0.5 * exp(-s_t) * loss_t + 0.5 * s_t)`` (torchjd's ``UW``). The ``s_t`` start at 0
    and are trained with the model: the trainer adds this objective's parameters to its optimizer.
    The effective weight of task t is ``0.5 * exp(-s_t)``.

    Examples
    --------
    >>> import torch
    >>> objective = Uncertainty(); objective.bind(["a", "b"])
    >>> float(objective.combine(torch.tensor([2.0, 4.0])).detach())
    3.0
    """

    def _on_bind(self) -> None:
        self.scalarizer = scalarization.UW(len(self.task_names))

    @property
    def log_variances(self) -> Tensor:
        """The learned ``s_t = log sigma_t^2``, shape ``(T,)``."""
        return self.scalarizer.log_var

    def combine(self, losses: Tensor, positions: Positions = None) -> Tensor:
        if positions is None:
            return self.scalarizer(losses)
        # torchjd's UW takes every task; with some absent, the same formula on those present
        s = self.scalarizer.log_var[self._index(positions, losses.device)]
        return (0.5 * torch.exp(-s) * losses + 0.5 * s).sum()

    def weights(self, losses: Tensor, value: Tensor, positions: Positions = None) -> Tensor:
        s = self.scalarizer.log_var.detach()
        if positions is not None:
            s = s[self._index(positions, losses.device)]
        return 0.5 * torch.exp(-s)
