"""One dataset per task: sparse inputs, routing, partial labels, monitors, text loading."""

import copy

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch import nn

import polytask as pt
from conftest import shared_data
from polytask.data import Schedule, TaskData, bag_of_words, read_labelled_sentences
from polytask.training import GradientMonitor


def sparse_tasks(rng, sizes=(60, 25), features=40):
    data = {}
    for name, n in zip(("a", "b"), sizes, strict=True):
        x = sp.random(n, features, density=0.2, format="csr", random_state=rng, dtype=np.float32)
        data[name] = TaskData(x, (rng.uniform(size=n) < 0.5).astype(np.float32))
    return data


def two_head_model(features=40, width=8, seed=0):
    torch.manual_seed(seed)
    return pt.MultiTaskModel(
        nn.Sequential(nn.Linear(features, width), nn.ReLU()),
        {"a": nn.Linear(width, 1), "b": nn.Linear(width, 1)},
    )


TASKS = [pt.Task("a", kind="binary"), pt.Task("b", kind="binary")]


def test_sparse_batches_equal_dense(rng):
    x = sp.random(50, 30, density=0.1, format="csr", random_state=rng, dtype=np.float32)
    data = TaskData(x, np.zeros(50))
    index = rng.permutation(50)[:16]
    dense = data.inputs(index, sparse_tensor=False)
    sparse = data.inputs(index)
    assert sparse.layout == torch.sparse_csr
    np.testing.assert_array_equal(sparse.to_dense().numpy(), x[index].toarray())
    np.testing.assert_array_equal(dense.numpy(), x[index].toarray())
    layer = nn.Linear(30, 4)
    torch.testing.assert_close(layer(sparse), layer(dense))


def test_sparse_and_dense_training_give_the_same_history(rng):
    data = sparse_tasks(rng)
    histories = []
    for sparse_input in (True, False):
        trainer = pt.Trainer(
            max_epochs=3,
            patience=None,
            quiet=True,
            device="cpu",
            batch_size=8,
            sparse_input=sparse_input,
        )
        histories.append(trainer.fit(two_head_model(), TASKS, data, data))
    for left, right in zip(histories[0].records, histories[1].records, strict=True):
        assert set(left) == set(right)
        for key in set(left) - {"seconds"}:  # every recorded quantity but the time taken
            assert left[key] == pytest.approx(right[key], rel=1e-5, abs=1e-7), key


def test_a_task_batch_reaches_only_its_own_head(rng):
    data = sparse_tasks(rng)
    model = two_head_model()
    x = data["a"].inputs(np.arange(8))
    out = model.heads_forward(model.features(x), "a")
    TASKS[0].compute_loss(TASKS[0].output(out), data["a"].y[:8].float()).backward()
    assert all(p.grad is None for p in model.task_parameters("b"))
    assert all(p.grad.abs().sum() > 0 for p in model.task_parameters("a"))


def test_sequential_steps_train_one_head_at_a_time(rng):
    """Under the sequential schedule each step holds one task: the other head's weights stay
    exactly as they were while that task trains, and the training task's head takes exactly
    the optimizer's step (Adam's first step on a weight moves it by lr, or not at all where
    its gradient is 0)."""
    data = sparse_tasks(rng, sizes=(16, 16))
    model = two_head_model()
    seen = []

    class Watch(pt.Callback):
        def on_step_end(self, state):
            heads = state.model.heads
            seen.append(
                (
                    state.last_positions,
                    heads["a"].weight.detach().clone(),
                    heads["b"].weight.detach().clone(),
                )
            )

    lr = 1e-3
    trainer = pt.Trainer(
        max_epochs=1,
        patience=None,
        quiet=True,
        device="cpu",
        batch_size=8,
        lr=lr,
        schedule=Schedule("sequential", "max_size"),
        callbacks=[Watch()],
    )
    before_a = model.heads["a"].weight.detach().clone()
    before_b = model.heads["b"].weight.detach().clone()
    trainer.fit(model, TASKS, data, data)
    assert [p for p, _, _ in seen] == [(0,), (0,), (1,), (1,)]
    assert torch.equal(seen[0][2], before_b) and torch.equal(seen[1][2], before_b)
    assert torch.equal(seen[2][1], seen[1][1]) and torch.equal(seen[3][1], seen[1][1])
    for before, after in ((before_a, seen[0][1]), (before_b, seen[2][2])):  # first steps
        moved = (after - before).abs()
        assert moved.max() > 0
        torch.testing.assert_close(moved[moved > 0], torch.full_like(moved[moved > 0], lr))


