"""Four-domain sentiment: movie, restaurant and product review sentences (UCI Sentiment Labelled
Sentences, Kotzias et al. 2015) and Rotten Tomatoes movie-review snippets (Pang & Lee 2005), each
domain its own dataset and binary task, on one shared bag-of-words layer.

The 10,662 Rotten Tomatoes snippets are subsampled to 1,000 positive and 1,000 negative ones per
replication (drawn from ``seed``), so the four domains weigh about the same (1,000 sentences for
each UCI site) and one fit stays within seconds. Each domain is split 60/20/20 into train, stop
and test by ``seed``; the binary bag-of-words vocabulary is fitted on the training sentences of
all four domains only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data import TaskData, bag_of_words, read_labelled_sentences
from ..models import MultiTaskModel, SparseLinear, init_linear
from ..tasks import Task
from ._spec import DataFormatError, DatasetSpec, Splits

SITES = {
    "movie": "imdb_labelled.txt",
    "restaurant": "yelp_labelled.txt",
    "product": "amazon_cells_labelled.txt",
}
RT_FOLDER = "rt_polarity"  # a sibling of the UCI folder under the shared data directory
RT_FILES = {1: "rt-polarity.pos", 0: "rt-polarity.neg"}  # label -> file
RT_ENCODING = "cp1252"  # the original bytes; not UTF-8 (0x85, 0x91, 0x96, 0x97 occur)
RT_PER_CLASS = 1000  # snippets of each polarity per replication
FRACTIONS = (0.6, 0.2, 0.2)  # train / stop / test of each domain
HIDDEN = 64
TASKS = tuple(
    Task(name, kind="binary", metrics=("accuracy", "f1", "auc")) for name in (*SITES, "rt")
)


def _fail(path: Path, line: int, column: str, problem: str) -> DataFormatError:
    return DataFormatError(f"{path}, line {line}, column {column}: {problem}")


def _lines(path: Path, encoding: str) -> list[str]:
    """The lines of ``path`` (line ends removed); an undecodable byte is reported by line."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (see SOURCE.md of its folder)")
    data = path.read_bytes()
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise _fail(
            path, line, "sentence", f"byte {data[error.start]:#04x} is not {encoding} text"
        ) from error
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final line end
    if not lines:
        raise _fail(path, 1, "sentence", "the file is empty")
    return lines


def check_labelled(path: Path) -> None:
    """Validate a UCI file: every line ``sentence<TAB>0|1`` (UTF-8); raises
    :class:`DataFormatError` naming the file, line and column (``sentence`` or ``label``).

    Examples
    --------
    >>> import tempfile
    >>> f = Path(tempfile.mkdtemp()) / "s.txt"
    >>> _ = f.write_text("good film\\t1\\nbad film\\t2\\n")
    >>> check_labelled(f)
    Traceback (most recent call last):
    ...
    polytask.datasets._spec.DataFormatError: ...line 2, column label: expected 0 or 1, got '2'
    """
    for number, line in enumerate(_lines(path, "utf-8"), start=1):
        text, tab, label = line.rstrip("\r").rpartition("\t")
        if not tab:
            raise _fail(path, number, "label", "no TAB: expected 'sentence<TAB>0|1'")
        if not text.strip():
            raise _fail(path, number, "sentence", "empty sentence before the TAB")
        if label not in ("0", "1"):
            raise _fail(path, number, "label", f"expected 0 or 1, got {label[:20]!r}")


def read_rt(path: Path) -> list[str]:
    """The snippets of a Rotten Tomatoes file (cp1252, one non-empty snippet a line).

    Examples
    --------
    >>> import tempfile
    >>> f = Path(tempfile.mkdtemp()) / "rt.pos"
    >>> _ = f.write_bytes(b"a \\x93gem\\x94 .\\n")
    >>> read_rt(f)
    ['a \u201cgem\u201d .']
    """
    snippets = []
    for number, line in enumerate(_lines(path, RT_ENCODING), start=1):
        if not line.strip():
            raise _fail(path, number, "sentence", "empty line: expected one snippet a line")
        snippets.append(line.strip())
    return snippets


def check_sites(folder: Path) -> None:
    """Validate the three UCI files of ``folder`` (:func:`check_labelled`)."""
    for filename in SITES.values():
        check_labelled(Path(folder) / filename)


