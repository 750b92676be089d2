"""What a task is: its name, kind, output size, loss and metrics."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from ._checks import as_int

TaskKind = Literal["regression", "binary", "multiclass", "multilabel"]
KINDS: tuple[str, ...] = get_args(TaskKind)

DEFAULT_METRICS: dict[str, tuple[str, ...]] = {
    "regression": ("mse", "mae"),
    "binary": ("accuracy", "f1", "auc"),
    "multiclass": ("accuracy", "macro_f1"),
    "multilabel": ("accuracy", "macro_f1"),
}

# The task kinds each metric of ``polytask.evaluation.METRICS`` scores (the registry has no
# notion of kind; a test keeps the two in step). MSE and MAE read regression outputs; the
# others read logits as decisions or scores: ``f1`` scores one binary output, ``auc`` one
# score per label (scikit-learn's AUC refuses the logits of a multiclass head).
METRIC_KINDS: dict[str, tuple[str, ...]] = {
    "mse": ("regression",),
    "mae": ("regression",),
    "accuracy": ("binary", "multiclass", "multilabel"),
    "f1": ("binary",),
    "macro_f1": ("binary", "multiclass", "multilabel"),
    "auc": ("binary", "multilabel"),
}

LossFn = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Task:
    """One prediction task of a multi-task model.

    Parameters
    ----------
    name
        The task's name; routes the task to its head and its target column.
    kind
        ``"regression"``, ``"binary"``, ``"multiclass"`` or ``"multilabel"``.
    size
        Output width: targets per row for regression, classes for multiclass, labels for
        multilabel: a positive integer (a numpy integer is read as an ``int``; bools and floats
        are refused). Binary tasks have size 1.
    loss
        ``loss(output, target) -> scalar`` averaged over the batch. Defaults by kind: MSE;
        BCE-with-logits; cross-entropy; BCE-with-logits per label.
    metrics
        Metric names evaluated on held-out data (see ``polytask.evaluation``), each one that
        applies to the task's kind (:data:`METRIC_KINDS`). Defaults by kind.
    allow_missing
        Opt in to partial labels: a NaN target (regression, binary, multilabel) or ``-1``
        (multiclass) marks a row without a label for this task. Losses and metrics skip such
        rows; a batch without any label for the task leaves it out of that step. A multilabel
        target may miss single labels (``[1, nan, 0]``): losses and metrics skip each missing
        label, never reading it as a negative. Without the opt-in a NaN target is an error.

    Examples
    --------
    >>> Task("price").kind
    'regression'
    >>> Task("topic", kind="multiclass", size=3).metrics
    ('accuracy', 'macro_f1')
    """

    name: str
    kind: TaskKind = "regression"
    size: int = 1
    loss: LossFn | None = field(default=None, compare=False)
    metrics: tuple[str, ...] = ()
    allow_missing: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"a task needs a non-empty string name, got {self.name!r}")
        if self.kind not in KINDS:
            raise ValueError(f"task {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        object.__setattr__(self, "size", as_int(self.size, f"task {self.name!r}: size"))
        if self.kind == "binary" and self.size != 1:
            raise ValueError(f"task {self.name!r}: a binary task has size 1, got {self.size}")
        if self.kind == "multiclass" and self.size < 2:
            raise ValueError(f"task {self.name!r}: a multiclass task needs size >= 2 classes")
        if isinstance(self.metrics, str):
            raise ValueError(
                f"task {self.name!r}: metrics must be a sequence of names, got the string "
                f"{self.metrics!r}; write ({self.metrics!r},)"
            )
        object.__setattr__(self, "metrics", tuple(self.metrics) or DEFAULT_METRICS[self.kind])
        if "f1" in self.metrics and self.kind != "binary":
            raise ValueError(
                f"task {self.name!r}: the metric 'f1' scores one binary output; a "
                f"{self.kind} task takes 'macro_f1' (the mean F1 over its "
                f"{'labels' if self.kind == 'multilabel' else 'classes'})"
            )
        for metric in self.metrics:
            if metric not in METRIC_KINDS:
                raise ValueError(
                    f"task {self.name!r}: unknown metric {metric!r}; known metrics: "
                    f"{sorted(METRIC_KINDS)}"
                )
            if self.kind not in METRIC_KINDS[metric]:
                applicable = [name for name, kinds in METRIC_KINDS.items() if self.kind in kinds]
                raise ValueError(
                    f"task {self.name!r}: the metric {metric!r} does not apply to a {self.kind} "
                    f"task; a {self.kind} task takes {applicable}"
                )

    # -- shapes -------------------------------------------------------------------------------
    @property
    def output_shape(self) -> tuple[int, ...]:
        """Per-row shape of the head's output after :meth:`output`."""
        return () if self.size == 1 and self.kind != "multiclass" else (self.size,)

    @property
    def target_shape(self) -> tuple[int, ...]:
        """Per-row shape of the prepared target."""
        return () if self.kind == "multiclass" else self.output_shape

    def output(self, raw: Tensor) -> Tensor:
        """Bring a head's raw output ``(batch, size)`` to :attr:`output_shape` per row."""
        return raw.reshape(raw.shape[0], *self.output_shape)

    # -- targets ------------------------------------------------------------------------------
    def prepare_target(self, target: Tensor, split: str = "data") -> Tensor:
        """Validate a target column and convert it to the dtype and shape the loss expects.

        Raises a ``ValueError`` naming the task, the split and the expected shape or range.
        """
        where = f"task {self.name!r}, targets of the {split} split"
        n = target.shape[0] if target.ndim else 0
        expected = (n, *self.target_shape)
        if target.ndim == 0:
            raise ValueError(f"{where}: got a scalar; expected shape {expected}")
        if tuple(target.shape) != expected:
            if self.target_shape == () and target.ndim == 2 and target.shape[1] == 1:
                target = target[:, 0]
            else:
                raise ValueError(
                    f"{where}: shape {tuple(target.shape)}, expected {expected} "
                    f"for a {self.kind} task of size {self.size}"
                )
        if target.is_floating_point() and not bool(torch.isfinite(target).all()):
            bad = int((~torch.isfinite(target)).nonzero()[0, 0])
            hint = "" if self.allow_missing else "; for missing labels use allow_missing=True"
            raise ValueError(f"{where}: non-finite value (NaN or inf) at row {bad}{hint}")
        if self.kind == "regression":  # float64 kept: a fit casts to the model's dtype
            return target if target.dtype == torch.float64 else target.to(torch.float32)
        if self.kind == "multiclass":
            if target.is_floating_point() and not bool((target == target.round()).all()):
                raise ValueError(f"{where}: class labels must be integers in [0, {self.size})")
            lo, hi = int(target.min()), int(target.max())
            if lo < 0 or hi >= self.size:
                raise ValueError(
                    f"{where}: class labels in [{lo}, {hi}], expected integers in [0, {self.size})"
                )
            return target.to(torch.long)
        if not bool(((target == 0) | (target == 1)).all()):
            others = target[(target != 0) & (target != 1)].unique()[:5].tolist()
            hint = (
                "; a missing label is NaN (allow_missing=True), not -1"
                if self.allow_missing and -1 in others
                else ""
            )
            raise ValueError(f"{where}: {self.kind} labels must be 0 or 1, got {others}{hint}")
        return target.to(torch.float32)

    def labelled(self, target: Tensor, mask: Tensor | None = None) -> Tensor | None:
        """Which rows carry a label (``None``: all of them). Missing labels are NaN, or -1 for
        multiclass, when :attr:`allow_missing` is set; ``mask`` marks labelled rows explicitly."""
        known = None if mask is None else torch.as_tensor(mask, dtype=torch.bool)
        if self.allow_missing:
            missing = target == -1 if self.kind == "multiclass" else torch.isnan(target)
            while missing.ndim > 1:  # a multilabel row counts as labelled if any label is
                missing = missing.all(dim=-1)
            known = ~missing if known is None else known & ~missing
        return known

    def prepare(
        self, target: Tensor, split: str = "data", mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """:meth:`prepare_target` that honours missing labels.

        Returns the prepared target and the labelled-row mask (``None``: every row is
        labelled). Unlabelled rows are filled with a valid placeholder. A multilabel row counts
        as labelled when at least one of its labels is known; its missing labels stay NaN in the
        prepared target, and :meth:`compute_loss` and the metrics leave them out label by label
        (a missing label is never read as a negative).

        Raises
        ------
        ValueError
            For invalid targets (see :meth:`prepare_target`), a mask of the wrong length, or
            partially labelled multilabel rows with a custom :attr:`loss`, which cannot be told
            which labels are missing.
        """
        known = self.labelled(target, mask)
        if known is None:
            return self.prepare_target(target, split), None
        if len(known) != len(target):
            raise ValueError(
                f"task {self.name!r}, {split} split: label mask has {len(known)} rows, "
                f"targets have {len(target)}"
            )
        fill = known.reshape(-1, *([1] * (target.ndim - 1)))
        filled = torch.where(fill, target, torch.zeros((), dtype=target.dtype))
        if self.kind == "multilabel" and self.allow_missing and filled.is_floating_point():
            missing = torch.isnan(filled)  # only in labelled rows: the others are filled
            if bool(missing.any()):
                if self.loss is not None:
                    row = int(missing.nonzero()[0, 0])
                    raise ValueError(
                        f"task {self.name!r}, {split} split: row {row} has some labels missing, "
                        "and a custom loss cannot be told which; drop the custom loss (the "
                        "default BCE masks each label) or mark whole rows as unlabelled"
                    )
                prepared = self.prepare_target(filled.masked_fill(missing, 0.0), split)
                return prepared.masked_fill(missing, float("nan")), known
        return self.prepare_target(filled, split), known

    # -- loss ---------------------------------------------------------------------------------
    def compute_loss(self, output: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        """The mean loss of this task over a batch (over its labelled rows if ``mask``).

        ``mask`` must mark at least one row; the trainer leaves a task without labels in a
        batch out of that step, so its loss is never NaN. The default multilabel loss is the
        BCE averaged over the known labels only: a NaN label (see :meth:`prepare`) is left
        out, element by element, without a device-to-host synchronisation.
        """
        if self.loss is None and self.kind == "multilabel":
            return self._multilabel_loss(output, target, mask)
        if mask is None:
            if self.loss is not None:
                return self.loss(output, target)
            if self.kind == "regression":
                return F.mse_loss(output, target)
            if self.kind == "multiclass":
                return F.cross_entropy(output, target)
            return F.binary_cross_entropy_with_logits(output, target)
        if self.loss is not None:
            return self.loss(output[mask], target[mask])
        if self.kind == "regression":
            rows = (output - target).square()
        elif self.kind == "multiclass":
            rows = F.cross_entropy(output, target, reduction="none")
        else:
            rows = F.binary_cross_entropy_with_logits(output, target, reduction="none")
        if rows.ndim > 1:
            rows = rows.flatten(1).mean(dim=1)
        weights = mask.to(rows.dtype)
        return (rows * weights).sum() / weights.sum()

    @staticmethod
    def _multilabel_loss(output: Tensor, target: Tensor, mask: Tensor | None) -> Tensor:
        """BCE-with-logits averaged over the known labels of the labelled rows."""
        known = ~torch.isnan(target)
        if mask is not None:
            known = known & mask.reshape(-1, *([1] * (target.ndim - 1)))
        # NaN targets are zeroed before the loss: a NaN would reach the gradient even at weight 0
        elements = F.binary_cross_entropy_with_logits(
            output, torch.nan_to_num(target, nan=0.0), reduction="none"
        )
        weights = known.to(elements.dtype)
        return (elements * weights).sum() / weights.sum()


def regression_tasks(names: list[str] | tuple[str, ...]) -> list[Task]:
    """One single-output regression task per name.

    Examples
    --------
    >>> [t.name for t in regression_tasks(["a", "b"])]
    ['a', 'b']
    """
    return [Task(name) for name in names]
