"""polytask's loss combiners and structured terms for Keras 3 (optional extra ``keras``).

Two ways in:

- Column losses for ``model.compile(loss=...)``: each takes ``y_true`` and ``y_pred`` of shape
  ``(batch, T)``, one column per task (a single ``Dense(T)`` output over T target columns),
  computes each column's mean squared error and combines the T values like its PyTorch
  namesake (:class:`Mean`, :class:`GeometricMean`, :class:`Weighted`).
- Multi-output models (dict outputs): :func:`compile_multitask` takes a dict of per-output
  losses, a combiner (``"sum"``, ``"mean"``, ``"geometric"``, :class:`Weighted`, or the
  learnable :class:`Uncertainty`) and structured terms (:func:`consistency`,
  :func:`hierarchical`), and returns a compiled model ready for ``fit``. Keras's own
  ``compile(loss=dict, loss_weights=...)`` can only sum the per-output losses with fixed floats:
  a geometric mean, weights learned during training or a term that ties two outputs need every
  output's loss at once, which the returned model's ``compute_loss`` provides.

Written with ``keras.ops`` only, so it runs on any Keras backend; tested on the torch backend.

Importing this module selects Keras's torch backend unless ``KERAS_BACKEND`` is already set.

Examples
--------
>>> from polytask import keras as ptk  # doctest: +SKIP
>>> model.compile(optimizer="adam", loss=ptk.GeometricMean())  # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "torch")

from .objectives._terms import _check_weight

try:
    import keras
    from keras import ops
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError("polytask.keras needs Keras 3: pip install 'polytask[keras]'") from error

__all__ = [
    "GeometricMean",
    "Mean",
    "MultiTaskModel",
    "Uncertainty",
    "Weighted",
    "compile_multitask",
    "consistency",
    "hierarchical",
    "task_mse",
]

# Smallest positive normal float32: the floor that keeps log finite when a task's MSE is 0.
_TINY = 1.1754943508222875e-38


def task_mse(y_true: Any, y_pred: Any) -> Any:
    """Each column's mean squared error over the batch: shape ``(T,)``."""
    y_true = ops.cast(y_true, y_pred.dtype)
    if len(y_true.shape) == 1:
        y_true = ops.expand_dims(y_true, -1)
    return ops.mean(ops.square(y_pred - y_true), axis=0)


class _ColumnLoss(keras.losses.Loss):
    def __init__(self, name: str, reduction: str = "sum_over_batch_size", **kwargs: Any) -> None:
        super().__init__(name=name, reduction=reduction, **kwargs)

    def combine(self, losses: Any) -> Any:
        raise NotImplementedError

    def call(self, y_true: Any, y_pred: Any) -> Any:
        return self.combine(task_mse(y_true, y_pred))


class Mean(_ColumnLoss):
    """Mean over tasks of each task's MSE (the plain MSE over all columns)."""

    def __init__(self, name: str = "polytask_mean", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)

    def combine(self, losses: Any) -> Any:
        return ops.mean(losses)


class GeometricMean(_ColumnLoss):
    """``exp(mean_t(log(mean_batch((y_pred_t - y_true_t)^2))))``, the closed-form
    heteroscedastic loss; a task whose MSE is 0 is floored as in :class:`polytask.GeometricMean`.
    """

    def __init__(self, name: str = "polytask_geometric_mean", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)

    def combine(self, losses: Any) -> Any:
        return ops.exp(ops.mean(ops.log(ops.maximum(losses, _TINY))))


class Weighted(_ColumnLoss):
    """``sum_t w_t * MSE_t`` with one fixed, finite, non-negative weight per column."""

    def __init__(
        self, weights: Sequence[float], name: str = "polytask_weighted", **kwargs: Any
    ) -> None:
        values = [float(w) for w in weights]
        if not values or any(not math.isfinite(w) or w < 0 for w in values):
            raise ValueError(f"Weighted: weights must be finite and non-negative, got {values}")
        super().__init__(name=name, **kwargs)
        self.weights = values

    def combine(self, losses: Any) -> Any:
        if losses.shape[-1] != len(self.weights):
            raise ValueError(
                f"Weighted: {len(self.weights)} weights for {losses.shape[-1]} output columns"
            )
        return ops.sum(ops.convert_to_tensor(self.weights, dtype=losses.dtype) * losses)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "weights": self.weights}


