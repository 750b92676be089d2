"""What the benchmarks share: the spread of per-round ratios."""

from __future__ import annotations

import numpy as np


def spread(ratios: list[float]) -> str:
    """``min a, IQR [q25, q75], max b`` of per-round ratios (printed beside their median)."""
    q25, q75 = np.percentile(ratios, [25, 75])
    return f"min {min(ratios):.2f}, IQR [{q25:.2f}, {q75:.2f}], max {max(ratios):.2f}"
