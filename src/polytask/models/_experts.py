"""Experts run as one batched product: the building block of the gated architectures.

A mixture of experts evaluates ``E`` small networks on the same rows. Written as a Python loop
over ``E`` modules that is ``E`` small matrix products per layer, each too small to keep the
processor busy; :class:`BatchedExperts` stores each layer's weights of every expert stacked,
``(E, out, in)`` (``nn.Linear``'s layout, per expert), and runs a layer for all experts at
once: one ``F.linear`` for the first layer (every expert reads the same rows), one batched
matrix product (``baddbmm``) for the others.
:class:`ExpertList` wraps expert modules of any kind (run one after the other) for experts that
cannot be stacked, and refuses two entries that share weights.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ._mlp import _ACTIVATIONS, Init


def _generator(seed: int | None) -> torch.Generator | None:
    return torch.Generator().manual_seed(seed) if seed is not None else None


class StackedLinear(nn.Module):
    """One layer of every expert: ``weight`` ``(n_experts, out, in)`` (each expert's
    ``nn.Linear`` weight), ``bias`` ``(n_experts, out)`` (zeros until
    :class:`BatchedExperts` draws them)."""

    _version = 2  # version 1 stored the weight (n_experts, in, out)

    def __init__(self, n_experts: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n_experts, out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(n_experts, out_features))

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, local_metadata: dict[str, Any], *args: Any
    ) -> None:
        # a state dict saved by version 1 holds (n_experts, in, out); one without a version (a
        # plain dict copy, as BestWeights keeps) is taken as the current layout
        key = prefix + "weight"
        if local_metadata.get("version") == 1 and isinstance(state_dict.get(key), Tensor):
            state_dict[key] = state_dict[key].transpose(1, 2)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args)

    def extra_repr(self) -> str:
        e, o, i = self.weight.shape
        return f"n_experts={e}, in_features={i}, out_features={o}"


class BatchedExperts(nn.Module):
    """``n_experts`` independent MLPs on the same input, as one batched product per layer.

    Every layer is ``activation(x @ W_e.T + b_e)`` for each expert ``e``; the weights of all the
    experts are one tensor ``(n_experts, out, in)`` (and the biases ``(n_experts, out)``), so
    a layer is one matrix product (the first) or one batched product (``baddbmm``) whatever
    the number of experts. Each expert's weights are drawn independently (no two experts
    start equal).

    Parameters
    ----------
    n_experts
        Number of experts, at least 1.
    in_features
        Input width.
    hidden
        Units of each layer, e.g. ``[16]`` for the one-layer ReLU experts of MMoE (Ma et al.,
        2018). Every layer, the last included, is followed by ``activation``; the experts'
        output width is ``hidden[-1]``.
    activation
        One of ``relu``, ``tanh``, ``gelu``, ``elu``, ``sigmoid``, ``silu``.
    init
        ``"glorot"`` (Glorot-uniform weights, zero biases; the default of :func:`~polytask.mlp`)
        or ``"torch"`` (PyTorch's ``nn.Linear`` default), per expert.
    seed
        Seed of the initialisation; the global RNG is not touched. ``None`` draws from it.
    generator
        A ``torch.Generator`` to draw the initial weights from instead of ``seed`` (a model
        building several parts draws them all from one generator).

    Shapes
    ------
    ``(batch, in_features)`` -> ``(batch, n_experts, hidden[-1])``.

    Examples
    --------
    >>> import torch
    >>> experts = BatchedExperts(8, in_features=5, hidden=[16, 4])
    >>> tuple(experts(torch.zeros(3, 5)).shape)
    (3, 8, 4)
    >>> [tuple(w.shape) for w in experts.weights]
    [(8, 16, 5), (8, 4, 16)]
    """

    def __init__(
        self,
        n_experts: int,
        in_features: int,
        hidden: Sequence[int],
        activation: str = "relu",
        *,
        init: Init = "glorot",
        seed: int | None = 0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        widths = [int(h) for h in hidden]
        if not isinstance(n_experts, int) or n_experts < 1:
            raise ValueError(f"BatchedExperts needs at least one expert, got n_experts={n_experts}")
        if in_features < 1 or not widths or min(widths) < 1:
            raise ValueError(
                "BatchedExperts needs in_features >= 1 and at least one layer of >= 1 units, "
                f"got in_features={in_features}, hidden={list(hidden)}"
            )
        if activation not in _ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}"
            )
        if init not in ("glorot", "torch"):
            raise ValueError(f"init must be 'glorot' or 'torch', got {init!r}")
        self.n_experts, self.in_features = n_experts, in_features
        self.hidden, self.activation_name, self.init = tuple(widths), activation, init
        self.activation = _ACTIVATIONS[activation]()
        gen = generator if generator is not None else _generator(seed)
        layers = []
        fan_in = in_features
        for width in widths:
            layer = StackedLinear(n_experts, fan_in, width)
            # drawn (E, in, out), the order of earlier versions: a seed gives the same experts
            drawn = torch.empty(n_experts, fan_in, width)
            with torch.no_grad():
                if init == "glorot":
                    bound = math.sqrt(6.0 / (fan_in + width))
                    drawn.uniform_(-bound, bound, generator=gen)
                else:  # nn.Linear's default: kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in))
                    bound = 1.0 / math.sqrt(fan_in)
                    drawn.uniform_(-bound, bound, generator=gen)
                    layer.bias.uniform_(-bound, bound, generator=gen)
                layer.weight.copy_(drawn.transpose(1, 2))
            layers.append(layer)
            fan_in = width
        self.layers = nn.ModuleList(layers)

    @property
    def weights(self) -> list[nn.Parameter]:
        """Each layer's stacked weights, ``(n_experts, out, in)``."""
        return [layer.weight for layer in self.layers]

    @property
    def biases(self) -> list[nn.Parameter]:
        """Each layer's stacked biases, ``(n_experts, out)``."""
        return [layer.bias for layer in self.layers]

    @property
    def out_features(self) -> int:
        """Width of each expert's output."""
        return self.hidden[-1]

    def forward(self, x: Tensor) -> Tensor:
        """Every expert's output, ``(batch, n_experts, out_features)``."""
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(
                f"BatchedExperts: expected inputs (batch, {self.in_features}), got {tuple(x.shape)}"
            )
        # first layer: every expert reads the same rows, so all of them are one nn.Linear of
        # E * out units: (E, out, in) views as (E * out, in) without a copy, and the bias is
        # added inside the product (addmm), not by a separate op
        first, *rest = self.layers
        e, width, fan_in = first.weight.shape
        h = F.linear(x, first.weight.view(e * width, fan_in), first.bias.view(e * width))
        h = self.activation(h).view(len(x), e, width)
        if not rest:
            return h
        # then each expert reads its own activations: one batched product over the experts,
        # (E, batch, in) @ (E, in, out)
        h = h.transpose(0, 1)
        for layer in rest:
            h = self.activation(
                torch.baddbmm(layer.bias.unsqueeze(1), h, layer.weight.transpose(1, 2))
            )
        return h.transpose(0, 1)

    def unbatched(self) -> ExpertList:
        """The same experts as separate modules (copies of the weights) run in a Python loop:
        the usual implementation, for comparison (it gives the same outputs)."""
        modules = []
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            for e in range(self.n_experts):
                layers: list[nn.Module] = []
                for weight, bias in zip(self.weights, self.biases, strict=True):
                    linear = nn.Linear(weight.shape[2], weight.shape[1])
                    linear.weight.copy_(weight[e])
                    linear.bias.copy_(bias[e])
                    layers += [linear, _ACTIVATIONS[self.activation_name]()]
                modules.append(nn.Sequential(*layers))
        return ExpertList(modules)

    def extra_repr(self) -> str:
        return (
            f"n_experts={self.n_experts}, in_features={self.in_features}, "
            f"hidden={list(self.hidden)}, activation={self.activation_name!r}"
        )


def refuse_repeats(owner: str, parts: Mapping[str, nn.Module], what: str = "part") -> None:
    """Refuse two of ``parts`` (label -> module) that share a parameter: ``[module] * n``
    repeats one module ``n`` times, so the parts would be one part with tied weights."""
    seen: dict[int, str] = {}
    for label, part in parts.items():
        for p in part.parameters():
            other = seen.setdefault(id(p), label)
            if other != label:
                raise ValueError(
                    f"{owner}: {other} and {label} share parameters (the same module given "
                    f"twice, as [module] * n does); build each {what} anew"
                )


class ExpertList(nn.Module):
    """Expert modules of any kind, run one after the other and stacked: ``(batch, E, ...)``.

    For experts that cannot be stacked into :class:`BatchedExperts` (convolutional experts, or
    experts of different architectures with the same output shape). Two entries that are the
    same module, or share a parameter, are refused: ``[module] * n`` repeats one module ``n``
    times, so the "experts" would be one expert with tied weights.

    Examples
    --------
    >>> import torch
    >>> experts = ExpertList([nn.Linear(3, 4), nn.Linear(3, 4)])
    >>> tuple(experts(torch.zeros(2, 3)).shape)
    (2, 2, 4)
    >>> layer = nn.Linear(3, 4)
    >>> ExpertList([layer] * 2)
    Traceback (most recent call last):
    ...
    ValueError: ExpertList: expert 0 and expert 1 share parameters (the same module given ...
    """

    def __init__(self, experts: Sequence[nn.Module]) -> None:
        super().__init__()
        experts = list(experts)
        if not experts:
            raise ValueError("ExpertList needs at least one expert")
        for i, expert in enumerate(experts):
            if not isinstance(expert, nn.Module):
                raise TypeError(f"ExpertList: expert {i} is not an nn.Module: {expert!r}")
        refuse_repeats("ExpertList", {f"expert {i}": e for i, e in enumerate(experts)}, "expert")
        self.experts = nn.ModuleList(experts)
        self.n_experts = len(experts)

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([expert(x) for expert in self.experts], dim=1)


__all__ = ["BatchedExperts", "ExpertList"]
