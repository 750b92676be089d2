"""The declarative description of a benchmark data set: where its files are, how they are read
and split, its tasks, its default model and how long to train it."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..data import MultiTargetData, TaskData
from ..tasks import Task

Part = MultiTargetData | Mapping[str, TaskData]
"""One split of a data set: one dataset with a target column per task, or one per task."""


@dataclass(frozen=True)
class Splits:
    """The train, stop and test parts of one replication (preprocessing fitted on ``train``).

    Regression targets are standardised with the training rows' mean and standard deviation
    (so equal weights mean equal scale); ``target_scale`` keeps each regression target's
    training standard deviation (an RMSE times it is in the file's units).
    """

    train: Part
    stop: Part
    test: Part
    target_scale: Mapping[str, float] | None = None


class DataFormatError(ValueError):
    """A data file that does not have its documented layout; the message names the file, the
    line (1-based, the header included) and the column of the first problem."""


@dataclass(frozen=True)
class DatasetSpec:
    """A benchmark data set, described once; adding a data set is one short module.

    Parameters
    ----------
    name
        The name experiments and the CLI use (``energy``).
    folder
        Its folder under the shared data directory (``energy_efficiency``).
    description
        One line: the tasks and the source.
    tasks
        The tasks, in order.
    check
        ``check(folder)`` reads and validates every file the data set needs, and raises
        :class:`DataFormatError` (file, line, column) or ``FileNotFoundError``; called before
        any training.
    load
        ``load(folder, seed)`` gives the :class:`Splits` of the replication drawn from ``seed``
        (the same seed gives the same splits).
    model
        ``model(input_shape, tasks, seed)``: the default network for ``tasks`` (all of them for
        a multi-task model, one for a single-task network), from the initial weights of
        ``seed``; ``input_shape`` is one row's shape (``(n_features,)`` for a table).
    metric
        The metric compared across methods (a name of ``polytask.evaluation.METRICS``), the
        same for every task.
    lr, eps, batch_size, max_epochs, patience
        Adam's learning rate and epsilon, the batch size and the early-stopping budget of
        every fit.
    vector_inputs
        Whether rows are feature vectors (tables, bags of words), which the sharing
        architectures of ``polytask.models`` read. ``False`` for images (scikit-learn's
        references then read the flattened pixels).
    test_against
        What test metrics compare predictions with: ``"targets"``, or ``"clean"`` for
        synthetic data that keeps its noiseless targets.
    also_reads
        Other folders under the shared data directory that ``load`` reads (``sentiment``
        reads ``rt_polarity`` beside its own), for :meth:`fingerprint`.
    """

    name: str
    folder: str
    description: str
    tasks: tuple[Task, ...]
    check: Callable[[Path], None]
    load: Callable[[Path, int], Splits]
    model: Callable[[tuple[int, ...], Sequence[Task], int], nn.Module]
    metric: str
    lr: float = 1e-3
    eps: float = 1e-8
    batch_size: int = 64
    max_epochs: int = 100
    patience: int = 10
    vector_inputs: bool = True
    test_against: str = "targets"
    also_reads: tuple[str, ...] = ()

    def fingerprint(self, data_dir: str | Path) -> dict[str, str]:
        """A digest of every data file the data set reads under ``data_dir`` (its folder and
        ``also_reads``; documentation ``*.md`` left out), by path: part of a comparison's
        configuration, so results from other data files are stored apart, never mixed. Empty
        for a generated data set (no folder).

        Examples
        --------
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp()); (root / "toy").mkdir()
        >>> _ = (root / "toy" / "rows.csv").write_text("a,b\\n1,2\\n")
        >>> spec = DatasetSpec("toy", "toy", "", (), print, print, print, "mse")
        >>> list(spec.fingerprint(root))
        ['toy/rows.csv']
        """
        digests = {}
        for folder in (self.folder, *self.also_reads) if self.folder else ():
            digests.update(folder_digests(Path(data_dir, folder), Path(data_dir)))
        return digests

    @property
    def regression(self) -> bool:
        """Whether every task is a regression (relative RMSE applies)."""
        return all(t.kind == "regression" for t in self.tasks)


def folder_digests(folder: str | Path, root: str | Path | None = None) -> dict[str, str]:
    """The digest of every file under ``folder`` (``*.md`` documentation left out), by its
    path relative to ``root`` (default: ``folder`` itself); empty when ``folder`` is absent."""
    folder = Path(folder)
    root = Path(root) if root is not None else folder
    digests = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix != ".md":
            stat = path.stat()
            digests[path.relative_to(root).as_posix()] = _digest(
                str(path), (stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
            )
    return digests


@functools.lru_cache(maxsize=256)
def _digest(path: str, state: tuple[int, ...]) -> str:
    """The SHA-256 prefix of a file's bytes, cached while its ``state`` stands: inode, size,
    modification and status-change times (a write, a replacement or ``touch`` each move one;
    the status-change time cannot be set back by the user)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def shared_bottom(
    hidden: Sequence[int] = (64,), tower_hidden: Sequence[int] = (16,)
) -> Callable[[tuple[int, ...], Sequence[Task], int], nn.Module]:
    """A :class:`DatasetSpec` ``model``: a shared-bottom MLP over feature vectors.

    Examples
    --------
    >>> build = shared_bottom((8,), (4,))
    >>> model = build((5,), [Task("a"), Task("b")], 0)
    >>> sorted(model.task_names)
    ['a', 'b']
    """
    from ..models import SharedBottom

    def build(input_shape: tuple[int, ...], tasks: Sequence[Task], seed: int) -> nn.Module:
        (in_features,) = input_shape
        return SharedBottom.build(
            in_features,
            {t.name: t.size for t in tasks},
            hidden=list(hidden),
            tower_hidden=list(tower_hidden),
            seed=seed,
        )

    return build