def test_partial_labels_loss_is_the_loss_over_labelled_rows():
    out = torch.tensor([0.5, -1.0, 2.0, 0.0])
    target = torch.tensor([1.0, float("nan"), 0.0, 1.0])
    task = pt.Task("r", allow_missing=True)
    prepared, known = task.prepare(target)
    assert known.tolist() == [True, False, True, True]
    expected = torch.mean((out[known] - target[known]) ** 2)
    torch.testing.assert_close(task.compute_loss(out, prepared, known), expected)
    classes = pt.Task("c", kind="multiclass", size=3, allow_missing=True)
    labels, known = classes.prepare(torch.tensor([2, -1, 0]))
    logits = torch.randn(3, 3)
    torch.testing.assert_close(
        classes.compute_loss(logits, labels, known),
        nn.functional.cross_entropy(logits[[0, 2]], torch.tensor([2, 0])),
    )
    with pytest.raises(ValueError, match="allow_missing=True"):
        pt.Task("r").prepare(target, "train")


def test_training_with_partial_labels_never_sees_nan(rng):
    n = 64
    x = rng.normal(size=(n, 3)).astype(np.float32)
    y1 = x[:, 0].copy()
    y2 = x[:, 1].copy()
    y2[6:] = np.nan  # only six rows carry a label for task y2: most batches have none
    data = pt.MultiTargetData(x, {"y1": y1, "y2": y2})
    tasks = [pt.Task("y1"), pt.Task("y2", allow_missing=True)]
    model = pt.MultiTaskModel(nn.Linear(3, 4), {"y1": nn.Linear(4, 1), "y2": nn.Linear(4, 1)})
    present = []

    class Watch(pt.Callback):
        def on_step_end(self, state):
            present.append(state.last_positions)

    trainer = pt.Trainer(
        "geometric",
        max_epochs=2,
        patience=None,
        quiet=True,
        device="cpu",
        batch_size=8,
        callbacks=[Watch()],
    )
    history = trainer.fit(model, tasks, data, data)
    assert all(np.isfinite(v) for r in history.records for k, v in r.items() if k != "epoch")
    assert (0,) in present and None not in present  # label-free batches leave y2 out
    # stop loss of y2 is the MSE over its labelled half only
    with torch.no_grad():
        pred = model(torch.from_numpy(x), task="y2")[:, 0].numpy()
    labelled = ~np.isnan(y2)
    expected = np.mean((pred[labelled] - y2[labelled]) ** 2)
    assert history.records[-1]["stop_loss/y2"] == pytest.approx(expected, rel=1e-4)
    metrics = pt.evaluate(model, tasks, data)
    assert metrics["y2"]["mse"] == pytest.approx(expected, rel=1e-4)


def test_explicit_masks_work_like_missing_labels(rng):
    """A row masked out explicitly is treated as a missing (NaN) label is: the same prepared
    targets and rows, and the same loss (the masked row's garbage never reaches it)."""
    task = pt.Task("c", kind="binary")
    target = torch.tensor([1.0, 5.0, 0.0])  # row 1 is garbage, but masked out
    prepared, known = task.prepare(target, mask=torch.tensor([True, False, True]))
    assert prepared.tolist() == [1.0, 0.0, 0.0] and known.tolist() == [True, False, True]
    missing = pt.Task("c", kind="binary", allow_missing=True)
    prepared_nan, known_nan = missing.prepare(torch.tensor([1.0, float("nan"), 0.0]))
    assert torch.equal(known, known_nan) and torch.equal(prepared[known], prepared_nan[known])
    logits = torch.tensor([0.3, -2.0, 1.5])
    loss = task.compute_loss(logits, prepared, known)
    torch.testing.assert_close(loss, missing.compute_loss(logits, prepared_nan, known_nan))
    expected = nn.functional.binary_cross_entropy_with_logits(logits[[0, 2]], target[[0, 2]])
    torch.testing.assert_close(loss, expected)


