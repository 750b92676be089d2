"""The model protocol: what a multi-task model tells polytask, and an adapter that makes a
user's own module tell it.

A model polytask can train or run a gradient method on says three things:

- ``task_names``: its tasks, in order; ``model(x)`` gives ``{task: output}`` and
  ``model(x, task=name)`` one task's output;
- ``shared_parameters()``: the parameters every task's gradient reaches (what gradient methods
  take the task Jacobian on);
- optionally, the shared representation every task reads: ``features(x)`` and
  ``heads_forward(z, task=None)`` (``z`` may be a mapping task -> its own copy of the
  representation, when ``splits_per_task`` is true). It enables the representation path and
  the cheap exact path; without it the exact path takes one batched backward from the losses.

Optionally too, ``parameter_owners()``: for each task-specific parameter, its task (or one task
per output row, for a layer whose rows are divided among tasks), so the engine can weight each
head's gradient without a second pass; when a model does not say, the adapter reads it off the
graph of one forward pass.

:class:`~polytask.MultiTaskModel` implements all of it. :func:`as_multitask` wraps a module that
returns a dict of outputs, or one routed by task (``forward(x, task_id)``), naming its shared
part once or inferring it from the autograd graph.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from .._features import TaskFeatures
from .._graph import reached_parameters


@runtime_checkable
class MultiTaskModule(Protocol):
    """What polytask needs of a multi-task model (see the module docstring)."""

    task_names: Sequence[str]

    def shared_parameters(self) -> Iterable[nn.Parameter]:
        """The parameters every task's gradient reaches."""
        ...

    def __call__(self, x: Any, task: str | None = None) -> Mapping[str, Tensor] | Tensor: ...


def has_representation(model: nn.Module) -> bool:
    """Whether ``model`` exposes the shared representation (``features`` and ``heads_forward``)."""
    if not (
        callable(getattr(model, "features", None))
        and callable(getattr(model, "heads_forward", None))
    ):
        return False
    return bool(getattr(model, "exposes_representation", True))


def model_dtype(model: nn.Module) -> torch.dtype:
    """The floating dtype of the model's parameters, which its inputs and real-valued targets
    take (float32 when it has none, or several)."""
    kinds = {p.dtype for p in model.parameters() if p.is_floating_point()}
    return kinds.pop() if len(kinds) == 1 else torch.float32


def splits_per_task(model: nn.Module) -> bool:
    """Whether the heads of ``model`` can read one copy of the representation per task."""
    return has_representation(model) and bool(getattr(model, "splits_per_task", False))


