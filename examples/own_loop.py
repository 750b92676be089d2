"""A polytask gradient method in your own PyTorch training loop.

The classic hand-written multi-task set-up, kept as it is: a module routed by an integer task
id (``forward(x, task_id)``), one bag-of-words dataset per task in sparse CSR form, a
``DataLoader`` per task, round-robin mixing and your own optimizer. polytask only replaces
``sum(losses).backward()``: a :class:`polytask.GradientEngine` turns the per-task losses into
the update of the chosen method (UPGrad, MGDA, uncertainty weighting, ...) in ``.grad``, and
your optimizer steps as usual.

The tasks are sentiment classification on three kinds of review. With the UCI "Sentiment
Labelled Sentences" files in ``../shared/data/sentiment_labelled_sentences`` (beside the
repository) the script uses them; otherwise, or with ``--synthetic``, it makes a few dozen
sentences per task itself. Run it with::

    python examples/own_loop.py                      # UPGrad, exact task Jacobian
    python examples/own_loop.py --method mgda@repr   # MGDA on the shared representation
    python examples/own_loop.py --method uw          # learned uncertainty weights
    python examples/own_loop.py --method sum         # the plain summed loss

It prints and returns each task's F1 on a held-out split.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.metrics import f1_score
from sklearn.model_selection import train_test_split
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

import polytask as pt
from polytask.data import csr_batch, read_labelled_sentences
from polytask.models import SparseLinear

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "sentiment_labelled_sentences"
TASKS = ("amazon", "imdb", "yelp")  # task_id 0, 1, 2
FILES = {"amazon": "amazon_cells", "imdb": "imdb", "yelp": "yelp"}  # <name>_labelled.txt


# --- the user's own model: a shared trunk and one head per task, routed by an integer id ---
class BagOfWordsNet(nn.Module):
    def __init__(self, vocabulary: int, hidden: int, n_tasks: int) -> None:
        super().__init__()
        # SparseLinear reads a torch sparse CSR batch directly (an embedding bag underneath)
        self.trunk = nn.Sequential(SparseLinear(vocabulary, hidden), nn.ReLU())
        self.heads = nn.ModuleList(nn.Linear(hidden, 1) for _ in range(n_tasks))

    def forward(self, x: Tensor, task_id: int) -> Tensor:
        return self.heads[task_id](self.trunk(x)).squeeze(1)  # one logit per row


# --- the user's own data: one CSR dataset per task --------------------------------------------
class CSRDataset(Dataset):
    """One task's bag-of-words rows and 0/1 labels.

    ``__getitem__`` returns the row's index and :meth:`collate` slices the CSR matrix once per
    batch: one sparse operation instead of stacking single rows.
    """

    def __init__(self, x: sp.csr_matrix, y: np.ndarray) -> None:
        self.x = sp.csr_matrix(x, dtype=np.float32)
        self.y = torch.as_tensor(y, dtype=torch.float32)

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, index: int) -> int:
        return index

    def collate(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        return csr_batch(self.x[indices]), self.y[indices]


def synthetic_sentences(task: str, n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """``n`` short reviews of one domain; the sentiment words are shared by every domain."""
    nouns = {
        "amazon": ["phone", "battery", "case", "charger", "headset", "screen"],
        "imdb": ["movie", "plot", "acting", "script", "ending", "cast"],
        "yelp": ["food", "service", "pasta", "waiter", "place", "dessert"],
    }[task]
    good = ["great", "excellent", "good", "lovely", "amazing", "perfect"]
    bad = ["terrible", "awful", "bad", "boring", "poor", "disappointing"]
    filler = ["really", "honestly", "overall", "just", "so", "quite"]
    rng = np.random.default_rng([seed, TASKS.index(task)])
    labels = rng.integers(0, 2, size=n)
    sentences = [
        f"the {rng.choice(nouns)} was {rng.choice(filler)} {rng.choice(good if y else bad)}"
        for y in labels
    ]
    return sentences, labels


def load_texts(synthetic: bool, seed: int) -> dict[str, tuple[list[str], np.ndarray]]:
    if not synthetic and DATA_DIR.is_dir():
        return {t: read_labelled_sentences(DATA_DIR / f"{FILES[t]}_labelled.txt") for t in TASKS}
    return {t: synthetic_sentences(t, 80, seed) for t in TASKS}


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--method", default="upgrad", help="sum, uw, upgrad, mgda@repr, ... (default: upgrad)"
    )
    parser.add_argument("--epochs", type=int, default=5, help="default: 5")
    parser.add_argument("--batch-size", type=int, default=32, help="default: 32")
    parser.add_argument("--hidden", type=int, default=32, help="default: 32")
    parser.add_argument("--lr", type=float, default=0.02, help="Adam's; default: 0.02")
    parser.add_argument("--seed", type=int, default=0, help="default: 0")
    parser.add_argument("--synthetic", action="store_true", help="never read the shared data")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)

    # a held-out quarter of each task: (texts_train, texts_test, y_train, y_test)
    parts = {
        t: train_test_split(texts, y, test_size=0.25, random_state=args.seed, stratify=y)
        for t, (texts, y) in load_texts(args.synthetic, args.seed).items()
    }
    # one vocabulary for every task, fitted on the training texts only
    vectorizer = CountVectorizer().fit([s for texts, *_ in parts.values() for s in texts])
    train = {t: CSRDataset(vectorizer.transform(a), y) for t, (a, _, y, _) in parts.items()}
    test = {t: CSRDataset(vectorizer.transform(b), y) for t, (_, b, _, y) in parts.items()}
    # mix_loaders seeds each loader's shuffle from (seed, epoch): the run is reproducible
    loaders = {
        t: DataLoader(data, args.batch_size, shuffle=True, collate_fn=data.collate)
        for t, data in train.items()
    }

    net = BagOfWordsNet(len(vectorizer.vocabulary_), args.hidden, len(TASKS))
    # what polytask needs to know of the module: its tasks, its shared part, how it is routed
    model = pt.as_multitask(net, TASKS, shared="trunk", route="task_id", keys=range(len(TASKS)))
    engine = pt.GradientEngine(model, args.method)
    # a learned weighting (uw) trains its weights with the model: hand them to the optimizer
    optimizer = torch.optim.Adam([*net.parameters(), *engine.parameters()], lr=args.lr)

    net.train()
    for epoch in range(args.epochs):
        # one batch of every task per step; the loaders' own shuffles give the batches
        for step in pt.data.mix_loaders(loaders, "round_robin", seed=args.seed, epoch=epoch):
            losses = {}
            for task, (x, y) in step.items():
                # engine.forward keeps what the method's path needs (the trunk's output)
                logits = engine.forward(x, task=task)
                losses[task] = F.binary_cross_entropy_with_logits(logits, y)
            optimizer.zero_grad()
            engine.backward(losses)  # instead of sum(losses.values()).backward()
            optimizer.step()
            # FAMO and GradNorm learn from the step (the others ignore it): the losses again
            engine.after_step(
                lambda step=step: torch.stack(
                    [
                        F.binary_cross_entropy_with_logits(model(x, task=t), y)
                        for t, (x, y) in step.items()
                    ]
                )
            )
        engine.end_epoch()  # DWA's per-epoch weights (the others ignore it)

    net.eval()
    scores = {}
    with torch.no_grad():
        for task_id, task in enumerate(TASKS):
            x, y = test[task].collate(list(range(len(test[task]))))
            predicted = (net(x, task_id) > 0).float()
            scores[task] = float(f1_score(y.numpy(), predicted.numpy()))
    print(f"{args.method}: held-out F1 " + ", ".join(f"{t} {f:.3f}" for t, f in scores.items()))
    return scores


if __name__ == "__main__":
    main()
