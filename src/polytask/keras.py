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

The model that :func:`compile_multitask` returns saves to a ``.keras`` file and loads with
``keras.saving.load_model`` (combiner, learned weights, terms and optimizer state included);
its ``fit`` history holds ``<output>_loss`` and ``<output>_weight`` per epoch (``val_...`` with
validation data); ``sample_weight`` weights each output's loss per example, as in Keras.

Written with ``keras.ops`` only, so it runs on any Keras backend; tested on the torch backend.

Importing this module selects Keras's torch backend unless ``KERAS_BACKEND`` is already set.

Examples
--------
>>> import keras
>>> from polytask import keras as ptk
>>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])  # T = 3 columns
>>> model.compile(optimizer="adam", loss=ptk.GeometricMean())
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "torch")

from ._checks import as_int
from .objectives._mapping import check_mapping
from .objectives._terms import _check_weight

try:
    import keras
    from keras import ops
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError("polytask.keras needs Keras 3: pip install 'polytask[keras]'") from error

__all__ = [
    "Consistency",
    "GeometricMean",
    "Hierarchical",
    "Mean",
    "MultiTaskModel",
    "Uncertainty",
    "Weighted",
    "compile_multitask",
    "consistency",
    "hierarchical",
    "task_mse",
]

# The smallest positive normal number of each float type: the floor that keeps log finite when
# a task's MSE (or a probability) is 0; float32's would be 0 in float16 (0 * log 0 = NaN).
_TINY = {
    "float16": 6.103515625e-05,
    "bfloat16": 1.1754943508222875e-38,
    "float32": 1.1754943508222875e-38,
    "float64": 2.2250738585072014e-308,
}


def _tiny(x: Any) -> float:
    return _TINY.get(keras.backend.standardize_dtype(x.dtype), _TINY["float32"])


# Every class a saved model names is registered under "polytask>", so load_model finds it.
_serializable = keras.saving.register_keras_serializable(package="polytask")


def task_mse(y_true: Any, y_pred: Any, sample_weight: Any = None) -> Any:
    """Each column's mean squared error over the batch: shape ``(T,)``; with ``sample_weight``
    (one weight per row) ``sum_i w_i e_it^2 / n``, Keras's weighting of a per-example loss."""
    y_pred = ops.convert_to_tensor(y_pred)
    if not keras.backend.is_float_dtype(y_pred.dtype):
        y_pred = ops.cast(y_pred, keras.backend.floatx())
    y_true = ops.convert_to_tensor(y_true)
    given = tuple(y_true.shape)
    y_true = ops.cast(y_true, y_pred.dtype)
    if len(y_pred.shape) == 1:  # one output column given as (batch,)
        y_pred = ops.expand_dims(y_pred, -1)
    if len(y_true.shape) == 1:
        y_true = ops.expand_dims(y_true, -1)
    if len(y_true.shape) != len(y_pred.shape) or any(
        a is not None and b is not None and a != b
        for a, b in zip(y_true.shape, y_pred.shape, strict=True)
    ):  # broadcasting (batch,) or (batch, 1) against (batch, T) would return a wrong number
        raise ValueError(
            f"polytask.keras: targets of shape {given} against predictions of shape "
            f"{tuple(y_pred.shape)}; expected one target column per output column, "
            f"shape {tuple(y_pred.shape)}"
        )
    squares = ops.square(y_pred - y_true)
    if sample_weight is None:
        return ops.mean(squares, axis=0)
    weights = ops.reshape(ops.cast(sample_weight, squares.dtype), (-1,))
    rows = (weights.shape[0], squares.shape[0])
    if None not in rows and rows[0] != rows[1]:
        raise ValueError(
            f"polytask.keras: sample_weight of shape {tuple(ops.shape(sample_weight))} for "
            f"{rows[1]} rows; expected one weight per row"
        )
    n = ops.cast(ops.shape(squares)[0], squares.dtype)
    return ops.sum(squares * ops.expand_dims(weights, -1), axis=0) / n