@contextmanager
def _evaluating(module: nn.Module) -> Iterator[None]:
    """``module`` in eval mode for the block, every submodule's own mode restored after."""
    modes = [(sub, sub.training) for sub in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for sub, training in modes:
            sub.training = training


class _Captured(Exception):  # a control-flow signal, not an error
    """Raised inside a forward pass once the shared representation is known."""

    def __init__(self, z: Tensor) -> None:
        super().__init__()
        self.z = z


class UserModel(nn.Module):
    """A user's module seen through the model protocol (made by :func:`as_multitask`).

    ``model(x)`` gives ``{task: output}``; ``model(x, task=name)`` one task's output. The
    wrapped module is ``self.module``: its parameters are the very same tensors, so an optimizer
    built on the user's module trains this one too.
    """

    def __init__(
        self,
        module: nn.Module,
        task_names: Sequence[str],
        shared: str | Sequence[str] | Iterable[nn.Parameter] | None,
        route: str | None,
        keys: Mapping[str, Any] | None,
    ) -> None:
        super().__init__()
        self.module = module
        self.task_names: tuple[str, ...] = tuple(task_names)
        _check_names(self.task_names, type(module).__name__)
        self.route = route
        self.keys = dict(keys) if keys is not None else {t: t for t in self.task_names}
        missing = [t for t in self.task_names if t not in self.keys]
        if missing:
            raise ValueError(f"as_multitask: keys give no routing key for tasks {missing}")
        if route is not None:
            _check_route(module, route)
        self._trunk: nn.Module | None = None
        self._trunk_name: str | None = None
        self._shared: list[nn.Parameter] | None = None
        self._owners: dict[int, str] | None = None
        self._inputs: tuple[Tensor, Any] | None = None
        self._feature_parameters_read = False
        if isinstance(shared, str):
            self._use_trunk(shared)
        elif shared is not None:
            names = list(shared)
            if names and all(isinstance(n, str) for n in names):
                params = [p for n in names for p in self._submodule(n).parameters()]
                if len(names) == 1:
                    self._use_trunk(names[0])
            else:
                params = names
            self._shared = _unique(params)
            if not self._shared:
                raise ValueError(f"as_multitask: shared={shared!r} holds no parameter")

    # --- the shared part ------------------------------------------------------------------
    def _submodule(self, name: str) -> nn.Module:
        try:
            return self.module.get_submodule(name)
        except AttributeError:
            children = [n for n, _ in self.module.named_children()]
            raise ValueError(
                f"as_multitask: {type(self.module).__name__} has no submodule {name!r}; "
                f"its submodules are {children}"
            ) from None

    def _use_trunk(self, name: str) -> None:
        self._trunk = self._submodule(name)
        self._trunk_name = name
        self._shared = list(self._trunk.parameters())
        if not self._shared:
            raise ValueError(f"as_multitask: the shared submodule {name!r} has no parameter")

    def shared_parameters(self) -> list[nn.Parameter]:
        """The shared parameters: named by ``shared`` (with a submodule, also every layer its
        output depends on, read off the first tracked :meth:`features` call), or read off the
        graph of the first forward pass that tracked gradients (those that two or more tasks'
        outputs reach)."""
        if self._shared is None:
            raise RuntimeError(
                f"{type(self.module).__name__}: polytask cannot tell which parameters are "
                "shared before a forward pass with gradients; pass shared='<submodule>' to "
                "as_multitask"
            )
        return list(self._shared)

    def parameter_owners(self) -> dict[int, str] | None:
        """Task-specific parameter id -> its task, read off the first tracked forward pass."""
        return self._owners

    @property
    def exposes_representation(self) -> bool:
        """Whether a shared submodule was named, so the representation path can read its
        output (captured, or substituted per task, during the module's own forward)."""
        return self._trunk is not None

    @property
    def splits_per_task(self) -> bool:
        """Whether each task's head can read its own copy of the representation: a named
        shared submodule and a task-routed forward (one forward per task)."""
        return self._trunk is not None and self.route is not None

    # --- forward ----------------------------------------------------------------------------
    def _call(self, x: Any, task: str) -> Tensor:
        key = self.keys[task]
        try:
            return self.module(x, **{self.route: key})
        except (IndexError, KeyError) as error:  # a key the module has no branch for
            raise ValueError(
                f"task {task!r}: {type(self.module).__name__}.forward(x, {self.route}={key!r}) "
                f"failed ({type(error).__name__}: {error}); is {key!r} one of its task keys?"
            ) from error

    def _all(self, x: Any) -> dict[str, Tensor]:
        if self.route is not None:
            return {t: self._call(x, t) for t in self.task_names}
        outputs = self.module(x)
        if not isinstance(outputs, Mapping):
            raise TypeError(
                f"{type(self.module).__name__} returned {type(outputs).__name__}, not a dict of "
                "outputs; for a module routed by task pass route='<argument name>' to "
                "as_multitask"
            )
        missing = [t for t in self.task_names if t not in outputs]
        if missing:
            raise KeyError(
                f"{type(self.module).__name__}'s outputs {list(outputs)} lack tasks {missing}"
            )
        return {t: outputs[t] for t in self.task_names}

    def forward(self, x: Any, task: str | None = None) -> dict[str, Tensor] | Tensor:
        """All tasks' outputs as ``{task: output}``, or only ``task``'s output."""
        if task is not None:
            self._check_task(task)
            if self.route is not None:
                return self._call(x, task)
            return self._all(x)[task]
        outputs = self._all(x)
        if self._owners is None and any(o.requires_grad for o in outputs.values()):
            self._read_graph(outputs)
        return outputs

    def _check_task(self, task: str) -> None:
        if task not in self.task_names:
            raise KeyError(f"unknown task {task!r}; the model's tasks are {list(self.task_names)}")

    def _read_graph(self, outputs: Mapping[str, Tensor]) -> None:
        """Which parameters each task's output reaches: the shared ones (two tasks or more),
        when not named, and each task's own."""
        params = {id(p): p for p in self.module.parameters() if p.requires_grad}
        reached = {t: reached_parameters(out) & params.keys() for t, out in outputs.items()}
        count: dict[int, list[str]] = {}
        for task, ids in reached.items():
            for pid in ids:
                count.setdefault(pid, []).append(task)
        self._owners = {pid: tasks[0] for pid, tasks in count.items() if len(tasks) == 1}
        # whatever two tasks' outputs reach is shared, named or not
        reached_twice = {pid for pid in params if len(count.get(pid, ())) > 1}
        if self._shared is None:
            shared = [params[pid] for pid in params if pid in reached_twice]
            if not shared and len(self.task_names) > 1:
                raise ValueError(
                    f"{type(self.module).__name__}: no parameter is reached by two tasks' "
                    "outputs, so polytask cannot tell what is shared; pass "
                    "shared='<submodule>' to as_multitask"
                )
            self._shared = shared
            self._adopt_trunk(shared)
        else:
            named = {id(p) for p in self._shared}
            self._shared = [
                p for p in self.module.parameters() if id(p) in named or id(p) in reached_twice
            ]

    def _adopt_trunk(self, shared: list[nn.Parameter]) -> None:
        """When the inferred shared parameters are exactly one submodule's, use it as the
        trunk (its output is then the shared representation)."""
        wanted = {id(p) for p in shared}
        for name, sub in self.module.named_modules():
            if name and {id(p) for p in sub.parameters() if p.requires_grad} == wanted:
                self._trunk, self._trunk_name = sub, name
                return

    # --- the representation ---------------------------------------------------------------
    def features(self, x: Any) -> Tensor:
        """The output of the shared submodule for ``x`` (the module runs up to it only)."""
        trunk = self._require_trunk()
        original = trunk.forward

        def capture(*args: Any, **kwargs: Any) -> Tensor:
            raise _Captured(original(*args, **kwargs))

        trunk.forward = capture
        try:
            self._all_first(x)
        except _Captured as captured:
            z = captured.z
        else:
            raise RuntimeError(
                f"{type(self.module).__name__}'s forward never called its shared submodule "
                f"{self._trunk_name!r}"
            )
        finally:
            del trunk.forward
        self._inputs = (z, x)
        if not self._feature_parameters_read and z.requires_grad:
            if self._owners is None:
                # what the tasks share past the submodule (a layer two tasks' heads read) is
                # shared too: read it now, so that the shared parameters do not depend on
                # whether the module was called before (one more forward, once, in eval mode:
                # no batch-norm statistics or dropout draws are spent on it)
                with _evaluating(self.module):
                    self._read_graph(self._all(x))
            self._read_feature_parameters(z)
        return z

    def _read_feature_parameters(self, z: Tensor) -> None:
        """Everything the representation depends on is shared (layers the module applies
        before the named submodule too), or its gradient would be lost on the paths that
        stop at the features."""
        reached = reached_parameters(z)
        named = {id(p) for p in self._shared or ()}
        self._shared = [p for p in self.module.parameters() if id(p) in reached or id(p) in named]
        self._feature_parameters_read = True

    def _all_first(self, x: Any) -> None:
        if self.route is not None:
            self._call(x, self.task_names[0])
        else:
            self.module(x)

    def heads_forward(
        self, h: Tensor | Mapping[str, Tensor], task: str | None = None
    ) -> dict[str, Tensor] | Tensor:
        """The heads on a representation from :meth:`features` (or per-task copies of it):
        the module's forward with the shared submodule's output replaced by ``h``."""
        trunk = self._require_trunk()
        base = h.z if isinstance(h, TaskFeatures) else h
        if isinstance(h, Mapping) and not isinstance(h, TaskFeatures):
            raise TypeError("heads_forward takes the features or a TaskFeatures of them")
        if self._inputs is None or self._inputs[0] is not base:
            raise ValueError(
                "heads_forward reads features made by this model's features(x) for the same batch"
            )
        x = self._inputs[1]
        if isinstance(h, TaskFeatures) and self.route is None:
            raise TypeError(
                f"{type(self.module).__name__} computes every head in one call, so its heads "
                "cannot read one copy of the features per task"
            )
        # one substitute for the whole call (setting a module attribute is not free): each
        # forward of the module gets the value of its task, and may call the trunk once
        value: list[Any] = [h]
        calls = [0]

        def substitute(*args: Any, **kwargs: Any) -> Tensor:
            calls[0] += 1
            if calls[0] > 1:
                raise RuntimeError(
                    f"{type(self.module).__name__} calls its shared submodule "
                    f"{self._trunk_name!r} more than once in one forward pass; the "
                    "representation path needs one call"
                )
            return value[0]

        def run(name: str, features: Tensor) -> Tensor:
            value[0], calls[0] = features, 0
            return self._call(x, name)

        trunk.forward = substitute
        try:
            if self.route is None:
                outputs = self._all(x)
            else:
                names = [task] if task is not None else list(self.task_names)
                if isinstance(h, TaskFeatures):
                    names = [n for n in names if n in h]
                outputs = {n: run(n, h[n] if isinstance(h, TaskFeatures) else h) for n in names}
        finally:
            del trunk.forward
        return outputs[task] if task is not None else outputs

    def _require_trunk(self) -> nn.Module:
        if self._trunk is None:
            raise TypeError(
                f"{type(self.module).__name__} exposes no shared representation: pass "
                "shared='<submodule>' (the submodule whose output every task reads) to "
                "as_multitask"
            )
        return self._trunk

    def extra_repr(self) -> str:
        parts = [f"tasks={list(self.task_names)}"]
        if self.route is not None:
            parts.append(f"route={self.route!r}")
        if self._trunk_name is not None:
            parts.append(f"shared={self._trunk_name!r}")
        return ", ".join(parts)


def _unique(params: Iterable[nn.Parameter]) -> list[nn.Parameter]:
    seen: dict[int, nn.Parameter] = {}
    for p in params:
        if not isinstance(p, Tensor):
            raise TypeError(
                f"as_multitask: shared must name submodules or hold parameters, got {p!r}"
            )
        seen.setdefault(id(p), p)
    return list(seen.values())


def _check_names(names: Sequence[str], owner: str) -> None:
    if not names:
        raise ValueError(f"{owner}: needs at least one task")
    if len(set(names)) != len(names):
        raise ValueError(f"{owner}: task names must be unique, got {list(names)}")


def _check_route(module: nn.Module, route: str) -> None:
    """``route`` must name an argument of ``module.forward`` (any name under ``**kwargs``)."""
    try:
        parameters = inspect.signature(module.forward).parameters
    except (TypeError, ValueError):  # a forward without a signature: nothing to check
        return
    if route in parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()
    ):
        return
    raise ValueError(
        f"as_multitask: route={route!r} is not an argument of {type(module).__name__}.forward"
        f"({', '.join(parameters)})"
    )


