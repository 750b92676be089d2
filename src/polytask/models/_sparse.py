"""A linear layer for sparse (bag-of-words) inputs."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SparseLinear(nn.Module):
    """``y = x W + b`` for sparse CSR inputs, computed as a weighted bag of embedding rows.

    ``nn.Linear`` accepts a sparse CSR batch too, but its backward pass goes through a slow
    generic sparse kernel; ``embedding_bag`` gathers only the rows of the words present and its
    backward scatters into them. Dense inputs are accepted as well (a plain matmul), so the
    same model serves both. Initialised like ``nn.Linear`` (or Glorot-uniform), from its own
    generator.

    Parameters
    ----------
    in_features, out_features
        Vocabulary size and output width.
    init
        ``"torch"`` (``nn.Linear``'s default) or ``"glorot"``.
    seed
        Seed of the initialisation (the global RNG is not touched).

    Raises
    ------
    ValueError
        From the forward pass, when a batch is not of shape ``(n, in_features)`` (e.g. bag of
        words from a vectorizer refitted on another vocabulary).

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> from polytask.data import csr_batch
    >>> layer = SparseLinear(5, 2)
    >>> x = sp.csr_matrix(np.eye(5, dtype=np.float32)[:3])
    >>> torch.allclose(layer(csr_batch(x)), layer(torch.from_numpy(x.toarray())))
    True
    """

    def __init__(
        self, in_features: int, out_features: int, *, init: str = "torch", seed: int | None = 0
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        # stored (in, out): one contiguous row per input feature, as embedding_bag gathers them
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        self.bias = nn.Parameter(torch.empty(out_features))
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        with torch.no_grad():
            if init == "glorot":
                bound = math.sqrt(6 / (in_features + out_features))
                self.weight.uniform_(-bound, bound, generator=generator)
                self.bias.zero_()
            elif init == "torch":
                bound = 1 / math.sqrt(in_features)  # kaiming_uniform(a=sqrt(5)) on fan_in
                self.weight.uniform_(-bound, bound, generator=generator)
                self.bias.uniform_(-bound, bound, generator=generator)
            else:
                raise ValueError(f"init must be 'glorot' or 'torch', got {init!r}")

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 2:
            raise ValueError(
                f"SparseLinear expects a batch of shape (n, {self.in_features}), "
                f"got shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.in_features:  # a CSR batch would gather wrong rows, or fail
            raise ValueError(
                f"SparseLinear expects {self.in_features} input columns, the batch has "
                f"{x.shape[1]} (was the vectorizer refitted?)"
            )
        if x.layout == torch.sparse_csr:
            crow = x.crow_indices()
            out = F.embedding_bag(
                x.col_indices(),
                self.weight,
                crow[:-1],
                mode="sum",
                per_sample_weights=x.values().to(self.weight.dtype),
                include_last_offset=False,
            )
            return out + self.bias
        if x.is_sparse:
            x = x.to_dense()
        return torch.addmm(self.bias, x.to(self.weight.dtype), self.weight)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"