# --- combiners -------------------------------------------------------------------------------
# A combiner has ``combine(losses) -> scalar`` and ``task_weights(losses) -> (T,)``, the
# derivative of the combined loss with respect to each task's loss: the weight a task
# effectively gets in the gradient, which ``fit`` logs as ``<output>_weight``.


class _ColumnLoss(keras.losses.Loss):
    """A combination of the columns' MSEs over the batch. Not a per-example loss, so Keras's
    ``reduction`` does not apply; ``sample_weight`` and a Keras mask weigh the rows inside
    each column's MSE as Keras weighs a per-example loss (``sum_i w_i l_i / n``; masked rows
    0, the others scaled by ``n / valid``), before the columns are combined."""

    def __init__(self, name: str, reduction: str = "sum_over_batch_size", **kwargs: Any) -> None:
        if reduction != "sum_over_batch_size":
            raise ValueError(
                f"{type(self).__name__}: reduction={reduction!r} does not apply: the loss "
                "combines each column's mean over the batch (weigh rows with sample_weight)"
            )
        super().__init__(name=name, reduction=reduction, **kwargs)

    def combine(self, losses: Any) -> Any:
        raise NotImplementedError

    def task_weights(self, losses: Any) -> Any:
        raise NotImplementedError

    def call(self, y_true: Any, y_pred: Any) -> Any:
        return self.combine(task_mse(y_true, y_pred))

    def __call__(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> Any:
        mask = keras.src.backend.get_keras_mask(y_pred)  # Keras reads it here too
        y_pred = ops.convert_to_tensor(y_pred, dtype=self.dtype)
        weights = None if sample_weight is None else ops.convert_to_tensor(sample_weight)
        if mask is not None:
            rows = ops.cast(ops.reshape(mask, (-1,)), y_pred.dtype)
            rows = rows * ops.divide_no_nan(ops.cast(ops.size(rows), rows.dtype), ops.sum(rows))
            weights = rows if weights is None else ops.reshape(weights, (-1,)) * rows
        return self.combine(task_mse(y_true, y_pred, weights))


@_serializable
class Mean(_ColumnLoss):
    """Mean over tasks of each task's MSE (the plain MSE over all columns); each task's
    effective weight is ``1/T``."""

    def __init__(self, name: str = "polytask_mean", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)

    def combine(self, losses: Any) -> Any:
        return ops.mean(losses)

    def task_weights(self, losses: Any) -> Any:
        return ops.ones_like(losses) / losses.shape[-1]


@_serializable
class GeometricMean(_ColumnLoss):
    """``exp(mean_t(log(mean_batch((y_pred_t - y_true_t)^2))))``, the closed-form
    heteroscedastic loss; a task whose MSE is 0 is floored as in :class:`polytask.GeometricMean`.
    Task ``t``'s effective weight is ``G / (T L_t)`` (``G`` the geometric mean), 0 when floored.
    """

    def __init__(self, name: str = "polytask_geometric_mean", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)

    def combine(self, losses: Any) -> Any:
        return ops.exp(ops.mean(ops.log(ops.maximum(losses, _tiny(losses)))))

    def task_weights(self, losses: Any) -> Any:
        floored = ops.maximum(losses, _tiny(losses))
        weights = self.combine(losses) / (losses.shape[-1] * floored)
        return ops.where(losses > _tiny(losses), weights, ops.zeros_like(losses))


@_serializable
class Weighted(_ColumnLoss):
    """``sum_t w_t * MSE_t`` with one fixed, finite, non-negative weight per column."""

    def __init__(
        self, weights: Sequence[float], name: str = "polytask_weighted", **kwargs: Any
    ) -> None:
        if isinstance(weights, str | Mapping):
            raise TypeError(
                "Weighted: weights must be one number per output column, in column order (the "
                f"columns have no names here), got {type(weights).__name__} {weights!r}; "
                "compile_multitask's combiner takes a mapping output -> weight"
            )
        values = [float(w) for w in weights]
        if not values or any(not math.isfinite(w) or w < 0 for w in values):
            raise ValueError(f"Weighted: weights must be finite and non-negative, got {values}")
        if not any(values):
            raise ValueError(f"Weighted: every weight is 0 ({values}), so nothing would train")
        super().__init__(name=name, **kwargs)
        self.weights = values

    def _tensor(self, losses: Any) -> Any:
        if losses.shape[-1] != len(self.weights):
            raise ValueError(
                f"Weighted: {len(self.weights)} weights for {losses.shape[-1]} output columns"
            )
        return ops.convert_to_tensor(self.weights, dtype=losses.dtype)

    def combine(self, losses: Any) -> Any:
        return ops.sum(self._tensor(losses) * losses)

    def task_weights(self, losses: Any) -> Any:
        return self._tensor(losses)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "weights": self.weights}