def check(folder: Path) -> None:
    """Validate the three UCI files of ``folder`` and the Rotten Tomatoes files of its sibling
    ``rt_polarity``."""
    folder = Path(folder)
    check_sites(folder)
    for filename in RT_FILES.values():
        read_rt(folder.parent / RT_FOLDER / filename)


Texts = dict[str, tuple[list[str], np.ndarray]]
"""Task -> (sentences, labels)."""


def split_sentences(folder: Path, seed: int) -> tuple[Texts, Texts, Texts]:
    """The raw train, stop and test sentences of replication ``seed``: the Rotten Tomatoes
    subsample, then a 60/20/20 split of each domain, all drawn from ``seed``."""
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    texts: Texts = {}
    for site, filename in SITES.items():
        check_labelled(folder / filename)  # stricter than the reader: labels 0 or 1
        texts[site] = read_labelled_sentences(folder / filename)
    rt_sentences: list[str] = []
    for filename in RT_FILES.values():
        snippets = read_rt(folder.parent / RT_FOLDER / filename)
        chosen = rng.choice(len(snippets), size=RT_PER_CLASS, replace=False)
        rt_sentences += [snippets[i] for i in np.sort(chosen)]
    texts["rt"] = (rt_sentences, np.repeat(list(RT_FILES), RT_PER_CLASS))
    parts: tuple[Texts, Texts, Texts] = ({}, {}, {})
    for task, (sentences, labels) in texts.items():
        order = rng.permutation(len(sentences))
        first = round(len(order) * FRACTIONS[0])
        second = first + round(len(order) * FRACTIONS[1])
        for part, rows in zip(parts, np.split(order, [first, second]), strict=True):
            part[task] = ([sentences[i] for i in rows], labels[rows])
    return parts


def load(folder: Path, seed: int) -> Splits:
    """Train, stop and test data of replication ``seed``: per split a mapping task ->
    :class:`TaskData` with sparse CSR bag-of-words inputs (one vocabulary, from train)."""
    train_texts, *held_out_texts = split_sentences(folder, seed)
    # binary: a word counts once per sentence, whatever its repetitions
    train, vectorizer = bag_of_words(train_texts, binary=True)
    stop, test = (
        {t: TaskData(vectorizer.transform(s), y) for t, (s, y) in part.items()}
        for part in held_out_texts
    )
    return Splits(train, stop, test)


def model(input_shape: tuple[int, ...], tasks: Sequence[Task], seed: int) -> nn.Module:
    """One shared sparse layer of 64 ReLU units over the vocabulary and a linear head per task;
    Glorot-uniform weights from ``seed`` (the global RNG is left alone).

    Examples
    --------
    >>> net = model((5,), TASKS, seed=0)
    >>> {k: tuple(v.shape) for k, v in net(torch.zeros(2, 5)).items()}
    {'movie': (2, 1), 'restaurant': (2, 1), 'product': (2, 1), 'rt': (2, 1)}
    """
    (n_features,) = input_shape
    # bag-of-words batches arrive as sparse CSR tensors: SparseLinear takes them directly
    trunk = nn.Sequential(SparseLinear(n_features, HIDDEN, init="glorot", seed=seed), nn.ReLU())
    heads = {}
    for i, task in enumerate(tasks):
        with torch.random.fork_rng(devices=[]):  # nn.Linear's own init draws from the global RNG
            head = nn.Linear(HIDDEN, task.size)
        init_linear(head, "glorot", torch.Generator().manual_seed(seed + 1 + i))
        heads[task.name] = head
    return MultiTaskModel(trunk, heads)


SPEC = DatasetSpec(
    name="sentiment",
    folder="sentiment_labelled_sentences",
    description="Binary sentiment of movie, restaurant and product review sentences (UCI, "
    "Kotzias et al. 2015) and Rotten Tomatoes snippets (Pang & Lee 2005): four domains",
    tasks=TASKS,
    check=check,
    load=load,
    model=model,
    metric="accuracy",
    lr=1e-3,
    batch_size=64,
    max_epochs=20,
    patience=4,
    vector_inputs=True,
    also_reads=(RT_FOLDER,),
)
