"""Reviews: each UCI review site's sentences are their own dataset and binary sentiment task
(movie, restaurant, product), plus a 3-class task on sentences held out of all three (which
site a sentence comes from), on one shared sparse bag-of-words layer.

Per replication (``seed``): ``site_per_source`` sentences of each site are held out for the
site task, the product task keeps ``product_size`` of the rest (fewer than the others, so the
sizes differ and a schedule's size mode matters), and each task's data is split 60/20/20 into
train, stop and test. The binary vocabulary is fitted on the training sentences only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data import TaskData, bag_of_words, read_labelled_sentences
from ..tasks import Task
from ._files import _cut
from ._sentiment import FRACTIONS, SITES, check_labelled, check_sites
from ._sentiment import model as bag_of_words_model
from ._spec import DatasetSpec, Splits

TASKS = (
    *(Task(site, kind="binary", metrics=("f1", "accuracy", "auc")) for site in SITES),
    Task("site", kind="multiclass", size=3, metrics=("macro_f1", "accuracy")),
)


def reviews_splits(
    folder: Path, seed: int, product_size: int = 300, site_per_source: int = 200
) -> Splits:
    """Train, stop and test data of replication ``seed``: per split a mapping task ->
    :class:`TaskData` with sparse CSR bag-of-words inputs (one vocabulary, from train).

    Examples
    --------
    >>> [t.name for t in TASKS]
    ['movie', 'restaurant', 'product', 'site']
    """
    rng = np.random.default_rng(seed)
    texts: dict[str, tuple[list[str], np.ndarray]] = {}
    site_texts: list[str] = []
    site_labels: list[int] = []
    for index, (site, filename) in enumerate(SITES.items()):
        check_labelled(Path(folder) / filename)  # stricter than the reader: labels 0 or 1
        sentences, labels = read_labelled_sentences(Path(folder) / filename)
        order = rng.permutation(len(sentences))
        held, rest = order[:site_per_source], order[site_per_source:]
        if site == "product":
            rest = rest[:product_size]
        site_texts += [sentences[i] for i in held]
        site_labels += [index] * len(held)
        texts[site] = ([sentences[i] for i in rest], labels[rest])
    order = rng.permutation(len(site_texts))
    texts["site"] = ([site_texts[i] for i in order], np.asarray(site_labels)[order])
    parts: list[dict[str, tuple[list[str], np.ndarray]]] = [{}, {}, {}]
    for task, (sentences, labels) in texts.items():
        first, second = _cut(len(sentences), FRACTIONS)
        for part, (a, b) in zip(parts, ((0, first), (first, second), (second, None)), strict=True):
            part[task] = (sentences[a:b], labels[a:b])
    train, vectorizer = bag_of_words(parts[0])
    stop, test = (
        {t: TaskData(vectorizer.transform(s), y) for t, (s, y) in part.items()}
        for part in parts[1:]
    )
    return Splits(train, stop, test)


SPEC = DatasetSpec(
    name="reviews",
    folder="sentiment_labelled_sentences",
    description="The three UCI review sites as their own datasets: movie, restaurant and "
    "product sentiment (binary) and, on held-out sentences, which site (3 classes)",
    tasks=TASKS,
    check=check_sites,
    load=reviews_splits,
    model=bag_of_words_model,
    metric="accuracy",
    lr=1e-3,
    batch_size=32,
    max_epochs=12,
    patience=4,
)
