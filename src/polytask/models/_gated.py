"""Gated sharing: shared-bottom, MMoE, CGC, PLE and DSelect-k, each under the model protocol.

Every model here routes like :class:`~polytask.MultiTaskModel` (``model(x)`` gives ``{task:
output}``, ``model(x, task=name)`` one task's output) and tells the gradient engine what is
shared and what each task reads:

- ``shared_parameters()``: what two or more tasks' losses reach, and everything the shared
  representation depends on (the paths that stop at the representation would lose the
  gradient of anything upstream of it that is not declared shared);
- ``features(x)``: the representation every task reads (the experts' outputs);
  ``heads_forward(z, task)``: the rest of each task's computation from ``z`` alone, its gate
  reading the inputs ``x`` of the last :meth:`features` call. Each task reads its own leaf of
  ``z`` (``splits_per_task``), so one backward pass separates every task's gradient;
- ``parameter_owners()``: the task of each task-specific parameter (gates, task experts,
  towers).

The experts run as one batched product (:class:`~polytask.models.BatchedExperts`).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .._checks import as_int
from .._features import TaskFeatures
from ._experts import BatchedExperts, refuse_repeats
from ._mlp import _ACTIVATIONS, init_linear
from ._multitask import MultiTaskModel

TaskSpec = Mapping[str, int] | Sequence[Any]
"""Tasks: names, :class:`~polytask.Task` objects (their ``size`` is the output width), or a
mapping name -> output width."""


# --- helpers shared by the architectures ---------------------------------------------------
def task_sizes(tasks: TaskSpec, owner: str) -> dict[str, int | None]:
    """Task name -> output width (None when only the name was given), refusing repeats."""
    if isinstance(tasks, Mapping):
        items = [(name, size) for name, size in tasks.items()]
    elif isinstance(tasks, str):
        raise TypeError(f"{owner}: tasks must be a sequence of names, not the string {tasks!r}")
    else:
        items = []
        for t in tasks:
            if isinstance(t, tuple) and len(t) == 2:
                items.append(t)
            else:
                items.append((getattr(t, "name", t), getattr(t, "size", None)))
    names = [name for name, _ in items]
    if not names:
        raise ValueError(f"{owner}: needs at least one task")
    for name in names:
        if not isinstance(name, str) or not name:
            raise TypeError(f"{owner}: task names must be non-empty strings, got {name!r}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(
            f"{owner}: task {repeated[0]!r} is named twice in {names}; task names must be unique"
        )
    sizes: dict[str, int | None] = {}
    for name, size in items:
        sizes[name] = (
            None if size is None else as_int(size, f"{owner}: the output width of task {name!r}")
        )
    return sizes


def probe(module: nn.Module, x: Tensor) -> Any:
    """``module(x)`` without gradients and in eval mode (no running statistics move), with
    ``x`` in the dtype and on the device of the module's first floating parameter (a float64
    or CUDA expert is checked for its widths, not refused for its dtype)."""
    param = next((p for p in module.parameters() if p.is_floating_point()), None)
    if param is not None:
        x = x.to(param.device, param.dtype)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            return module(x)
    finally:
        module.train(was_training)


def dense(
    in_features: int,
    hidden: Sequence[int],
    out_features: int | None,
    activation: str,
    generator: torch.Generator,
) -> nn.Sequential:
    """Linear layers of widths ``hidden`` each followed by ``activation``, then an optional
    linear output layer: Glorot-uniform weights and zero biases drawn from ``generator`` (as
    :func:`~polytask.mlp`, with one width per layer)."""
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
    layers: list[nn.Module] = []
    fan_in = in_features
    with torch.random.fork_rng(devices=[]):  # nn.Linear draws from the global RNG
        for width in hidden:
            if width < 1:
                raise ValueError(f"layer widths must be >= 1, got {list(hidden)}")
            layers += [nn.Linear(fan_in, width), _ACTIVATIONS[activation]()]
            fan_in = width
        if out_features is not None:
            layers.append(nn.Linear(fan_in, out_features))
    for layer in layers:
        if isinstance(layer, nn.Linear):
            init_linear(layer, "glorot", generator)
    return nn.Sequential(*layers)


def linear_gate(in_features: int, n_choices: int, generator: torch.Generator) -> nn.Linear:
    """A gate's logits ``W x`` (no bias, as the papers' ``softmax(W_g x)``), Glorot-uniform."""
    with torch.random.fork_rng(devices=[]):
        linear = nn.Linear(in_features, n_choices, bias=False)
    init_linear(linear, "glorot", generator)
    return linear


def build_towers(
    owner: str,
    sizes: Mapping[str, int | None],
    given: Mapping[str, nn.Module] | None,
    width: int,
    hidden: Sequence[int],
    activation: str,
    generator: torch.Generator,
    reads: str = "the mixture of the experts",
) -> nn.ModuleDict:
    """One tower per task (the given ones, an MLP for the others), each checked on a dummy
    input of the width it will read (``reads`` says what that input is, for the errors)."""
    given = dict(given or {})
    unknown = [name for name in given if name not in sizes]
    if unknown:
        raise ValueError(
            f"{owner}: towers for unknown tasks {unknown}; the tasks are {list(sizes)}"
        )
    towers = {}
    for name, size in sizes.items():
        if name in given:
            tower = given[name]
            if not isinstance(tower, nn.Module):
                raise TypeError(f"{owner}: the tower of task {name!r} is not an nn.Module")
        else:
            tower = dense(width, hidden, size or 1, activation, generator)
        check_tower(owner, name, tower, width, size, reads)
        towers[name] = tower
    ids = [id(t) for t in towers.values()]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{owner}: two tasks were given the same tower module; build one per task")
    return nn.ModuleDict(towers)


def check_tower(
    owner: str,
    name: str,
    tower: nn.Module,
    width: int,
    size: int | None,
    reads: str = "the mixture of the experts",
) -> None:
    """Refuse a tower that cannot read ``width`` columns, or gives the wrong output width."""
    try:
        out = probe(tower, torch.zeros(2, width))
    except Exception as error:  # any failure of the user's module is a mismatch
        raise ValueError(
            f"{owner}: the tower of task {name!r} cannot read the {width}-wide input it gets "
            f"({reads}): {error}"
        ) from None
    if not isinstance(out, Tensor) or out.ndim != 2 or out.shape[0] != 2:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"{owner}: the tower of task {name!r} gives {shape} for 2 rows, expected (2, width)"
        )
    if size is not None and out.shape[1] != size:
        raise ValueError(
            f"{owner}: the tower of task {name!r} gives {out.shape[1]} columns, the task needs "
            f"{size}"
        )


def expert_outputs(owner: str, what: str, experts: nn.Module, in_features: int) -> tuple[int, int]:
    """``(n_experts, width)`` of an experts module, read off one dummy forward pass."""
    try:
        out = probe(experts, torch.zeros(2, in_features))
    except Exception as error:
        raise ValueError(
            f"{owner}: the {what} cannot read inputs of width {in_features}: {error}"
        ) from None
    if not isinstance(out, Tensor) or out.ndim != 3 or out.shape[0] != 2:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"{owner}: the {what} give {shape} for 2 rows; expected (2, n_experts, width) "
            "(e.g. BatchedExperts or ExpertList)"
        )
    if out.shape[1] < 1:
        raise ValueError(f"{owner}: the {what} hold 0 experts; give at least one")
    return int(out.shape[1]), int(out.shape[2])


def check_count(owner: str, name: str, value: int, least: int = 1) -> int:
    return as_int(value, f"{owner}: {name}", least)


def mix(weights: Tensor, experts: Tensor) -> Tensor:
    """``sum_e weights[b, e] * experts[b, e, :]``: ``(batch, E)``, ``(batch, E, d)`` ->
    ``(batch, d)``."""
    # a broadcast multiply and a sum: einsum makes this a bmm of `batch` 1 x E products, which
    # the CPU runs several times slower (forward and backward) than these two elementwise ops
    return (weights.unsqueeze(-1) * experts).sum(dim=-2)


def gate(linear: nn.Module, x: Tensor) -> Tensor:
    """``softmax(linear(x), dim=-1)``: a gate's weights over its choices, ``(batch, n)``."""
    if type(linear) is not nn.Linear or x.ndim != 2:
        return F.softmax(linear(x), dim=-1)
    # computed transposed, (n, batch), and returned as a view: the CPU's softmax over a short
    # last dimension (a few experts) runs row by row, several times slower (forward and
    # backward) than over the first dimension, which it vectorises along the batch
    logits = linear.weight @ x.T
    if linear.bias is not None:
        logits = logits + linear.bias.unsqueeze(1)
    return F.softmax(logits, dim=0).T