def as_multitask(
    module: nn.Module,
    tasks: Sequence[str] | Sequence[Any] | None = None,
    *,
    shared: str | Sequence[str] | Iterable[nn.Parameter] | None = None,
    route: str | None = None,
    keys: Mapping[str, Any] | Sequence[Any] | None = None,
) -> nn.Module:
    """``module`` seen through polytask's model protocol.

    Parameters
    ----------
    module
        A module that returns a dict ``{task: output}`` from ``module(x)``, or one routed by
        task: ``module(x, task_id)`` (give ``route``).
    tasks
        Task names (or :class:`~polytask.Task` objects), in order. Optional for a module that
        already implements the protocol.
    shared
        The shared part: a submodule's name (its output becomes the shared representation,
        which enables the representation path), several names, or the parameters themselves.
        ``None`` infers it from the first forward pass with gradients: the parameters that two
        or more tasks' outputs reach (and the submodule holding exactly those, if one does).
    route
        The name of the argument that selects the task, e.g. ``"task_id"`` for
        ``forward(self, x, task_id)``; ``None`` for a dict-output module.
    keys
        The value passed as ``route`` for each task: a mapping task -> key, or a sequence in
        task order (e.g. ``range(T)`` for an integer id). Default: the task names.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> class Net(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.trunk = nn.Linear(3, 8)
    ...         self.heads = nn.ModuleList([nn.Linear(8, 1), nn.Linear(8, 2)])
    ...     def forward(self, x, task_id):
    ...         return self.heads[task_id](torch.relu(self.trunk(x)))
    >>> model = as_multitask(Net(), ["a", "b"], shared="trunk", route="task_id", keys=[0, 1])
    >>> {t: tuple(out.shape) for t, out in model(torch.zeros(4, 3)).items()}
    {'a': (4, 1), 'b': (4, 2)}
    >>> len(model.shared_parameters())
    2
    """
    if tasks is None:
        if isinstance(module, MultiTaskModule) and shared is None and route is None:
            return module
        raise ValueError(
            f"as_multitask: give the task names of {type(module).__name__} (tasks=[...])"
        )
    names = [getattr(t, "name", t) for t in tasks]
    if keys is not None and not isinstance(keys, Mapping):
        keys = list(keys)
        if len(keys) != len(names):
            raise ValueError(
                f"as_multitask: keys has {len(keys)} entries for the {len(names)} tasks {names} "
                "(one routing key per task, in task order)"
            )
        keys = dict(zip(names, keys, strict=True))
    return UserModel(module, names, shared, route, keys)
