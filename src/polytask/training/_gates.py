"""Gate monitoring: each task's mean gate weight per expert, per epoch, in the History.

Gate collapse, where every task puts (nearly) all its weight on one expert, is the known failure
of MMoE that PLE was designed against (Tang et al., RecSys 2020). :class:`GateMonitor` makes it
visible: at the end of each epoch it reads the model's ``gate_weights(x)`` on a fixed batch and
adds one column per task and expert to the epoch's record, ``gate/<task>/<expert index>``;
:func:`~polytask.evaluation.plot_gate_weights` draws them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ._callbacks import Callback

if TYPE_CHECKING:
    from ._history import History
    from ._trainer import FitState

PREFIX = "gate/"


def gate_columns(record: dict[str, Any]) -> dict[str, list[str]]:
    """Task -> its ``gate/<task>/<expert>`` columns of ``record``, in expert order.

    Examples
    --------
    >>> gate_columns({"epoch": 1, "gate/a/1": 0.4, "gate/a/0": 0.6})
    {'a': ['gate/a/0', 'gate/a/1']}
    """
    tasks: dict[str, list[tuple[int, str]]] = {}
    for column in record:
        if column.startswith(PREFIX):
            task, _, expert = column[len(PREFIX) :].rpartition("/")
            tasks.setdefault(task, []).append((int(expert), column))
    return {task: [c for _, c in sorted(pairs)] for task, pairs in tasks.items()}


class GateMonitor(Callback):
    """Record each task's mean gate weight per expert on a fixed batch ``x``.

    At each epoch end (``every_epoch=True``) it calls the model's ``gate_weights(x)`` (eval mode,
    no gradients; the model's mode is restored) and adds ``gate/<task>/<e>``, the mean over the
    rows of ``x`` of the weight task ``<task>``'s gate gives expert ``e``, to the epoch's record,
    so the History (and a replication store) holds them. With ``every_epoch=False`` only the
    last epoch's record gets them, when the fit ends (before the best weights are restored).
    For :class:`~polytask.models.PLE` and :class:`~polytask.models.CGC` the experts are the
    last level's gate's choices: the task's own experts first, then the shared ones; PLE's
    shared gates below the last level (its ``shared_gate_weights``) are recorded too, as
    ``gate/shared@<level>/<e>`` (every task's experts in task order, then the shared ones).

    Parameters
    ----------
    x
        The inputs the gates are read on (e.g. a few hundred stop-set rows); moved to the
        model's device.
    every_epoch
        Record at every epoch end, or only once, at the end of the fit.

    Raises
    ------
    TypeError
        At the start of the fit, when the model has no ``gate_weights`` method (shared-bottom
        and cross-stitch models have no gates).

    Examples
    --------
    >>> import torch, polytask as pt
    >>> from polytask.models import MMoE
    >>> from polytask.training import GateMonitor
    >>> data = pt.MultiTargetData(torch.randn(64, 4), {"a": torch.randn(64), "b": torch.randn(64)})
    >>> model = MMoE(4, ["a", "b"], n_experts=3, expert_hidden=[8])
    >>> monitor = GateMonitor(data.x[:32])
    >>> trainer = pt.Trainer(max_epochs=2, quiet=True, device="cpu", callbacks=[monitor])
    >>> history = trainer.fit(model, pt.regression_tasks(["a", "b"]), data, data)
    >>> [c for c in history.records[-1] if c.startswith("gate/a/")]
    ['gate/a/0', 'gate/a/1', 'gate/a/2']
    >>> round(sum(history.records[-1][f"gate/a/{e}"] for e in range(3)), 6)
    1.0
    """

    def __init__(self, x: Tensor | np.ndarray, every_epoch: bool = True) -> None:
        x = torch.as_tensor(x, dtype=torch.float32)
        if x.ndim != 2 or len(x) == 0:
            raise ValueError(
                f"GateMonitor: x must be a non-empty (rows, features) batch, got {tuple(x.shape)}"
            )
        self.x, self.every_epoch = x, bool(every_epoch)
        self.last: dict[str, list[float]] = {}

    def on_fit_start(self, state: FitState) -> None:
        if not callable(getattr(state.model, "gate_weights", None)):
            raise TypeError(
                f"GateMonitor: {type(state.model).__name__} has no gate_weights(x) method; "
                "monitor a gated model (MMoE, CGC, PLE, DSelectK)"
            )
        width = getattr(state.model, "in_features", None)
        if isinstance(width, int) and self.x.shape[1] != width:
            raise ValueError(
                f"GateMonitor: x has {self.x.shape[1]} features, the model reads {width}"
            )
        try:  # the probe's first reading, before any step: a probe the gates cannot read
            self.weights(state.model)
        except (RuntimeError, ValueError) as error:
            raise ValueError(
                f"GateMonitor: the model's gates cannot read x of shape {tuple(self.x.shape)}: "
                f"{error}"
            ) from error

    def weights(self, model: torch.nn.Module) -> dict[str, list[float]]:
        """Task (or PLE's ``shared@<level>``) -> mean gate weight per expert over the rows of
        :attr:`x`."""
        param = next(model.parameters())
        dtype = param.dtype if param.is_floating_point() else self.x.dtype
        was_training = model.training
        model.eval()
        shared = getattr(model, "shared_gate_weights", None)
        try:
            with torch.no_grad():  # the model's device and dtype (a float64 model reads float64)
                x = self.x.to(param.device, dtype)
                gates = dict(model.gate_weights(x))
                if callable(shared):
                    gates.update(shared(x))
        finally:
            model.train(was_training)
        return {task: w.mean(dim=0).tolist() for task, w in gates.items()}

    def _record(self, state: FitState, record: dict[str, float]) -> None:
        self.last = self.weights(state.model)
        for task, means in self.last.items():
            for expert, value in enumerate(means):
                record[f"{PREFIX}{task}/{expert}"] = float(value)

    def on_epoch_end(self, state: FitState, record: dict[str, float]) -> None:
        if self.every_epoch:
            self._record(state, record)

    def on_fit_end(self, state: FitState, history: History) -> None:
        if not self.every_epoch and history.records:
            self._record(state, history.records[-1])

    @staticmethod
    def frame(history: History) -> pd.DataFrame:
        """The recorded gate weights, tidy: ``epoch, task, expert, weight``."""
        rows = [
            {
                "epoch": record["epoch"],
                "task": task,
                "expert": int(column.rsplit("/", 1)[1]),
                "weight": record[column],
            }
            for record in history.records
            for task, columns in gate_columns(record).items()
            for column in columns
        ]
        return pd.DataFrame(rows, columns=["epoch", "task", "expert", "weight"])
