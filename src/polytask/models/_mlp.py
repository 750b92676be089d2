"""Multi-layer perceptron builder with a documented initialisation."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

Init = Literal["glorot", "torch"]

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "elu": nn.ELU,
    "sigmoid": nn.Sigmoid,
    "silu": nn.SiLU,
}


def init_linear(layer: nn.Linear, init: Init, generator: torch.Generator | None) -> None:
    """Initialise a linear layer in place, from ``generator`` rather than the global RNG.

    ``"glorot"`` is Keras's default (Glorot-uniform weights, zero biases): a deep ReLU stack
    initialised so trains where PyTorch's default often stalls at a constant prediction.
    ``"torch"`` reproduces PyTorch's default (Kaiming-uniform with a = sqrt(5), uniform biases).
    """
    with torch.no_grad():
        if init == "glorot":
            nn.init.xavier_uniform_(layer.weight, generator=generator)
            if layer.bias is not None:
                layer.bias.zero_()
        elif init == "torch":
            nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
            if layer.bias is not None:
                bound = 1 / math.sqrt(layer.in_features) if layer.in_features else 0.0
                layer.bias.uniform_(-bound, bound, generator=generator)
        else:
            raise ValueError(f"init must be 'glorot' or 'torch', got {init!r}")


def mlp(
    in_features: int,
    width: int,
    depth: int,
    *,
    out_features: int | None = None,
    activation: str = "relu",
    init: Init = "glorot",
    seed: int | None = 0,
) -> nn.Sequential:
    """A stack of ``depth`` dense layers of ``width`` units, each followed by ``activation``.

    Parameters
    ----------
    in_features
        Input width.
    width, depth
        Units per hidden layer and number of hidden layers.
    out_features
        If given, a final linear layer (no activation) of this width is appended.
    activation
        One of ``relu``, ``tanh``, ``gelu``, ``elu``, ``sigmoid``, ``silu``.
    init
        ``"glorot"`` (default; Keras's Glorot-uniform weights and zero biases) or ``"torch"``
        (PyTorch's default). With ``"torch"``, a 10-layer ReLU stack of 100 units often stalls at
        a constant prediction on the heteroscedastic experiment.
    seed
        Seed of the initialisation; the global RNG is not touched.

    Examples
    --------
    >>> net = mlp(1, width=100, depth=10, out_features=5)
    >>> sum(isinstance(m, nn.Linear) for m in net)
    11
    """
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
    if depth < 0 or width < 1 or in_features < 1:
        raise ValueError("mlp needs in_features >= 1, width >= 1 and depth >= 0")
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    layers: list[nn.Module] = []
    fan_in = in_features
    # nn.Linear's constructor draws from the global RNG; keep the caller's stream untouched.
    with torch.random.fork_rng(devices=[]):
        for _ in range(depth):
            layers += [nn.Linear(fan_in, width), _ACTIVATIONS[activation]()]
            fan_in = width
        if out_features is not None:
            layers.append(nn.Linear(fan_in, out_features))
    for layer in layers:
        if isinstance(layer, nn.Linear):
            init_linear(layer, init, generator)
    return nn.Sequential(*layers)
