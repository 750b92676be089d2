"""Sentiment domains: every sentence of the three UCI review sites in one dataset with three
heads, the site (3 classes), the sentiment (binary) and their joint (6 classes,
``2 * site + sentiment``), on one shared bag-of-words layer.

The 3,000 sentences are split 60/20/20 into train, stop and test by ``seed``; the binary
vocabulary (words in at least two training sentences) is fitted on the training sentences only.
Inputs are dense (``MultiTargetData`` holds dense rows; about 1,600 words), the model a
64-unit ReLU layer and a linear head per task.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data import MultiTargetData, read_labelled_sentences
from ..tasks import Task
from ._files import split_rows
from ._sentiment import SITES, check_labelled, check_sites
from ._spec import DatasetSpec, Splits, shared_bottom

MIN_DF = 2  # a word of a single training sentence says nothing about the others
TASKS = (
    Task("site", kind="multiclass", size=3, metrics=("macro_f1", "accuracy")),
    Task("sentiment", kind="binary", metrics=("macro_f1", "accuracy", "f1")),
    Task("joint", kind="multiclass", size=6, metrics=("macro_f1", "accuracy")),
)


def site_sentences(folder: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Every sentence of the three sites (validated files) with its site index (in
    ``SITES`` order) and sentiment label."""
    texts, sites, labels = [], [], []
    for index, filename in enumerate(SITES.values()):
        check_labelled(Path(folder) / filename)
        sentences, sentiment = read_labelled_sentences(Path(folder) / filename)
        texts += sentences
        sites += [index] * len(sentences)
        labels.append(np.asarray(sentiment))
    return texts, np.asarray(sites), np.concatenate(labels)


def domain_splits(
    folder: Path,
    seed: int,
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    min_df: int = MIN_DF,
) -> Splits:
    """The train, stop and test sets: dense binary bags of words (vocabulary from the
    training sentences) and the site / sentiment / joint targets."""
    from sklearn.feature_extraction.text import CountVectorizer

    texts, sites, labels = site_sentences(folder)
    parts = split_rows(len(texts), seed, fractions)
    vectorizer = CountVectorizer(min_df=min_df, binary=True)
    vectorizer.fit([texts[i] for i in parts[0]])

    def part(rows: np.ndarray) -> MultiTargetData:
        x = vectorizer.transform([texts[i] for i in rows]).toarray().astype(np.float32)
        targets = {
            "site": sites[rows],
            "sentiment": labels[rows].astype(np.float32),
            "joint": 2 * sites[rows] + labels[rows],
        }
        return MultiTargetData(x, targets)

    return Splits(*(part(rows) for rows in parts))


SPEC = DatasetSpec(
    name="sentiment-domains",
    folder="sentiment_labelled_sentences",
    description="The three UCI review sites' sentences in one dataset: site (3 classes), "
    "sentiment (binary) and their joint (6 classes) heads",
    tasks=TASKS,
    check=check_sites,
    load=domain_splits,
    model=shared_bottom(hidden=(64,), tower_hidden=()),
    metric="macro_f1",
    lr=1e-3,
    batch_size=64,
    max_epochs=60,
    patience=8,
)
