"""Labelled sentences and a shared bag-of-words vocabulary over several datasets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._taskdata import TaskData


def read_labelled_sentences(path: str | Path) -> tuple[list[str], np.ndarray]:
    """Read a ``sentence<TAB>label`` file (UTF-8, one example per line, integer labels).

    Raises a ``ValueError`` naming the file, the line number and the expected format.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "s.txt"
    >>> _ = f.write_text("good film\\t1\\nbad film\\t0\\n")
    >>> read_labelled_sentences(f)[1].tolist()
    [1, 0]
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected 'sentence<TAB>label' lines)")
    sentences, labels = [], []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            text, tab, label = line.rpartition("\t")
            if not tab or not text.strip() or not label.strip().lstrip("-").isdigit():
                raise ValueError(
                    f"{path}, line {number}: expected 'sentence<TAB>integer label', "
                    f"got {line[:60]!r}"
                )
            sentences.append(text.strip())
            labels.append(int(label))
    if not sentences:
        raise ValueError(f"{path}: no examples (expected 'sentence<TAB>label' lines)")
    return sentences, np.asarray(labels, dtype=np.int64)


def bag_of_words(
    datasets: Mapping[str, tuple[Sequence[str], Any]], **vectorizer_options: Any
) -> tuple[dict[str, TaskData], Any]:
    """One shared vocabulary (scikit-learn ``CountVectorizer``) over several labelled-text
    datasets; returns one sparse :class:`TaskData` per task and the fitted vectorizer.

    ``datasets`` maps task -> (texts, labels). Fit the vocabulary on training texts only: pass
    the training sets here and transform held-out texts with the returned vectorizer.

    Examples
    --------
    >>> data, vectorizer = bag_of_words({"a": (["good", "bad"], [1, 0]), "b": (["ok"], [2])})
    >>> data["a"].sparse, sorted(vectorizer.vocabulary_)
    (True, ['bad', 'good', 'ok'])
    """
    from sklearn.feature_extraction.text import CountVectorizer

    vectorizer = CountVectorizer(**vectorizer_options)
    vectorizer.fit([text for texts, _ in datasets.values() for text in texts])
    data = {}
    for task, (texts, labels) in datasets.items():
        try:
            data[task] = TaskData(vectorizer.transform(list(texts)), np.asarray(labels))
        except (TypeError, ValueError) as error:  # the task the message is about
            raise type(error)(f"task {task!r}: {error}") from None
    return data, vectorizer
