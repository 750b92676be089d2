"""Device selection shared by the trainer, evaluation and the CLI."""

from __future__ import annotations

import torch

DEVICE_CHOICES = "'auto', 'cpu', 'cuda' or 'cuda:<index>' (or another torch device such as 'mps')"


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks CUDA when it is available, else the CPU; anything else is checked.

    Parameters
    ----------
    device
        ``"auto"``, a torch device string (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``...)
        or a :class:`torch.device`.

    Returns
    -------
    torch.device
        The device to use.

    Raises
    ------
    ValueError
        When ``device`` is not a device torch knows (``"gpu"``), or asks for CUDA (or a CUDA
        index, or another accelerator such as ``"mps"``) that this machine does not have. The
        message names the valid choices.

    Examples
    --------
    >>> resolve_device("cpu")
    device(type='cpu')
    >>> resolve_device("gpu")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: unknown device 'gpu': choose 'auto', 'cpu', 'cuda' or 'cuda:<index>' ...
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = parse_device(device)
    if resolved.type == "cuda":
        _check_cuda(device, resolved)
    elif resolved.type != "cpu":  # mps, xpu...: a device torch knows, maybe not built or here
        try:
            torch.empty(0, device=resolved)
        except (RuntimeError, AssertionError) as error:  # torch asserts for an XPU-less build
            first = str(error).split(". ")[0].splitlines()[0]  # torch's messages run long
            raise ValueError(
                f"device {device!r} is not available here (this torch build or this machine "
                f"has no {resolved.type} device: {first}); choose {DEVICE_CHOICES}"
            ) from None
    return resolved


def parse_device(device: str | torch.device) -> torch.device:
    """``device`` as a :class:`torch.device`, without asking whether this machine has it; a
    name torch does not know (``"gpu"``), or ``"meta"``, is a ValueError naming the choices."""
    try:
        resolved = device if isinstance(device, torch.device) else torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}: choose {DEVICE_CHOICES}") from None
    if resolved.type == "meta":  # tensors there hold no values: nothing could be computed
        raise ValueError(f"device {device!r} holds no data (shapes only): choose {DEVICE_CHOICES}")
    return resolved


def _check_cuda(asked: str, resolved: torch.device) -> None:
    if not torch.cuda.is_available():
        raise ValueError(f"device {asked!r} was asked for, but CUDA is not available here")
    count = torch.cuda.device_count()
    if resolved.index is not None and resolved.index >= count:
        raise ValueError(
            f"device {asked!r} was asked for, but this machine has {count} CUDA device(s): "
            f"use 'cuda:0' to 'cuda:{count - 1}'"
        )