def params(*modules: nn.Module | Iterable[nn.Parameter]) -> list[nn.Parameter]:
    """The parameters of ``modules`` (or parameter lists), each once, in order."""
    seen: dict[int, nn.Parameter] = {}
    for m in modules:
        for p in m.parameters() if isinstance(m, nn.Module) else m:
            seen.setdefault(id(p), p)
    return list(seen.values())


def _model_generator(seed: int | None) -> torch.Generator:
    """The generator every initial weight of a model is drawn from (``None``: a random seed)."""
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


class _Routed(nn.Module):
    """What the gated models share: task routing, the representation protocol and the
    bookkeeping of the last :meth:`features` call (the gates read ``x``)."""

    splits_per_task = True
    """Each task's output is computed from its own leaf of the representation."""
    exposes_representation = True

    def _set_tasks(self, tasks: TaskSpec) -> dict[str, int | None]:
        sizes = task_sizes(tasks, type(self).__name__)
        self.task_names: tuple[str, ...] = tuple(sizes)
        self._last: tuple[weakref.ref, Tensor] | None = None
        return sizes

    # --- what a subclass writes -------------------------------------------------------------
    def _features(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _head(self, task: str, z: Tensor, x: Tensor) -> Tensor:
        raise NotImplementedError

    # --- routing ----------------------------------------------------------------------------
    def _check_task(self, task: str) -> None:
        if task not in self.task_names:
            raise KeyError(f"unknown task {task!r}; the model's tasks are {list(self.task_names)}")

    def forward(self, x: Tensor, task: str | None = None) -> dict[str, Tensor] | Tensor:
        """All tasks' outputs as ``{task: output}``, or only ``task``'s output."""
        if task is not None:
            self._check_task(task)
        return self._heads(self._features(x), x, task)

    def _heads(self, h: Tensor | Mapping[str, Tensor], x: Tensor, task: str | None):
        if task is not None:
            return self._head(task, h[task] if isinstance(h, TaskFeatures) else h, x)
        names = [n for n in self.task_names if not isinstance(h, TaskFeatures) or n in h]
        return {n: self._head(n, h[n] if isinstance(h, TaskFeatures) else h, x) for n in names}

    # --- the representation -----------------------------------------------------------------
    def features(self, x: Tensor) -> Tensor:
        """The shared representation every task reads, for the batch ``x`` (kept for the gates
        of the next :meth:`heads_forward`)."""
        z = self._features(x)
        self._last = (weakref.ref(z), x)
        return z

    def heads_forward(
        self, h: Tensor | Mapping[str, Tensor], task: str | None = None
    ) -> dict[str, Tensor] | Tensor:
        """Every task's output (or ``task``'s) from the representation made by the last
        :meth:`features` call, or from a :class:`~polytask.TaskFeatures` of it (each task then
        reads its own leaf; only the tasks it holds are computed)."""
        if isinstance(h, Mapping) and not isinstance(h, TaskFeatures):
            raise TypeError("heads_forward takes the features or a TaskFeatures of them")
        base = h.z if isinstance(h, TaskFeatures) else h
        last = self._last
        if last is None or last[0]() is not base:
            raise ValueError(
                f"{type(self).__name__}.heads_forward reads features made by its last "
                "features(x) call (its gates read that batch's x); call features(x) for this "
                "batch first"
            )
        if task is not None:
            self._check_task(task)
        return self._heads(h, last[1], task)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_last"] = None  # a weak reference does not pickle, and is per batch anyway
        return state

    # --- the protocol -----------------------------------------------------------------------
    def shared_parameters(self) -> list[nn.Parameter]:
        raise NotImplementedError

    def _owned(self) -> dict[str, list[nn.Module | Iterable[nn.Parameter]]]:
        raise NotImplementedError

    def _exclusive(self) -> dict[str, list[nn.Module | Iterable[nn.Parameter]]]:
        """What each task reaches alone (by default its :meth:`_owned` parts)."""
        return self._owned()

    def _refuse_tied_parts(self) -> None:
        """Refuse a module given to two tasks, or to a task and the shared part: a gradient
        method would credit its gradient to one task only (wrong updates, no error)."""
        name = type(self).__name__
        shared = {id(p) for p in self.shared_parameters()}
        path = {id(p): n for n, p in self.named_parameters()}
        first: dict[int, str] = {}
        for task, parts in self._exclusive().items():
            for p in params(*parts):
                if id(p) in shared:
                    raise ValueError(
                        f"{name}: parameter {path[id(p)]!r} is both a shared part and task "
                        f"{task!r}'s own (one module given as both); give the task a module "
                        "of its own"
                    )
                other = first.setdefault(id(p), task)
                if other != task:
                    raise ValueError(
                        f"{name}: parameter {path[id(p)]!r} belongs to the own parts of tasks "
                        f"{other!r} and {task!r} (one module given to both); build one per task"
                    )

    def _refuse_repeated_parts(self, parts: Mapping[str, nn.Module]) -> None:
        """Refuse one module (or parameter) in two places of the model, e.g. the same experts
        on two levels: ``[module] * n`` ties their weights, and the model would silently hold
        one part where it shows two."""
        refuse_repeats(type(self).__name__, parts)

    def parameter_owners(self) -> dict[int, str]:
        """Each task-specific parameter's task, by parameter id."""
        owners: dict[int, str] = {}
        for task, parts in self._owned().items():
            for p in params(*parts):
                owners[id(p)] = task
        return owners

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """The parameters only ``task`` reaches (with cross-stitch's last unit, whose row
        ``t`` is task ``t``'s)."""
        self._check_task(task)
        return params(*self._owned()[task])


# --- shared-bottom ---------------------------------------------------------------------------
class SharedBottom(MultiTaskModel):
    """Hard parameter sharing: one shared bottom network and one tower per task,
    ``tower_t(bottom(x))`` (Caruana, 1997; the baseline of Ma et al., 2018).

    The same model as :class:`~polytask.MultiTaskModel` (``SharedBottom(trunk, heads)``), with
    :meth:`build` to make the MLP version from the same arguments as the gated models. Shared:
    the bottom; representation: its output, which every tower reads.

    Examples
    --------
    >>> import torch
    >>> model = SharedBottom.build(5, {"a": 1, "b": 2}, hidden=[16], tower_hidden=[8])
    >>> {t: tuple(out.shape) for t, out in model(torch.zeros(3, 5)).items()}
    {'a': (3, 1), 'b': (3, 2)}
    >>> len(model.shared_parameters())
    2
    """

    @classmethod
    def build(
        cls,
        in_features: int,
        tasks: TaskSpec,
        *,
        hidden: Sequence[int] = (32,),
        tower_hidden: Sequence[int] = (8,),
        activation: str = "relu",
        towers: Mapping[str, nn.Module] | None = None,
        seed: int | None = 0,
    ) -> SharedBottom:
        """A shared-bottom MLP.

        Parameters
        ----------
        in_features
            Input width.
        tasks
            Task names, :class:`~polytask.Task` objects (their ``size`` is the output width)
            or a mapping name -> output width.
        hidden
            Units of the bottom's layers (each followed by ``activation``).
        tower_hidden
            Units of each tower's hidden layers; a linear output layer follows.
        towers
            Task -> tower module reading the bottom's output, for the tasks whose default
            tower you replace.
        seed
            Seed of the initialisation (the global RNG is not touched).
        """
        sizes = task_sizes(tasks, cls.__name__)
        check_count(cls.__name__, "in_features", in_features)
        if not list(hidden):
            raise ValueError(f"{cls.__name__}: the bottom needs at least one layer (hidden=[...])")
        generator = _model_generator(seed)
        bottom = dense(in_features, hidden, None, activation, generator)
        heads = build_towers(
            cls.__name__,
            sizes,
            towers,
            list(hidden)[-1],
            tower_hidden,
            activation,
            generator,
            reads="the bottom's output",
        )
        return cls(bottom, dict(heads.items()))


# --- MMoE ------------------------------------------------------------------------------------
class MMoE(_Routed):
    """Multi-gate mixture of experts (Ma et al., "Modeling Task Relationships in Multi-task
    Learning with Multi-gate Mixture-of-Experts", KDD 2018).

    ``y_t = tower_t(sum_e g_t(x)_e f_e(x))`` with ``g_t(x) = softmax(W_t x)``: every task mixes
    the same experts ``f_e`` with its own gate.

    What the gradient methods see: the experts are shared (every task's gate reads all of
    them); the gates are task parameters, not shared: gate ``t`` is reached by task ``t``'s
    loss only. The representation is the experts' outputs, ``features(x)`` of shape
    ``(batch, n_experts, width)``: every task reads all of it, through its gate.

    Parameters
    ----------
    in_features
        Input width.
    tasks
        Task names, :class:`~polytask.Task` objects (their ``size`` is the output width) or a
        mapping name -> output width (names alone: width 1).
    n_experts
        Number of experts; 8 in the paper's experiments. With ``experts`` given, their count
        is read from them and this is not used.
    expert_hidden
        Units of each expert's layers; the paper's experts are one ReLU layer.
    tower_hidden
        Units of each tower's hidden layers (a linear output layer follows); the paper's towers
        have one hidden layer.
    activation
        Activation of the experts and towers (``relu`` in the paper).
    experts
        An experts module instead of the default :class:`BatchedExperts`: it maps ``(batch,
        in_features)`` to ``(batch, n_experts, width)`` (e.g. an :class:`ExpertList`).
    towers
        Task -> tower module reading the ``width``-wide mixture, for the tasks whose default
        tower you replace.
    seed
        Seed of the initialisation; the global RNG is not touched.

    Examples
    --------
    >>> import torch
    >>> model = MMoE(5, {"a": 1, "b": 2}, n_experts=4, expert_hidden=[8])
    >>> x = torch.randn(3, 5)
    >>> {t: tuple(out.shape) for t, out in model(x).items()}
    {'a': (3, 1), 'b': (3, 2)}
    >>> tuple(model.features(x).shape)
    (3, 4, 8)
    >>> weights = model.gate_weights(x)["a"]
    >>> tuple(weights.shape), bool(torch.allclose(weights.sum(1), torch.ones(3)))
    ((3, 4), True)
    """

    def __init__(
        self,
        in_features: int,
        tasks: TaskSpec,
        *,
        n_experts: int = 8,
        expert_hidden: Sequence[int] = (16,),
        tower_hidden: Sequence[int] = (8,),
        activation: str = "relu",
        experts: nn.Module | None = None,
        towers: Mapping[str, nn.Module] | None = None,
        seed: int | None = 0,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        sizes = self._set_tasks(tasks)
        check_count(name, "in_features", in_features)
        generator = _model_generator(seed)
        if experts is None:
            check_count(name, "n_experts", n_experts)
            experts = BatchedExperts(
                n_experts, in_features, expert_hidden, activation, generator=generator
            )
        n_experts, width = expert_outputs(name, "experts", experts, in_features)
        self.in_features, self.n_experts, self.width = in_features, n_experts, width
        self.experts = experts
        self.gates = nn.ModuleDict(
            {t: linear_gate(in_features, n_experts, generator) for t in self.task_names}
        )
        self.towers = build_towers(name, sizes, towers, width, tower_hidden, activation, generator)
        self._refuse_tied_parts()

    def _features(self, x: Tensor) -> Tensor:
        return self.experts(x)

    def _head(self, task: str, z: Tensor, x: Tensor) -> Tensor:
        return self.towers[task](mix(gate(self.gates[task], x), z))

    def gate_weights(self, x: Tensor) -> dict[str, Tensor]:
        """Each task's gate, ``{task: (batch, n_experts)}``: every row a distribution."""
        return {t: gate(self.gates[t], x) for t in self.task_names}

    def shared_parameters(self) -> list[nn.Parameter]:
        """The experts' parameters: every task's gate reads every expert."""
        return list(self.experts.parameters())

    def _owned(self) -> dict[str, list[nn.Module]]:
        return {t: [self.gates[t], self.towers[t]] for t in self.task_names}


# --- CGC and PLE -----------------------------------------------------------------------------
class PLE(_Routed):
    """Progressive layered extraction (Tang et al., "Progressive Layered Extraction (PLE): A
    Novel Multi-Task Learning (MTL) Model for Personalized Recommendations", RecSys 2020).

    Each extraction level has shared experts and experts of each task. Task ``t``'s gate mixes
    its own experts and the shared ones; on every level but the last, the shared experts' own
    gate mixes all the level's experts (every task's and the shared ones) into the input of the
    next level's shared experts, as in the paper. Each gate reads its own input: ``x`` on the
    first level, then the previous level's output of its task (or the shared output). The
    towers read the last level's task outputs. One level is :class:`CGC`.

    What the gradient methods see: on every level but the last, every part reaches every task
    (through the shared gate and the next shared experts), so all of it is shared; on the last
    level, the shared experts are shared and each task's experts and gate are that task's.
    The representation is what the last level reads from below: the last level's shared
    experts' outputs, followed by each task's input to its last-level experts and gate (the
    previous level's task outputs), flattened into ``(batch, n_shared * width + T * width)``.
    Everything it depends on is shared, so the last-but-one level's task gates count as shared
    although one task reaches each: their gradient for the other tasks is zero.

    Parameters
    ----------
    in_features
        Input width.
    tasks
        Task names, :class:`~polytask.Task` objects (their ``size`` is the output width) or a
        mapping name -> output width.
    n_levels
        Extraction levels (at least 1; 1 is CGC). The paper stacks two or more.
    n_shared, n_specific
        Shared experts, and experts of each task, per level (the paper tunes both; at least
        one shared expert, ``n_specific`` may be 0).
    expert_hidden
        Units of each expert's layers (each followed by ``activation``).
    tower_hidden
        Units of each tower's hidden layers (a linear output layer follows).
    activation
        Activation of the experts and towers.
    shared_experts
        One experts module per level instead of the default :class:`BatchedExperts` (level
        ``l`` maps ``(batch, in)`` to ``(batch, n, width)``; ``in`` is ``in_features`` at level
        0, the previous level's ``width`` above); ``n_shared`` is then read from them.
    task_experts
        One mapping task -> experts module per level (the same contract; ``n_specific`` is
        then read from them). A module given to two tasks, or as both shared and a task's, is
        refused.
    towers
        Task -> tower module reading the ``width``-wide last-level output of its task.
    seed
        Seed of the initialisation; the global RNG is not touched.

    Examples
    --------
    >>> import torch
    >>> model = PLE(5, ["a", "b"], n_levels=2, n_shared=2, n_specific=1, expert_hidden=[8])
    >>> x = torch.randn(3, 5)
    >>> tuple(model(x, task="b").shape)
    (3, 1)
    >>> tuple(model.features(x).shape)  # 2 shared experts x 8, then each task's 8 inputs
    (3, 32)
    >>> tuple(model.gate_weights(x)["a"].shape)  # its own expert, then the 2 shared ones
    (3, 3)
    """

    def __init__(
        self,
        in_features: int,
        tasks: TaskSpec,
        *,
        n_levels: int = 2,
        n_shared: int = 2,
        n_specific: int = 2,
        expert_hidden: Sequence[int] = (16,),
        tower_hidden: Sequence[int] = (8,),
        activation: str = "relu",
        shared_experts: Sequence[nn.Module] | None = None,
        task_experts: Sequence[Mapping[str, nn.Module]] | None = None,
        towers: Mapping[str, nn.Module] | None = None,
        seed: int | None = 0,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        sizes = self._set_tasks(tasks)
        check_count(name, "in_features", in_features)
        check_count(name, "n_levels", n_levels)
        for given_name, per_level in (
            ("shared_experts", shared_experts),
            ("task_experts", task_experts),
        ):
            one_entry = isinstance(per_level, Mapping | nn.Module) and not isinstance(
                per_level, nn.ModuleList
            )
            if per_level is not None and (one_entry or len(per_level) != n_levels):
                raise ValueError(
                    f"{name}: {given_name} takes one entry per level, a sequence of "
                    f"n_levels={n_levels}"
                )
        generator = _model_generator(seed)
        names = self.task_names
        given_shared, given_own = shared_experts, task_experts
        shared_experts, task_experts, task_gates, shared_gates = [], [], [], []
        fan_in = last_in = in_features
        width = 0
        for level in range(n_levels):
            last_in = fan_in
            # shared experts
            if given_shared is not None:
                shared = given_shared[level]
            else:
                check_count(name, "n_shared", n_shared)
                shared = BatchedExperts(
                    n_shared, fan_in, expert_hidden, activation, generator=generator
                )
            n_sh, width = expert_outputs(name, "shared experts", shared, fan_in)
            # each task's experts
            own: dict[str, nn.Module] = {}
            counts = {}
            given = None if given_own is None else given_own[level]
            for t in names:
                if given is not None:
                    if t not in given:
                        raise ValueError(f"{name}: task_experts lacks task {t!r}")
                    own[t] = given[t]
                else:
                    check_count(name, "n_specific", n_specific, least=0)
                    if n_specific == 0:
                        own[t] = _NoExperts(width)
                    else:
                        own[t] = BatchedExperts(
                            n_specific, fan_in, expert_hidden, activation, generator=generator
                        )
                if isinstance(own[t], _NoExperts):
                    counts[t] = 0
                    continue
                counts[t], w = expert_outputs(name, f"experts of task {t!r}", own[t], fan_in)
                if w != width:
                    raise ValueError(
                        f"{name}: the experts of task {t!r} give width {w}, the shared experts "
                        f"{width}; a gate mixes them, so they need the same width"
                    )
            if given is not None:
                unknown = [t for t in given if t not in names]
                if unknown:
                    raise ValueError(f"{name}: task_experts for unknown tasks {unknown}")
            shared_experts.append(shared)
            task_experts.append(nn.ModuleDict(own))
            task_gates.append(
                nn.ModuleDict({t: linear_gate(fan_in, counts[t] + n_sh, generator) for t in names})
            )
            if level < n_levels - 1:  # the shared experts' own gate: all the level's experts
                shared_gates.append(linear_gate(fan_in, sum(counts.values()) + n_sh, generator))
            fan_in = width
        self.in_features, self.n_levels, self.width = in_features, n_levels, width
        self.shared_experts = nn.ModuleList(shared_experts)
        self.task_experts = nn.ModuleList(task_experts)
        self.task_gates = nn.ModuleList(task_gates)
        self.shared_gates = nn.ModuleList(shared_gates)
        self.n_shared, self._last_in = n_sh, last_in
        self.towers = build_towers(name, sizes, towers, width, tower_hidden, activation, generator)
        self._refuse_repeated_parts(
            {
                **{f"shared_experts[{i}]": m for i, m in enumerate(self.shared_experts)},
                **{
                    f"task_experts[{i}][{t!r}]": level[t]
                    for i, level in enumerate(self.task_experts)
                    for t in names
                },
                **{f"towers[{t!r}]": self.towers[t] for t in names},
            }
        )
        self._refuse_tied_parts()

    # one extraction level below the last: the task outputs and the shared output
    def _level(
        self, level: int, shared_in: Tensor, task_in: Mapping[str, Tensor]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        shared = self.shared_experts[level](shared_in)
        own = {t: self.task_experts[level][t](task_in[t]) for t in self.task_names}
        outputs = {
            t: mix(
                gate(self.task_gates[level][t], task_in[t]),
                torch.cat([own[t], shared], dim=1),
            )
            for t in self.task_names
        }
        every = torch.cat([*(own[t] for t in self.task_names), shared], dim=1)
        shared_out = mix(gate(self.shared_gates[level], shared_in), every)
        return shared_out, outputs

    def _below_last(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        shared_in: Tensor = x
        task_in: dict[str, Tensor] = {t: x for t in self.task_names}
        for level in range(self.n_levels - 1):
            shared_in, task_in = self._level(level, shared_in, task_in)
        return shared_in, task_in

    def _features(self, x: Tensor) -> Tensor:
        shared_in, task_in = self._below_last(x)
        shared = self.shared_experts[-1](shared_in)
        if self.n_levels == 1:
            return shared
        return torch.cat([shared.flatten(1), *(task_in[t] for t in self.task_names)], dim=1)

    def _last_inputs(self, task: str, z: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """The last level's shared experts' outputs and ``task``'s input, read from ``z``."""
        if self.n_levels == 1:
            return z, x
        d, d_in = self.width, self._last_in
        start = self.n_shared * d
        shared = z[:, :start].reshape(len(z), self.n_shared, d)
        i = self.task_names.index(task)
        return shared, z[:, start + i * d_in : start + (i + 1) * d_in]

    def _head(self, task: str, z: Tensor, x: Tensor) -> Tensor:
        shared, task_in = self._last_inputs(task, z, x)
        own = self.task_experts[-1][task](task_in)
        weights = gate(self.task_gates[-1][task], task_in)
        return self.towers[task](mix(weights, torch.cat([own, shared], dim=1)))

    def gate_weights(self, x: Tensor) -> dict[str, Tensor]:
        """Each task's gate on the last level, ``{task: (batch, n_specific + n_shared)}``
        (its own experts first, then the shared ones): every row a distribution."""
        z = self._features(x)
        out = {}
        for t in self.task_names:
            _, task_in = self._last_inputs(t, z, x)
            out[t] = gate(self.task_gates[-1][t], task_in)
        return out

    def shared_gate_weights(self, x: Tensor) -> dict[str, Tensor]:
        """The shared experts' own gate on every level but the last, ``{"shared@<level>":
        (batch, n_choices)}`` (levels from 1; the choices: each task's experts in task order,
        then the shared ones): every row a distribution. Empty for CGC (one level).

        Examples
        --------
        >>> import torch
        >>> model = PLE(3, ["a", "b"], n_levels=2, n_shared=2, n_specific=1, expert_hidden=[4])
        >>> {k: tuple(w.shape) for k, w in model.shared_gate_weights(torch.zeros(5, 3)).items()}
        {'shared@1': (5, 4)}
        """
        out = {}
        shared_in: Tensor = x
        task_in: dict[str, Tensor] = {t: x for t in self.task_names}
        for level in range(self.n_levels - 1):
            out[f"shared@{level + 1}"] = gate(self.shared_gates[level], shared_in)
            shared_in, task_in = self._level(level, shared_in, task_in)
        return out

    def shared_parameters(self) -> list[nn.Parameter]:
        """Every level but the last whole (its parts reach every task through the shared gate,
        or feed the representation), and the last level's shared experts."""
        below = [
            part
            for level in range(self.n_levels - 1)
            for part in (
                self.shared_experts[level],
                self.task_experts[level],
                self.task_gates[level],
                self.shared_gates[level],
            )
        ]
        return params(*below, self.shared_experts[-1])

    def _owned(self) -> dict[str, list[nn.Module]]:
        return {
            t: [self.task_experts[-1][t], self.task_gates[-1][t], self.towers[t]]
            for t in self.task_names
        }


class _NoExperts(nn.Module):
    """No task experts (``n_specific=0``): an empty ``(batch, 0, width)`` block."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.width = width

    def forward(self, x: Tensor) -> Tensor:
        return x.new_zeros(len(x), 0, self.width)


class CGC(PLE):
    """Customized gate control (Tang et al., RecSys 2020): one extraction level of
    :class:`PLE`, ``y_t = tower_t(g_t(x) . [experts_t(x), shared(x)])``.

    What the gradient methods see: the shared experts are shared (every task's gate reads
    them); each task's experts and gate are that task's. The representation is the shared
    experts' outputs, ``(batch, n_shared, width)``; each task's own experts read ``x``.

    Parameters
    ----------
    in_features, tasks, n_shared, n_specific, expert_hidden, tower_hidden, activation, towers, seed
        As for :class:`PLE`.
    shared_experts
        An experts module for the shared experts (``(batch, in) -> (batch, n, width)``)
        instead of the default :class:`BatchedExperts`.
    task_experts
        Task -> experts module of that task (all tasks), of the shared experts' width.

    Examples
    --------
    >>> import torch
    >>> model = CGC(5, {"a": 1, "b": 1}, n_shared=2, n_specific=1, expert_hidden=[8])
    >>> tuple(model.features(torch.zeros(3, 5)).shape)
    (3, 2, 8)
    >>> sorted(model.gate_weights(torch.zeros(3, 5)))
    ['a', 'b']
    """

    def __init__(
        self,
        in_features: int,
        tasks: TaskSpec,
        *,
        n_shared: int = 2,
        n_specific: int = 2,
        expert_hidden: Sequence[int] = (16,),
        tower_hidden: Sequence[int] = (8,),
        activation: str = "relu",
        shared_experts: nn.Module | None = None,
        task_experts: Mapping[str, nn.Module] | None = None,
        towers: Mapping[str, nn.Module] | None = None,
        seed: int | None = 0,
    ) -> None:
        super().__init__(
            in_features,
            tasks,
            n_levels=1,
            n_shared=n_shared,
            n_specific=n_specific,
            expert_hidden=expert_hidden,
            tower_hidden=tower_hidden,
            activation=activation,
            shared_experts=None if shared_experts is None else [shared_experts],
            task_experts=None if task_experts is None else [task_experts],
            towers=towers,
            seed=seed,
        )


# --- DSelect-k -------------------------------------------------------------------------------
def smooth_step(t: Tensor, gamma: float) -> Tensor:
    """The cubic smooth-step of Hazimeh et al.: 0 below ``-gamma/2``, 1 above ``gamma/2``,
    ``-2 t^3 / gamma^3 + 3 t / (2 gamma) + 1/2`` between (continuously differentiable)."""
    inner = -2.0 / gamma**3 * t**3 + 1.5 / gamma * t + 0.5
    return torch.where(
        t <= -gamma / 2, torch.zeros_like(t), torch.where(t >= gamma / 2, torch.ones_like(t), inner)
    )


class DSelectGate(nn.Module):
    """The DSelect-k gate of one task: ``k`` single-expert selectors mixed by a softmax.

    Selector ``i`` has ``m = ceil(log2 n)`` logits ``z_i``; expert ``l`` (binary code
    ``b(l)``) gets ``r_i(l) = prod_j S(z_ij)^b_j(l) (1 - S(z_ij))^(1 - b_j(l))``, with ``S``
    the smooth-step. The gate is ``sum_i softmax(w)_i r_i``: once every ``S(z_ij)`` is 0 or 1,
    each selector picks one expert and at most ``k`` weights are non-zero. ``per_example``:
    ``z`` and ``w`` are linear in ``x`` (the paper's example-conditioned gate); else they are
    parameters (the static gate).
    """

    def __init__(
        self,
        in_features: int,
        n_experts: int,
        k: int,
        gamma: float,
        per_example: bool,
        generator: torch.Generator,
    ) -> None:
        super().__init__()
        self.n_experts, self.k, self.gamma, self.per_example = n_experts, k, gamma, per_example
        self.m = math.ceil(math.log2(n_experts)) if n_experts > 1 else 0
        codes = [[(e >> (self.m - 1 - j)) & 1 for j in range(self.m)] for e in range(n_experts)]
        self.register_buffer(
            "codes", torch.tensor(codes, dtype=torch.bool).reshape(n_experts, self.m)
        )
        z_bound, w_bound = gamma / 100, 0.05  # the authors' initialisers
        with torch.random.fork_rng(devices=[]):
            if per_example:
                self.z = nn.Linear(in_features, k * self.m)
                self.w = nn.Linear(in_features, k)
                tensors = [(self.z.weight, z_bound), (self.z.bias, z_bound)]
                tensors += [(self.w.weight, w_bound), (self.w.bias, w_bound)]
            else:
                self.z_logits = nn.Parameter(torch.empty(k, self.m))
                self.w_logits = nn.Parameter(torch.empty(k))
                tensors = [(self.z_logits, z_bound), (self.w_logits, w_bound)]
        with torch.no_grad():
            for tensor, bound in tensors:
                tensor.uniform_(-bound, bound, generator=generator)

    @property
    def power_of_2(self) -> bool:
        return self.n_experts == 2**self.m

    def selectors(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(r, a)``: each selector's weights over the experts ``(batch, k, n)`` and the
        selectors' softmax weights ``(batch, k)``."""
        b = len(x)
        if self.per_example:
            logits = self.z(x).reshape(b, self.k, self.m)
            a = gate(self.w, x)
        else:
            logits = self.z_logits.expand(b, self.k, self.m)
            a = F.softmax(self.w_logits, dim=-1).expand(b, self.k)
        s = smooth_step(logits, self.gamma).unsqueeze(2)  # (b, k, 1, m)
        r = torch.where(self.codes, s, 1 - s).prod(dim=-1)  # (b, k, n)
        return r, a

    def forward(self, x: Tensor) -> Tensor:
        """The expert weights, ``(batch, n_experts)``."""
        r, a = self.selectors(x)
        return mix(a, r)  # sum_i a[:, i] r[:, i, :]

    def penalty(self, x: Tensor, entropy_reg: float) -> Tensor:
        """The paper's regularisers for the batch ``x``: ``entropy_reg`` times the entropy of
        every selector, and, when ``n`` is not a power of 2, ``sum 1 / (weight on the existing
        experts)`` so that no selector settles on a code without an expert. As the authors'
        code: a per-example gate sums them over the rows; a static gate, whose selectors are
        the same for every row, counts them once (not once per row, which would weigh them
        by the batch size)."""
        r, _ = self.selectors(x if self.per_example else x[:1])
        total = -entropy_reg * (r * torch.log(r + 1e-6)).sum()
        if not self.power_of_2:
            total = total + (1.0 / r.sum(dim=-1)).sum()
        return total


class DSelectK(_Routed):
    """Mixture of experts with DSelect-k gates (Hazimeh et al., "DSelect-k: Differentiable
    Selection in the Mixture of Experts with Applications to Multi-Task Learning",
    NeurIPS 2021).

    As :class:`MMoE`, with each task's softmax gate replaced by a DSelect-k gate
    (:class:`DSelectGate`): ``k`` single-expert selectors on binary encodings of the experts
    through the cubic smooth-step of width ``gamma``; trained, the gate converges to at most
    ``k`` non-zero weights. Train with :meth:`regularization` added to the loss to use the
    paper's entropy regulariser (it speeds the convergence to a sparse gate).

    When ``n_experts`` is not a power of 2, some codes name no expert: a selector's weights
    sum to less than 1 until it leaves them, which the second regulariser of
    :meth:`regularization` enforces, as in the authors' code. With a power of 2 every row of
    :meth:`gate_weights` is a distribution.

    What the gradient methods see: as :class:`MMoE`, the experts are shared and each gate
    belongs to its task; the representation is the experts' outputs.

    Parameters
    ----------
    in_features, tasks, expert_hidden, tower_hidden, activation, experts, towers, seed
        As for :class:`MMoE`.
    n_experts
        Number of experts (with ``experts`` given, read from them and this is not used).
    k
        Selectors per task: the most experts a converged gate uses (``1 <= k <= n_experts``).
    gamma
        Width of the smooth-step's cubic region; 1.0 as in the authors' code (larger: slower
        convergence to a sparse gate).
    entropy_reg
        Weight of the entropy regulariser in :meth:`regularization` (the authors' code
        default, 1e-6; the paper tunes it).
    per_example
        The gate's logits are linear in ``x`` (example-conditioned, the paper's multi-task
        setting) rather than learned constants per task.

    Examples
    --------
    >>> import torch
    >>> model = DSelectK(5, ["a", "b"], n_experts=4, k=2, expert_hidden=[8])
    >>> x = torch.randn(3, 5)
    >>> tuple(model(x, task="a").shape)
    (3, 1)
    >>> weights = model.gate_weights(x)["b"]
    >>> tuple(weights.shape), bool(torch.allclose(weights.sum(1), torch.ones(3)))
    ((3, 4), True)
    >>> loss = sum(out.square().mean() for out in model(x).values()) + model.regularization(x)
    """

    def __init__(
        self,
        in_features: int,
        tasks: TaskSpec,
        *,
        n_experts: int = 8,
        k: int = 2,
        gamma: float = 1.0,
        entropy_reg: float = 1e-6,
        per_example: bool = True,
        expert_hidden: Sequence[int] = (16,),
        tower_hidden: Sequence[int] = (8,),
        activation: str = "relu",
        experts: nn.Module | None = None,
        towers: Mapping[str, nn.Module] | None = None,
        seed: int | None = 0,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        sizes = self._set_tasks(tasks)
        check_count(name, "in_features", in_features)
        check_count(name, "k", k)
        if not gamma > 0:
            raise ValueError(f"{name}: gamma must be positive, got {gamma!r}")
        if not entropy_reg >= 0:
            raise ValueError(f"{name}: entropy_reg must be >= 0, got {entropy_reg!r}")
        generator = _model_generator(seed)
        if experts is None:
            check_count(name, "n_experts", n_experts)
            if k > n_experts:
                raise ValueError(
                    f"{name}: k={k} selectors cannot pick more than the n_experts={n_experts} "
                    "experts; use k <= n_experts"
                )
            experts = BatchedExperts(
                n_experts, in_features, expert_hidden, activation, generator=generator
            )
        n_experts, width = expert_outputs(name, "experts", experts, in_features)
        if k > n_experts:
            raise ValueError(
                f"{name}: k={k} selectors cannot pick more than the {n_experts} experts given; "
                "use k <= n_experts"
            )
        self.in_features, self.n_experts, self.width = in_features, n_experts, width
        self.k, self.gamma, self.entropy_reg = k, gamma, entropy_reg
        self.per_example = per_example
        self.experts = experts
        self.gates = nn.ModuleDict(
            {
                t: DSelectGate(in_features, n_experts, k, gamma, per_example, generator)
                for t in self.task_names
            }
        )
        self.towers = build_towers(name, sizes, towers, width, tower_hidden, activation, generator)
        self._refuse_tied_parts()

    def _features(self, x: Tensor) -> Tensor:
        return self.experts(x)

    def _head(self, task: str, z: Tensor, x: Tensor) -> Tensor:
        return self.towers[task](mix(self.gates[task](x), z))

    def gate_weights(self, x: Tensor) -> dict[str, Tensor]:
        """Each task's gate, ``{task: (batch, n_experts)}`` (rows sum to 1 when ``n_experts``
        is a power of 2; see the class docstring)."""
        return {t: self.gates[t](x) for t in self.task_names}

    @property
    def regularization_sums_rows(self) -> bool:
        """Whether :meth:`regularization` sums over the rows of ``x`` (per-example gates, as
        the authors' code): a data-parallel fit then adds the processes' sums instead of
        averaging them. A static gate's counts once, like a term of the parameters alone."""
        return self.per_example

    def regularization(self, x: Tensor) -> Tensor:
        """The paper's regularisers of every task's gate on the batch ``x``; add it to the
        training loss (the gradient engine does not add it by itself)."""
        return sum(
            (self.gates[t].penalty(x, self.entropy_reg) for t in self.task_names),
            start=x.new_zeros(()),
        )

    def shared_parameters(self) -> list[nn.Parameter]:
        """The experts' parameters: every task's gate reads every expert."""
        return list(self.experts.parameters())

    def _owned(self) -> dict[str, list[nn.Module]]:
        return {t: [self.gates[t], self.towers[t]] for t in self.task_names}


__all__ = ["CGC", "PLE", "DSelectGate", "DSelectK", "MMoE", "SharedBottom"]
