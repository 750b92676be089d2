"""One validation of a fine -> coarse class mapping, shared by the PyTorch and Keras terms.

:class:`polytask.Hierarchical` and :func:`polytask.keras.hierarchical` both call
:func:`check_mapping`: once at construction (what the mapping says about itself) and once the
class counts are known (the tasks' sizes or the Keras outputs' widths), so the same bad mapping
gives the same message in both.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping, Sequence
from typing import Any


def _index(where: str, role: str, value: Any) -> int:
    """``value`` as a class index; bools and non-integers (``1.0``, ``"1"``) are refused."""
    if isinstance(value, bool):
        raise TypeError(f"{where}: {role} class {value!r} is a bool; class indices are integers")
    try:
        return operator.index(value)  # int, numpy integers, 0-d integer tensors
    except TypeError:
        raise TypeError(
            f"{where}: {role} class {value!r} ({type(value).__name__}) is not an integer"
        ) from None


def check_mapping(
    owner: str,
    fine: str,
    coarse: str,
    mapping: Mapping[int, int] | Sequence[int],
    n_fine: int | None = None,
    n_coarse: int | None = None,
) -> dict[int, int]:
    """Validate a fine class -> coarse class mapping and return it as a ``dict[int, int]``.

    Without class counts, checks what the mapping says about itself: integer fine classes
    ``0..n-1`` without gaps (``n`` entries), integer non-negative coarse classes, every coarse
    class from 0 to the largest one receiving at least one fine class. With ``n_fine`` and
    ``n_coarse`` (known once the tasks or outputs are), also checks the mapping against them.

    Parameters
    ----------
    owner
        Who validates (``"Hierarchical"``, ``"hierarchical"``): the messages start with
        ``owner('fine' -> 'coarse') mapping``.
    fine, coarse
        The two tasks' (or outputs') names, for the messages.
    mapping
        A mapping fine class -> coarse class, or a sequence indexed by fine class.
    n_fine, n_coarse
        The fine and coarse tasks' class counts, when known.

    Raises
    ------
    TypeError
        The mapping is neither a mapping nor a sequence, or a class is not an integer (a bool,
        a float, a string).
    ValueError
        The mapping is empty, has gaps or unknown fine classes, negative or unknown coarse
        classes, or a coarse class that receives no fine class.

    Examples
    --------
    >>> check_mapping("Hierarchical", "stars", "polarity", [0, 0, 1, 2, 2], 5, 3)
    {0: 0, 1: 0, 2: 1, 3: 2, 4: 2}
    >>> check_mapping("Hierarchical", "a", "b", [0, 0, 2])
    Traceback (most recent call last):
    ...
    ValueError: Hierarchical('a' -> 'b') mapping: coarse classes [1] receive no fine class
    """
    where = f"{owner}({fine!r} -> {coarse!r}) mapping"
    if isinstance(mapping, Mapping):
        items = list(mapping.items())
    elif isinstance(mapping, Iterable) and not isinstance(mapping, (str, bytes)):
        items = list(enumerate(mapping))  # a list, a tuple, a 1-d integer array
    else:
        raise TypeError(
            f"{where}: expected a mapping fine class -> coarse class or a sequence indexed by "
            f"fine class, got {type(mapping).__name__}"
        )
    if not items:
        raise ValueError(f"{where}: is empty; every fine class needs a coarse class")
    table = {_index(where, "fine", k): _index(where, "coarse", v) for k, v in items}
    if len(table) != len(items):  # 1 and numpy.int64(1) are the same key
        raise ValueError(f"{where}: a fine class appears twice in {dict(items)}")

    # Fine classes: n entries must be exactly 0..n-1, or 0..n_fine-1 once the count is known.
    n = len(table) if n_fine is None else n_fine
    unknown = sorted(k for k in table if not 0 <= k < n)
    if unknown:
        raise ValueError(f"{where}: unknown fine classes {unknown}; expected 0..{n - 1}")
    missing = [k for k in range(n) if k not in table]
    if missing:
        raise ValueError(f"{where}: fine classes {missing} map to no coarse class")

    # Coarse classes: non-negative, below the count when known, and every one reached.
    negative = {k: v for k, v in table.items() if v < 0}
    if negative:
        raise ValueError(f"{where}: fine -> coarse {negative} name negative coarse classes")
    if n_coarse is not None:
        beyond = {k: v for k, v in table.items() if v >= n_coarse}
        if beyond:
            raise ValueError(
                f"{where}: fine -> coarse {beyond} name unknown coarse classes; "
                f"expected 0..{n_coarse - 1}"
            )
    k = max(table.values()) + 1 if n_coarse is None else n_coarse
    empty = sorted(set(range(k)) - set(table.values()))
    if empty:
        raise ValueError(f"{where}: coarse classes {empty} receive no fine class")
    return dict(sorted(table.items()))