class Uncertainty(keras.layers.Layer):
    """Learned uncertainty weighting (Kendall, Gal and Cipolla 2018) with its own trainable
    log-variances ``s_t`` (one per task, starting at 0): ``sum_t (0.5 exp(-s_t) L_t + 0.5 s_t)``,
    as :class:`polytask.Uncertainty`. Give it to :func:`compile_multitask`, whose model tracks
    and trains its variables with the network's.
    """

    def __init__(self, n_tasks: int, name: str = "polytask_uncertainty", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        if n_tasks < 1:
            raise ValueError(f"Uncertainty: needs at least one task, got {n_tasks}")
        self.n_tasks = n_tasks
        self.log_var = self.add_weight(shape=(n_tasks,), initializer="zeros", name="log_var")

    def combine(self, losses: Any) -> Any:
        s = ops.cast(self.log_var, losses.dtype)
        return ops.sum(0.5 * ops.exp(-s) * losses + 0.5 * s)

    def call(self, losses: Any) -> Any:
        return self.combine(losses)


def _probabilities(output: Any, from_logits: bool) -> Any:
    """What an output predicts: itself (Keras outputs usually end in their activation), or
    the sigmoid (one column) / softmax (several) of logits."""
    if not from_logits:
        return output
    return ops.sigmoid(output) if output.shape[-1] == 1 else ops.softmax(output, axis=-1)


Term = Callable[[Mapping[str, Any]], Any]


def consistency(
    pairs: Sequence[tuple[str, str] | tuple[str, str, Callable | None, Callable | None]],
    weight: float = 1.0,
    distance: str | Callable[[Any, Any], Any] = "absolute",
    from_logits: bool = False,
) -> Term:
    """``weight * sum over pairs of mean_rows(distance(f(out_a), g(out_b)))`` on a dict of
    outputs, as :class:`polytask.Consistency` (absolute or squared differences summed over the
    columns; a pair may carry its own ``f`` and ``g``)."""
    checked = []
    for pair in pairs:
        if len(pair) not in (2, 4) or pair[0] == pair[1]:
            raise ValueError(f"consistency: a pair names two different outputs, got {pair}")
        checked.append(tuple(pair) if len(pair) == 4 else (*pair, None, None))
    if not checked:
        raise ValueError("consistency: needs at least one pair of outputs")
    if not callable(distance) and distance not in ("absolute", "squared"):
        raise ValueError("consistency: distance must be absolute, squared or a callable")
    weight = _check_weight("consistency", weight)

    def term(outputs: Mapping[str, Any]) -> Any:
        total = 0.0
        for a, b, f, g in checked:
            va = f(outputs[a]) if f else _probabilities(outputs[a], from_logits)
            vb = g(outputs[b]) if g else _probabilities(outputs[b], from_logits)
            if tuple(va.shape) != tuple(vb.shape):
                raise ValueError(
                    f"consistency: pair ({a!r}, {b!r}) gives shapes {tuple(va.shape)} and "
                    f"{tuple(vb.shape)}; they must match"
                )
            if callable(distance):
                rows = distance(va, vb)
            else:
                gap = ops.abs(va - vb) if distance == "absolute" else ops.square(va - vb)
                rows = ops.sum(gap, axis=-1)
            total = total + ops.mean(rows)
        return weight * total

    term.outputs = tuple(dict.fromkeys(n for a, b, _, _ in checked for n in (a, b)))
    return term


def hierarchical(
    fine: str,
    coarse: str,
    mapping: Mapping[int, int] | Sequence[int],
    weight: float = 1.0,
    penalty: str = "kl",
    from_logits: bool = False,
) -> Term:
    """The coarse output's class probabilities must match the fine output's summed through
    ``mapping`` (fine class -> coarse class), as :class:`polytask.Hierarchical`: ``KL(P_fine M ||
    P_coarse)`` or the L1 distance, averaged over rows. A one-column output is binary."""
    table = dict(mapping) if isinstance(mapping, Mapping) else dict(enumerate(mapping))
    if penalty not in ("kl", "absolute"):
        raise ValueError(f"hierarchical: penalty must be 'kl' or 'absolute', got {penalty!r}")
    n_fine = len(table)
    if sorted(table) != list(range(n_fine)):
        raise ValueError(f"hierarchical: fine classes must be 0..{n_fine - 1}, got {sorted(table)}")
    n_coarse = max(table.values()) + 1
    empty = sorted(set(range(n_coarse)) - set(table.values()))
    if min(table.values()) < 0 or empty:
        raise ValueError(f"hierarchical: coarse classes must be 0..K-1, each used; missing {empty}")
    weight = _check_weight("hierarchical", weight)
    matrix = [[1.0 if table[f] == c else 0.0 for c in range(n_coarse)] for f in range(n_fine)]

    def classes(output: Any) -> Any:
        p = _probabilities(output, from_logits)
        return ops.concatenate([1 - p, p], axis=-1) if p.shape[-1] == 1 else p

    def term(outputs: Mapping[str, Any]) -> Any:
        p_fine, q = classes(outputs[fine]), classes(outputs[coarse])
        if p_fine.shape[-1] != n_fine or q.shape[-1] != n_coarse:
            raise ValueError(
                f"hierarchical: the mapping needs {n_fine} fine and {n_coarse} coarse classes, "
                f"the outputs have {p_fine.shape[-1]} and {q.shape[-1]}"
            )
        p = ops.matmul(p_fine, ops.convert_to_tensor(matrix, dtype=p_fine.dtype))
        if penalty == "absolute":
            return weight * ops.mean(ops.sum(ops.abs(p - q), axis=-1))
        log_p = ops.log(ops.maximum(p, _TINY))
        log_q = ops.log(ops.maximum(q, _TINY))
        return weight * ops.mean(ops.sum(p * (log_p - log_q), axis=-1))

    term.outputs = (fine, coarse)
    return term


class _Sum:
    def combine(self, losses: Any) -> Any:
        return ops.sum(losses)


COMBINERS: dict[str, Callable[[], Any]] = {"sum": _Sum, "mean": Mean, "geometric": GeometricMean}


class MultiTaskModel(keras.Model):
    """A multi-output model whose loss is a combination of its per-output losses plus
    structured terms (made by :func:`compile_multitask`). ``call`` is the wrapped model's."""

    def __init__(
        self,
        model: keras.Model,
        losses: Mapping[str, Any],
        combiner: Any,
        terms: Sequence[Term] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.model = model
        self.names = tuple(losses)
        self.task_losses = {name: keras.losses.get(loss) for name, loss in losses.items()}
        self.combiner = combiner
        self.terms = list(terms)
        self.built = model.built  # nothing of its own to build: the wrapped model is built

    def call(self, inputs: Any, training: bool = False) -> Any:
        return self.model(inputs, training=training)

    def task_loss_values(self, y: Mapping[str, Any], y_pred: Mapping[str, Any]) -> Any:
        """Each output's loss, stacked in the order of ``losses``: shape ``(T,)``."""
        return ops.stack([ops.mean(self.task_losses[n](y[n], y_pred[n])) for n in self.names])

    def compute_loss(
        self,
        x: Any = None,
        y: Any = None,
        y_pred: Any = None,
        sample_weight: Any = None,
        training: bool = True,
    ) -> Any:
        total = self.combiner.combine(self.task_loss_values(y, y_pred))
        for term in self.terms:
            total = total + term(y_pred)
        if self.losses:  # regularisation losses of the layers
            total = total + ops.sum(ops.stack(self.losses))
        return total


def compile_multitask(
    model: keras.Model,
    losses: Mapping[str, Any],
    combiner: str | Any = "sum",
    terms: Sequence[Term] = (),
    optimizer: Any = "adam",
    **compile_options: Any,
) -> MultiTaskModel:
    """A compiled model that trains ``model`` (dict outputs) on a combination of per-output
    losses plus structured terms. The Keras user writes no tensor code.

    Parameters
    ----------
    model
        A functional model whose outputs are a dict, output name -> tensor.
    losses
        Output name -> a Keras loss (name, function or ``Loss``), one per output.
    combiner
        ``"sum"`` (Keras's default), ``"mean"``, ``"geometric"``, a :class:`Weighted` (one weight
        per output, in the order of ``losses``) or an :class:`Uncertainty` (learned).
    terms
        :func:`consistency` and :func:`hierarchical` terms on the outputs.
    optimizer, compile_options
        Passed to ``compile`` (``metrics`` as a dict per output, for instance).

    Examples
    --------
    >>> net = compile_multitask(model, {"site": "sparse_categorical_crossentropy",
    ...                                 "sentiment": "binary_crossentropy"},
    ...                         combiner=Uncertainty(2),
    ...                         terms=[consistency([("sentiment", "other")])])  # doctest: +SKIP
    >>> net.fit(x, {"site": y_site, "sentiment": y_sentiment})  # doctest: +SKIP
    """
    outputs = model.output if isinstance(model.output, Mapping) else None
    if outputs is None:
        raise ValueError("compile_multitask: the model's outputs must be a dict of named tensors")
    unknown = sorted(set(losses) - set(outputs))
    missing = sorted(set(outputs) - set(losses))
    if unknown or missing:
        raise ValueError(
            f"compile_multitask: losses for unknown outputs {unknown}, none for {missing}; "
            f"the outputs are {sorted(outputs)}"
        )
    for term in terms:
        strangers = sorted(set(getattr(term, "outputs", ())) - set(outputs))
        if strangers:
            raise ValueError(f"compile_multitask: a term reads unknown outputs {strangers}")
    if isinstance(combiner, str):
        if combiner not in COMBINERS:
            raise ValueError(f"compile_multitask: combiner must be one of {sorted(COMBINERS)}")
        combiner = COMBINERS[combiner]()
    if isinstance(combiner, Weighted) and len(combiner.weights) != len(losses):
        raise ValueError(f"Weighted: {len(combiner.weights)} weights for {len(losses)} outputs")
    if isinstance(combiner, Uncertainty) and combiner.n_tasks != len(losses):
        raise ValueError(f"Uncertainty: {combiner.n_tasks} tasks for {len(losses)} outputs")
    wrapped = MultiTaskModel(model, losses, combiner, terms)
    wrapped.compile(optimizer=optimizer, **compile_options)
    return wrapped