def test_objectives_over_a_subset_of_tasks():
    losses = torch.tensor([2.0, 8.0])
    for objective, expected in [
        (pt.Sum(), 10.0),
        (pt.Mean(), 5.0),
        (pt.GeometricMean(), 4.0),
        (pt.Weighted([1.0, 10.0, 100.0]), 2.0 * 1 + 8.0 * 100),
    ]:
        objective.bind(["a", "b", "c"])
        assert float(objective.combine(losses, (0, 2))) == pytest.approx(expected)
        step = objective.backward(losses.clone().requires_grad_(True), (0, 2))
        assert float(step.weights[1]) == 0.0  # task b is absent
    uw = pt.Uncertainty()
    uw.bind(["a", "b", "c"])
    with torch.no_grad():
        uw.log_variances.copy_(torch.tensor([0.0, 5.0, 1.0]))
    expected = 0.5 * 2.0 + 0.5 * np.exp(-1.0) * 8.0 + 0.5 * 1.0
    assert float(uw.combine(losses, (0, 2)).detach()) == pytest.approx(expected)


@pytest.mark.parametrize("method", ["sum", "upgrad@repr"])
def test_gradient_monitor_norms_and_cosines(method):
    """Tasks "up" and "down" have opposite losses (same head, same target; the loss and minus
    half of it), so their gradients on the shared layer have cosine -1; a third task with
    another target keeps the combined trunk update away from 0, so the recorded norms can be
    wrong. The recorded norm is that of the combined update the optimizer applies (read off
    the gradients at the step's end; for "sum", also the gradient of the summed losses at the
    initial weights, computed here), and the cosines with the third task are those of per-task
    gradients computed here. Also when each head reads its own leaf of the features (repr)."""
    torch.manual_seed(0)
    x = torch.randn(32, 3)
    y = x.sum(dim=1)
    other = x[:, 0] - 2 * x[:, 2]
    head = nn.Linear(4, 1)
    model = pt.MultiTaskModel(
        nn.Linear(3, 4), {"up": head, "down": nn.Linear(4, 1), "other": nn.Linear(4, 1)}
    )
    model.heads["down"].load_state_dict(head.state_dict())
    initial = copy.deepcopy(model)
    data = pt.MultiTargetData(x, {"up": y, "down": y, "other": other})
    tasks = [
        pt.Task("up"),
        pt.Task("down", loss=lambda o, t: -0.5 * nn.functional.mse_loss(o, t)),
        pt.Task("other"),
    ]
    monitor = GradientMonitor(every=1)
    norms = []

    class Norms(pt.Callback):
        def on_step_end(self, state):
            trunk = state.model.trunk
            norms.append(float(torch.cat([trunk.weight.grad.flatten(), trunk.bias.grad]).norm()))

    trainer = pt.Trainer(
        method,
        max_epochs=1,
        patience=None,
        quiet=True,
        device="cpu",
        batch_size=32,
        lr=1e-9,
        callbacks=[monitor, Norms()],
    )
    trainer.fit(model, tasks, data, data)
    frame = monitor.frame()
    assert len(frame) == len(norms) == 1
    # the per-task gradients at the initial weights, by hand
    out = initial(x)
    losses = {
        "up": nn.functional.mse_loss(out["up"][:, 0], y),
        "down": -0.5 * nn.functional.mse_loss(out["down"][:, 0], y),
        "other": nn.functional.mse_loss(out["other"][:, 0], other),
    }
    trunk = list(initial.trunk.parameters())
    grads = {
        t: torch.cat([g.flatten() for g in torch.autograd.grad(v, trunk, retain_graph=True)])
        for t, v in losses.items()
    }
    cosine = nn.functional.cosine_similarity
    assert frame["cos/up|down"].iloc[0] == pytest.approx(-1.0, abs=1e-5)
    for pair in ("up|other", "down|other"):
        a, b = pair.split("|")
        assert frame[f"cos/{pair}"].iloc[0] == pytest.approx(
            float(cosine(grads[a], grads[b], dim=0)), abs=1e-5
        )
    assert norms[0] > 1e-2  # a non-zero update: the comparisons below can fail
    assert frame["norm/trunk"].iloc[0] == pytest.approx(norms[0], rel=1e-5)
    if method == "sum":
        expected = float(sum(grads.values()).norm())
        assert frame["norm/trunk"].iloc[0] == pytest.approx(expected, rel=1e-4)
        head = list(initial.heads["other"].parameters())
        head_grads = torch.autograd.grad(losses["other"], head)
        head_norm = float(torch.cat([g.flatten() for g in head_grads]).norm())
        assert frame["norm/heads.other"].iloc[0] == pytest.approx(head_norm, rel=1e-4)
    assert {"norm/heads.up", "norm/heads.down", "norm/heads.other"} <= set(frame.columns)


