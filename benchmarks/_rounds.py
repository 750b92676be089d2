"""What the benchmarks share: the order of alternating rounds and the spread of their ratios."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np

T = TypeVar("T")


def in_turn(round_: int, sides: Sequence[T]) -> Sequence[T]:
    """The sides in the order they run in round ``round_``: as given in even rounds, reversed
    in odd ones, so that drifts of a shared machine hit every side alike."""
    return sides if round_ % 2 == 0 else sides[::-1]


def spread(ratios: list[float]) -> str:
    """``min a, IQR [q25, q75], max b`` of per-round ratios (printed beside their median)."""
    q25, q75 = np.percentile(ratios, [25, 75])
    return f"min {min(ratios):.2f}, IQR [{q25:.2f}, {q75:.2f}], max {max(ratios):.2f}"
