"""Train / stop / test splits."""

from __future__ import annotations

from collections.abc import Sequence

from ._multitarget import MultiTargetData

SPLIT_NAMES = ("train", "stop", "test")


def split(
    data: MultiTargetData, fractions: Sequence[float] = (0.05, 0.45, 0.5)
) -> tuple[MultiTargetData, MultiTargetData, MultiTargetData]:
    """Cut ``data`` into consecutive train, stop and test parts.

    The default 1:9:10 proportions take the first 5% of rows for training, the next 45% for the
    early-stopping set and the last 50% for the test set. Rows are not shuffled: the synthetic
    generators draw them independently already.

    Examples
    --------
    >>> import numpy as np
    >>> train, stop, test = split(MultiTargetData(np.arange(20.0), {"a": np.arange(20.0)}))
    >>> len(train), len(stop), len(test)
    (1, 9, 10)
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(f"fractions must be 3 non-negative numbers summing to 1, got {fractions}")
    n = len(data)
    first = round(n * fractions[0])
    second = first + round(n * fractions[1])
    bounds = {"train": (0, first), "stop": (first, second), "test": (second, n)}
    for name, (a, b) in bounds.items():
        if b <= a:
            raise ValueError(
                f"the {name} split is empty: {n} rows cut in fractions {tuple(fractions)}"
            )
    train, stop, test = (data.subset(slice(a, b)) for a, b in bounds.values())
    return train, stop, test