def test_bag_of_words_shares_one_vocabulary():
    data, vectorizer = bag_of_words(
        {"a": (["good film", "bad film"], [1, 0]), "b": (["good food"], [1])}
    )
    assert data["a"].n_features == data["b"].n_features == 4
    column = vectorizer.vocabulary_["good"]
    assert data["a"].x[0, column] == 1 and data["b"].x[0, column] == 1


def test_reading_sentences_names_file_and_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("fine sentence\t1\nno label here\nother\t0\n")
    with pytest.raises(
        ValueError, match=r"bad\.txt, line 2: expected 'sentence<TAB>integer label'"
    ):
        read_labelled_sentences(path)
    with pytest.raises(FileNotFoundError, match=r"missing\.txt"):
        read_labelled_sentences(tmp_path / "missing.txt")


def test_reviews_cli_reports_a_missing_file(tmp_path, capsys):
    (tmp_path / "imdb_labelled.txt").write_text("great\t1\n")
    from polytask.cli import main

    out = tmp_path / "report"
    command = ["run", "reviews", "--data-dir", str(tmp_path), "--quiet", "--out", str(out)]
    assert main(command) == 2
    assert "yelp_labelled.txt: no such file" in capsys.readouterr().err
    assert not out.exists()  # refused before the report folder was made


def test_reviews_experiment_end_to_end_on_the_shared_data(tmp_path):
    data = shared_data("sentiment_labelled_sentences")
    from polytask.cli import main

    out = tmp_path / "reviews"
    code = main(
        [
            "run",
            "reviews",
            "--data-dir",
            str(data),
            "--max-epochs",
            "2",
            "--quiet",
            "--device",
            "cpu",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    import pandas as pd

    table = pd.read_csv(out / "results.csv")
    assert list(table["task"]) == ["movie", "restaurant", "product", "site"]
    assert ((table[["single", "multi"]] > 0) & (table[["single", "multi"]] <= 1)).all().all()
    multi = pd.read_csv(out / "history_multi-task.csv")
    assert {"stop_f1/movie", "stop_macro_f1/site", "stop_auc/product"} <= set(multi.columns)
    gradients = pd.read_csv(out / "gradients.csv")
    assert "cos/movie|site" in gradients.columns and "norm/trunk.0" in gradients.columns
    for name in ("f1_per_epoch", "gradient_norms", "gradient_cosines", "sequential_forgetting"):
        assert (out / f"{name}.png").stat().st_size > 10_000
    report = (out / "report.md").read_text()
    assert "Delta_m%" in report and "'product': 180" in report