@_serializable
class _Sum:
    """``sum_t L_t``, Keras's own combination of per-output losses: every weight is 1."""

    def combine(self, losses: Any) -> Any:
        return ops.sum(losses)

    def task_weights(self, losses: Any) -> Any:
        return ops.ones_like(losses)

    def get_config(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> _Sum:
        return cls(**config)


@_serializable
class Uncertainty(keras.layers.Layer):
    """Learned uncertainty weighting (Kendall, Gal and Cipolla 2018) with its own trainable
    log-variances ``s_t`` (one per task, starting at 0): ``sum_t (0.5 exp(-s_t) L_t + 0.5 s_t)``,
    as :class:`polytask.Uncertainty`. Give it to :func:`compile_multitask`, whose model tracks,
    trains and saves its variables with the network's; task ``t``'s effective weight is
    ``0.5 exp(-s_t)``.

    Examples
    --------
    >>> combiner = Uncertainty(2)
    >>> keras.ops.convert_to_numpy(combiner.task_weights(keras.ops.ones(2))).tolist()
    [0.5, 0.5]
    """

    def __init__(self, n_tasks: int, name: str = "polytask_uncertainty", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.n_tasks = as_int(n_tasks, "Uncertainty: n_tasks")
        self.log_var = self.add_weight(shape=(self.n_tasks,), initializer="zeros", name="log_var")

    def combine(self, losses: Any) -> Any:
        s = ops.cast(self.log_var, losses.dtype)
        return ops.sum(0.5 * ops.exp(-s) * losses + 0.5 * s)

    def task_weights(self, losses: Any) -> Any:
        return 0.5 * ops.exp(-ops.cast(self.log_var, losses.dtype))

    def call(self, losses: Any) -> Any:
        return self.combine(losses)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "n_tasks": self.n_tasks}


# --- structured terms ------------------------------------------------------------------------
def _probabilities(output: Any, from_logits: bool) -> Any:
    """What an output predicts: itself (Keras outputs usually end in their activation), or
    the sigmoid (one column) / softmax (several) of logits."""
    if not from_logits:
        return output
    return ops.sigmoid(output) if output.shape[-1] == 1 else ops.softmax(output, axis=-1)


def _save_callable(owner: str, fn: Callable | None) -> Any:
    """``fn``'s Keras serialisation, refused at save time (not at load) when it cannot load."""
    if fn is None:
        return None
    config = keras.saving.serialize_keras_object(fn)
    try:  # lambdas load with safe_mode=False only, as in Keras; a closure never loads
        keras.saving.deserialize_keras_object(config, safe_mode=False)
    except Exception as error:
        raise TypeError(
            f"{owner}: {fn!r} cannot be saved in a .keras file ({error}); decorate it with "
            "@keras.saving.register_keras_serializable()"
        ) from error
    return config


def _load_callable(config: Any) -> Callable | None:
    return None if config is None else keras.saving.deserialize_keras_object(config)


Term = Callable[[Mapping[str, Any]], Any]
Pair = tuple[str, str] | tuple[str, str, Callable | None, Callable | None]


@_serializable
class Consistency:
    """``weight * sum over pairs of mean_rows(distance(f(out_a), g(out_b)))`` on a dict of
    outputs, as :class:`polytask.Consistency`; made by :func:`consistency` (same arguments).

    Saved with the model; a callable ``f``, ``g`` or ``distance`` must be registered with
    ``keras.saving.register_keras_serializable`` (a lambda loads with ``safe_mode=False``).
    """

    def __init__(
        self,
        pairs: Sequence[Pair],
        weight: float = 1.0,
        distance: str | Callable[[Any, Any], Any] = "absolute",
        from_logits: bool = False,
    ) -> None:
        checked = []
        for pair in pairs:
            pair = tuple(pair)  # a loaded config gives lists
            if len(pair) not in (2, 4) or pair[0] == pair[1]:
                raise ValueError(f"consistency: a pair names two different outputs, got {pair}")
            a, b, f, g = pair if len(pair) == 4 else (*pair, None, None)
            for fn in (f, g):
                if fn is not None and not callable(fn):
                    raise TypeError(
                        f"consistency: pair ({a!r}, {b!r}): f and g must be callable or None, "
                        f"got {fn!r}"
                    )
            checked.append((a, b, f, g))
        if not checked:
            raise ValueError("consistency: needs at least one pair of outputs")
        if not callable(distance) and distance not in ("absolute", "squared"):
            raise ValueError("consistency: distance must be absolute, squared or a callable")
        self.pairs = checked
        self.weight = _check_weight("consistency", weight)
        self.distance = distance
        self.from_logits = bool(from_logits)
        self.outputs = tuple(dict.fromkeys(n for a, b, _, _ in checked for n in (a, b)))

    def __call__(self, outputs: Mapping[str, Any]) -> Any:
        total = 0.0
        for a, b, f, g in self.pairs:
            va = f(outputs[a]) if f else _probabilities(outputs[a], self.from_logits)
            vb = g(outputs[b]) if g else _probabilities(outputs[b], self.from_logits)
            if tuple(va.shape) != tuple(vb.shape):
                raise ValueError(
                    f"consistency: pair ({a!r}, {b!r}) gives shapes {tuple(va.shape)} and "
                    f"{tuple(vb.shape)}; they must match"
                )
            if callable(self.distance):
                rows = self.distance(va, vb)
            else:
                gap = ops.abs(va - vb) if self.distance == "absolute" else ops.square(va - vb)
                rows = ops.sum(gap, axis=-1)
            total = total + ops.mean(rows)
        return self.weight * total

    def get_config(self) -> dict[str, Any]:
        owner = f"consistency({self.outputs})"
        return {
            "pairs": [
                [a, b, _save_callable(owner, f), _save_callable(owner, g)]
                for a, b, f, g in self.pairs
            ],
            "weight": self.weight,
            "distance": self.distance
            if isinstance(self.distance, str)
            else _save_callable(owner, self.distance),
            "from_logits": self.from_logits,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Consistency:
        config = dict(config)
        pairs = [(a, b, _load_callable(f), _load_callable(g)) for a, b, f, g in config.pop("pairs")]
        distance = config.pop("distance")
        if not isinstance(distance, str):
            distance = _load_callable(distance)
        return cls(pairs, distance=distance, **config)

    def __repr__(self) -> str:
        pairs = [(a, b) for a, b, _, _ in self.pairs]
        return f"consistency({pairs}, weight={self.weight}, distance={self.distance!r})"


def consistency(
    pairs: Sequence[Pair],
    weight: float = 1.0,
    distance: str | Callable[[Any, Any], Any] = "absolute",
    from_logits: bool = False,
) -> Consistency:
    """``weight * sum over pairs of mean_rows(distance(f(out_a), g(out_b)))`` on a dict of
    outputs, as :class:`polytask.Consistency` (absolute or squared differences summed over the
    columns; a pair may carry its own ``f`` and ``g``). With ``from_logits=True`` an output of
    one column is read through a sigmoid and one of several columns through a softmax (Keras
    outputs carry no task kind): a multilabel or regression output of several columns needs
    its own ``f`` / ``g`` instead.

    Examples
    --------
    >>> import numpy as np
    >>> term = consistency([("a", "b")], weight=0.5)
    >>> outputs = {"a": np.array([[0.2, 0.8]]), "b": np.array([[0.4, 0.6]])}
    >>> round(float(term(outputs)), 6)  # 0.5 * (|0.2 - 0.4| + |0.8 - 0.6|)
    0.2
    """
    return Consistency(pairs, weight, distance, from_logits)


def _classes(width: int) -> int:
    """Class count of an output of ``width`` columns: one column is a binary output."""
    return 2 if width == 1 else width


@_serializable
class Hierarchical:
    """The coarse output's class probabilities must match the fine output's summed through
    ``mapping`` (fine class -> coarse class), as :class:`polytask.Hierarchical`; made by
    :func:`hierarchical` (same arguments). Saved with the model."""

    def __init__(
        self,
        fine: str,
        coarse: str,
        mapping: Mapping[int, int] | Sequence[int],
        weight: float = 1.0,
        penalty: str = "kl",
        from_logits: bool = False,
    ) -> None:
        if fine == coarse:
            raise ValueError(f"hierarchical: fine and coarse must differ, got {fine!r} twice")
        if penalty not in ("kl", "absolute"):
            raise ValueError(f"hierarchical: penalty must be 'kl' or 'absolute', got {penalty!r}")
        # The same check as polytask.Hierarchical: what the mapping alone tells, now.
        self.mapping = check_mapping("hierarchical", fine, coarse, mapping)
        self.fine, self.coarse, self.penalty = fine, coarse, penalty
        self.weight = _check_weight("hierarchical", weight)
        self.from_logits = bool(from_logits)
        self.n_fine, self.n_coarse = len(self.mapping), max(self.mapping.values()) + 1
        self.matrix = [
            [1.0 if self.mapping[f] == c else 0.0 for c in range(self.n_coarse)]
            for f in range(self.n_fine)
        ]
        self.outputs = (fine, coarse)

    def check_outputs(self, widths: Mapping[str, int]) -> None:
        """Check the mapping against the outputs' class counts (``widths``: output name ->
        number of columns; one column is binary)."""
        n_fine, n_coarse = _classes(widths[self.fine]), _classes(widths[self.coarse])
        check_mapping("hierarchical", self.fine, self.coarse, self.mapping, n_fine, n_coarse)

    def _class_probabilities(self, output: Any) -> Any:
        p = _probabilities(output, self.from_logits)
        return ops.concatenate([1 - p, p], axis=-1) if p.shape[-1] == 1 else p

    def __call__(self, outputs: Mapping[str, Any]) -> Any:
        p_fine = self._class_probabilities(outputs[self.fine])
        q = self._class_probabilities(outputs[self.coarse])
        if p_fine.shape[-1] != self.n_fine or q.shape[-1] != self.n_coarse:
            self.check_outputs({self.fine: p_fine.shape[-1], self.coarse: q.shape[-1]})
        p = ops.matmul(p_fine, ops.convert_to_tensor(self.matrix, dtype=p_fine.dtype))
        if self.penalty == "absolute":
            return self.weight * ops.mean(ops.sum(ops.abs(p - q), axis=-1))
        log_p = ops.log(ops.maximum(p, _tiny(p)))
        log_q = ops.log(ops.maximum(q, _tiny(q)))
        return self.weight * ops.mean(ops.sum(p * (log_p - log_q), axis=-1))

    def get_config(self) -> dict[str, Any]:
        return {
            "fine": self.fine,
            "coarse": self.coarse,
            "mapping": [self.mapping[f] for f in range(self.n_fine)],  # JSON keys are strings
            "weight": self.weight,
            "penalty": self.penalty,
            "from_logits": self.from_logits,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Hierarchical:
        return cls(**config)

    def __repr__(self) -> str:
        return (
            f"hierarchical({self.fine!r}, {self.coarse!r}, {self.mapping}, weight={self.weight}, "
            f"penalty={self.penalty!r})"
        )


def hierarchical(
    fine: str,
    coarse: str,
    mapping: Mapping[int, int] | Sequence[int],
    weight: float = 1.0,
    penalty: str = "kl",
    from_logits: bool = False,
) -> Hierarchical:
    """The coarse output's class probabilities must match the fine output's summed through
    ``mapping`` (fine class -> coarse class), as :class:`polytask.Hierarchical`: ``KL(P_fine M ||
    P_coarse)`` or the L1 distance, averaged over rows. A one-column output is binary.

    The mapping is checked here by the same function as :class:`polytask.Hierarchical`'s
    (fine classes ``0..n-1`` without gaps, integer coarse classes, each one used), and against
    the outputs' widths by :func:`compile_multitask`.

    Examples
    --------
    >>> term = hierarchical("stars", "polarity", [0, 0, 1, 2, 2], weight=0.5)
    >>> term.n_fine, term.n_coarse
    (5, 3)
    >>> hierarchical("stars", "polarity", {0: 0, 2: 1})
    Traceback (most recent call last):
    ...
    ValueError: hierarchical('stars' -> 'polarity') mapping: unknown fine classes [2]; expected 0..1
    """
    return Hierarchical(fine, coarse, mapping, weight, penalty, from_logits)


COMBINERS: dict[str, Callable[[], Any]] = {"sum": _Sum, "mean": Mean, "geometric": GeometricMean}


# --- the multi-output model ------------------------------------------------------------------
class _PerExample(keras.losses.Loss):
    """A per-example loss function as a ``Loss``, so Keras applies ``sample_weight`` and the
    reduction (``sum(w_i l_i) / n``) exactly as its own ``compile(loss=dict)`` does."""

    def __init__(self, fn: Callable[[Any, Any], Any], name: str) -> None:
        super().__init__(name=name)
        self.fn = fn

    def call(self, y_true: Any, y_pred: Any) -> Any:
        return self.fn(y_true, y_pred)


def _loss_object(output: str, loss: Any) -> keras.losses.Loss:
    resolved = keras.losses.get(loss)
    if resolved is None:
        raise ValueError(f"MultiTaskModel: output {output!r} has no loss (got {loss!r})")
    if isinstance(resolved, keras.losses.Loss):
        return resolved
    return _PerExample(resolved, name=getattr(resolved, "__name__", f"{output}_loss"))


def _save_term(term: Any) -> Any:
    if hasattr(term, "get_config"):
        return keras.saving.serialize_keras_object(term)
    return _save_callable("MultiTaskModel: term", term)


@_serializable
class MultiTaskModel(keras.Model):
    """A multi-output model whose loss is a combination of its per-output losses plus
    structured terms (made by :func:`compile_multitask`). ``call`` is the wrapped model's.

    Saves to ``.keras`` and loads with ``keras.saving.load_model`` (the combiner, its learned
    variables and the terms come back). ``compute_loss`` updates one ``keras.metrics.Mean``
    per output for its loss (``<output>_loss``) and one for its effective weight
    (``<output>_weight``, the derivative of the combined loss with respect to that output's
    loss: 1 for ``"sum"``, ``w_t`` for :class:`Weighted`, ``0.5 exp(-s_t)`` for
    :class:`Uncertainty`); both are averaged over an epoch's examples, like ``loss``.

    ``sample_weight`` (in ``fit``, ``evaluate`` or ``compute_loss``): one array weights every
    output's loss, a dict output name -> array weights each output by its own array (``fit``
    and ``evaluate`` need one for every output, as Keras's data handling asks; give ones for
    an output you do not weigh; ``compute_loss`` leaves unnamed outputs unweighted); each
    output's loss is then ``sum_i(w_i l_i) / n`` as in Keras. The terms and the combiner are
    not weighted by example (terms need no labels and read every row).
    """

    def __init__(
        self,
        model: keras.Model,
        losses: Mapping[str, Any],
        combiner: Any,
        terms: Sequence[Term] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        for method in ("combine", "task_weights"):
            if not callable(getattr(combiner, method, None)):
                raise TypeError(
                    f"MultiTaskModel: the combiner {combiner!r} has no {method}(losses) method; "
                    f"give one of {sorted(COMBINERS)}, a Weighted or an Uncertainty"
                )
        self.model = model
        self.names = tuple(losses)
        self.loss_specs = dict(losses)  # as given: what get_config saves
        self.task_losses = {name: _loss_object(name, loss) for name, loss in losses.items()}
        self.combiner = combiner
        self.terms = list(terms)
        # Keras tracks these Mean metrics in `metrics`: it resets them each epoch and reports
        # them in History, as val_<name> during validation.
        self.loss_trackers = {n: keras.metrics.Mean(name=f"{n}_loss") for n in self.names}
        self.weight_trackers = {n: keras.metrics.Mean(name=f"{n}_weight") for n in self.names}
        self.built = model.built  # nothing of its own to build: the wrapped model is built

    def call(self, inputs: Any, training: bool = False) -> Any:
        return self.model(inputs, training=training)

    def _sample_weights(self, sample_weight: Any) -> dict[str, Any]:
        """Output name -> that output's sample weights (``None``: unweighted)."""
        if sample_weight is None:
            return dict.fromkeys(self.names)
        if isinstance(sample_weight, Mapping):
            unknown = sorted(set(sample_weight) - set(self.names))
            if unknown:
                raise ValueError(
                    f"MultiTaskModel: sample_weight for unknown outputs {unknown}; the outputs "
                    f"are {list(self.names)}"
                )
            return {n: sample_weight.get(n) for n in self.names}
        if isinstance(sample_weight, (list, tuple)):
            raise ValueError(
                f"MultiTaskModel: sample_weight is a {type(sample_weight).__name__}; give one "
                "array (every output) or a dict output name -> array"
            )
        return dict.fromkeys(self.names, sample_weight)

    def task_loss_values(
        self, y: Mapping[str, Any], y_pred: Mapping[str, Any], sample_weight: Any = None
    ) -> Any:
        """Each output's loss, stacked in the order of ``losses``: shape ``(T,)``."""
        if not isinstance(y, Mapping) or set(self.names) - set(y):
            given = sorted(y) if isinstance(y, Mapping) else type(y).__name__
            raise ValueError(
                f"MultiTaskModel: targets must be a dict with every output {list(self.names)}, "
                f"got {given}"
            )
        weights = self._sample_weights(sample_weight)
        return ops.stack(
            [
                ops.mean(self.task_losses[n](y[n], y_pred[n], sample_weight=weights[n]))
                for n in self.names
            ]
        )

    def compute_loss(
        self,
        x: Any = None,
        y: Any = None,
        y_pred: Any = None,
        sample_weight: Any = None,
        training: bool = True,
    ) -> Any:
        losses = self.task_loss_values(y, y_pred, sample_weight)
        total = self.combiner.combine(losses)
        for term in self.terms:
            total = total + term(y_pred)
        if self.losses:  # regularisation losses of the layers
            total = total + ops.sum(ops.stack(self.losses))
        # Logged per example, as Keras weights its own loss tracker by the batch size.
        batch = ops.shape(y_pred[self.names[0]])[0]
        observed = ops.stop_gradient(losses)
        weights = self.combiner.task_weights(observed)
        for i, name in enumerate(self.names):
            self.loss_trackers[name].update_state(observed[i], sample_weight=batch)
            self.weight_trackers[name].update_state(weights[i], sample_weight=batch)
        return total

    def get_config(self) -> dict[str, Any]:
        serialize = keras.saving.serialize_keras_object
        return {
            "name": self.name,
            "trainable": self.trainable,
            "model": serialize(self.model),
            "losses": {
                n: loss if isinstance(loss, str) else serialize(loss)
                for n, loss in self.loss_specs.items()
            },
            "combiner": serialize(self.combiner),
            "terms": [_save_term(term) for term in self.terms],
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> MultiTaskModel:
        config = dict(config)
        load = keras.saving.deserialize_keras_object
        model = load(config.pop("model"))
        losses = {
            n: loss if isinstance(loss, str) else load(loss)
            for n, loss in config.pop("losses").items()
        }
        combiner = load(config.pop("combiner"))
        terms = [load(term) for term in config.pop("terms")]
        return cls(model, losses, combiner, terms, **config)


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
        :func:`consistency` and :func:`hierarchical` terms on the outputs; a
        :func:`hierarchical` mapping is checked against the outputs' widths here.
    optimizer, compile_options
        Passed to ``compile`` (``metrics`` as a dict per output, for instance).

    Returns
    -------
    MultiTaskModel
        ``fit`` records ``<output>_loss`` and ``<output>_weight`` per epoch; ``save`` writes
        a ``.keras`` file that ``keras.saving.load_model`` reads back, ready to train on.

    Examples
    --------
    >>> import numpy as np
    >>> inputs = keras.Input((4,))
    >>> hidden = keras.layers.Dense(8, activation="relu")(inputs)
    >>> model = keras.Model(inputs, {
    ...     "site": keras.layers.Dense(3, activation="softmax", name="site")(hidden),
    ...     "sentiment": keras.layers.Dense(1, activation="sigmoid", name="sentiment")(hidden),
    ...     "stars": keras.layers.Dense(1, activation="sigmoid", name="stars")(hidden),
    ... })
    >>> net = compile_multitask(model, {"site": "sparse_categorical_crossentropy",
    ...                                 "sentiment": "binary_crossentropy",
    ...                                 "stars": "mse"},
    ...                         combiner=Uncertainty(3),
    ...                         terms=[consistency([("sentiment", "stars")], weight=0.1)])
    >>> x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    >>> y_site = (x[:, 0] > 0) + (x[:, 1] > 0)  # class 0, 1 or 2
    >>> y_sentiment = (x[:, 2:3] > 0).astype("float32")  # one column, as the output
    >>> y_stars = (4 * y_sentiment + 1) / 6  # a rating in (0, 1) that follows the sentiment
    >>> history = net.fit(x, {"site": y_site, "sentiment": y_sentiment, "stars": y_stars},
    ...                   epochs=2, verbose=0)
    >>> sorted(k for k in history.history if k.startswith("site"))
    ['site_loss', 'site_weight']
    """
    ignored = sorted({"loss", "loss_weights"} & set(compile_options))
    if ignored:  # the returned model's compute_loss replaces Keras's: they would do nothing
        raise ValueError(
            f"compile_multitask: {ignored} would be ignored: give the per-output losses as "
            "losses= and their weights as combiner=Weighted([...]) (or a learned Uncertainty)"
        )
    try:
        output = model.output
    except (AttributeError, ValueError):  # a Sequential or subclassed model: no named outputs
        output = None
    outputs = output if isinstance(output, Mapping) else None
    if outputs is None:
        raise ValueError(
            "compile_multitask: the model's outputs must be a dict of named tensors (a "
            f"functional keras.Model(inputs, {{name: tensor}})), got a {type(model).__name__}"
        )
    unknown = sorted(set(losses) - set(outputs))
    missing = sorted(set(outputs) - set(losses))
    if unknown or missing:
        raise ValueError(
            f"compile_multitask: losses for unknown outputs {unknown}, none for {missing}; "
            f"the outputs are {sorted(outputs)}"
        )
    widths = {name: output.shape[-1] for name, output in outputs.items()}
    for term in terms:
        strangers = sorted(set(getattr(term, "outputs", ())) - set(outputs))
        if strangers:
            raise ValueError(f"compile_multitask: a term reads unknown outputs {strangers}")
        if hasattr(term, "check_outputs"):
            term.check_outputs(widths)
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
