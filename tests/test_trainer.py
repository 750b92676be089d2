"""The fit loop: early stopping, reproducibility, the fast column path and bad input."""

import numpy as np
import pytest
import torch
from torch import nn

import polytask as pt
from conftest import small_model
from polytask.training._losses import LossPlan
from polytask.training._sources import SharedSource

TASKS = pt.regression_tasks(["task0", "task1", "task2"])


def fit(train, stop, model=None, **options):
    defaults = {"max_epochs": 4, "patience": None, "quiet": True, "device": "cpu"}
    trainer = pt.Trainer(**{**defaults, **options})
    model = model or small_model()
    return model, trainer.fit(model, TASKS, train, stop), trainer


def test_history_records_every_epoch_and_task(hetero_splits):
    train, stop, _ = hetero_splits
    _, history, _ = fit(train, stop, objective="geometric", max_epochs=3)
    assert history["epoch"] == [1, 2, 3]
    frame = history.to_frame()
    for task in ("task0", "task1", "task2"):
        for prefix in ("train_loss", "stop_loss", "weight"):
            assert np.isfinite(frame[f"{prefix}/{task}"]).all()
    # the geometric mean of the per-task stop losses is the recorded stop loss
    for record in history.records:
        per_task = [record[f"stop_loss/{t}"] for t in ("task0", "task1", "task2")]
        assert record["stop_loss"] == pytest.approx(np.exp(np.mean(np.log(per_task))), rel=1e-5)
    assert pt.training.History.from_dict(history.to_dict()) == history


@pytest.mark.parametrize("objective", ["dbmtl", "uw", "geometric"])
def test_train_and_stop_loss_are_the_same_quantity(objective, hetero_splits):
    """DB-MTL's step minimises a sum of log losses (negative here) while its stop criterion is
    the mean task loss: both curves must be the criterion, the step's value its own column."""
    train, stop, _ = hetero_splits
    _, history, _ = fit(train, stop, objective=objective, max_epochs=2)
    names = ("task0", "task1", "task2")
    for record in history.records:
        for split in ("train", "stop"):
            per_task = np.array([record[f"{split}_loss/{t}"] for t in names])
            expected = (
                np.exp(np.mean(np.log(per_task))) if objective == "geometric" else per_task.mean()
            )
            assert record[f"{split}_loss"] == pytest.approx(expected, rel=1e-5)
        assert np.isfinite(record["train_combined"])
    if objective == "dbmtl":  # its combined value is on another scale
        assert all(r["train_combined"] < 0 < r["train_loss"] for r in history.records)


class _StepLog(pt.Callback):
    """Every step's task losses and weights, per epoch."""

    def __init__(self) -> None:
        self.steps: dict[int, list] = {}

    def on_step_end(self, state) -> None:
        self.steps.setdefault(state.epoch, []).append(
            (state.last_losses.clone(), state.last_weights.clone())
        )


def test_a_task_without_training_rows_in_an_epoch_leaves_a_gap_not_an_error():
    """A sampling schedule on tiny data gives some epochs no batch of a task: that epoch has no
    train loss for it (NaN, as is ``train_loss``: the criterion needs every task), and the
    NaN check does not take the gap for a broken loss."""
    rng = np.random.default_rng(0)
    data = {
        t: pt.TaskData(rng.normal(size=(2, 1)).astype(np.float32), rng.normal(size=2))
        for t in ("a", "b")
    }
    tasks = [pt.Task("a"), pt.Task("b")]
    gaps = 0
    for seed in range(6):
        model = pt.MultiTaskModel(nn.Linear(1, 4), {t.name: nn.Linear(4, 1) for t in tasks})
        trainer = pt.Trainer(
            "sum",
            schedule=pt.Schedule("proportional", "min_size"),
            batch_size=2,
            max_epochs=3,
            patience=None,
            quiet=True,
            seed=seed,
        )
        history = trainer.fit(model, tasks, data, data)  # no NonFiniteLossError
        assert len(history) == 3
        for record in history.records:
            per_task = [record["train_loss/a"], record["train_loss/b"]]
            assert all(np.isfinite(record[f"stop_loss/{t}"]) for t in "ab")
            if np.isnan(per_task).any():
                gaps += 1
                assert np.isnan(record["train_loss"]) and not np.isnan(per_task).all()
            else:  # the criterion of "sum" on both sets
                assert record["train_loss"] == pytest.approx(sum(per_task), rel=1e-6)
            assert record["stop_loss"] == pytest.approx(
                record["stop_loss/a"] + record["stop_loss/b"], rel=1e-6
            )
    assert gaps >= 3  # the schedule did leave tasks out


@pytest.mark.parametrize(
    "objective",
    [
        "uw",
        # reuses its weights between solves and overwrites them in place at the next solve:
        # the weights a step returned must be read before that
        pytest.param(lambda: pt.objectives.NashMTL(max_norm=0, update_weights_every=3), id="nash"),
    ],
)
def test_train_records_are_the_row_weighted_means_of_the_steps(objective, hetero_splits):
    """The epoch's train losses are the steps' task losses weighted by their rows (the last
    batch is short), and its weights the mean of the steps' weights: the sums the trainer
    defers to the end of the epoch equal the ones taken step by step."""
    train, stop, _ = hetero_splits
    objective = objective if isinstance(objective, str) else objective()
    log = _StepLog()
    batch = 7  # not a divisor of the training rows: the last batch is shorter
    _, history, _ = fit(train, stop, objective=objective, batch_size=batch, callbacks=[log])
    n = len(train)
    rows = torch.tensor([min(batch, n - lo) for lo in range(0, n, batch)], dtype=torch.float64)
    assert rows[-1] < batch
    names = ("task0", "task1", "task2")
    for record in history.records:
        losses = torch.stack([s[0] for s in log.steps[record["epoch"]]]).double()
        weights = torch.stack([s[1] for s in log.steps[record["epoch"]]]).double()
        expected = (losses * rows[:, None]).sum(0) / rows.sum()
        for i, task in enumerate(names):
            assert record[f"train_loss/{task}"] == pytest.approx(float(expected[i]), rel=1e-5)
            assert record[f"weight/{task}"] == pytest.approx(float(weights[:, i].mean()), rel=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_epoch_totals_equal_a_step_by_step_reference(dtype):
    """Over more steps than the totals hold at once, with steps lacking tasks among them,
    structured terms, and losses that turn NaN on both kinds of step: the per-task train losses
    (row-weighted), weights, combined value, terms and counts of NaN steps equal a
    step-by-step float64 reference."""
    from polytask.training._trainer import _EpochTotals

    k, steps = 4, _EpochTotals.HELD + 300
    generator = torch.Generator().manual_seed(0)
    totals = _EpochTotals(k, torch.device("cpu"), {})
    loss_sum, rows, weight_sum, value_sum = np.zeros(k), np.zeros(k), np.zeros(k), 0.0
    term_sum, bad = np.zeros(2), np.zeros(k)
    last_partial = max(s for s in range(steps) if s % 11 == 3)
    for step in range(steps):
        n = 300 if step % 7 else 5  # row counts above bfloat16's exact integers
        weights = torch.rand(k, generator=generator)
        value = torch.rand((), generator=generator)
        terms = torch.rand(2, generator=generator)
        if step % 11 == 3:  # tasks 0, 2 and 3 only
            positions, counts = (0, 2, 3), [n, n - 1, n]
            losses = torch.rand(3, generator=generator).to(dtype)
            if step == last_partial:
                losses[2] = float("nan")  # task 3
                bad[3] += 1
            totals.add(losses, positions, counts, value, weights, terms)
            loss_sum[list(positions)] += losses.double().numpy() * counts
            rows[list(positions)] += counts
        else:
            losses = torch.rand(k, generator=generator).to(dtype)
            if step >= steps - 4:
                losses[1] = float("nan")
                bad[1] += 1
            totals.add(losses, None, [n] * k, value, weights, terms)
            loss_sum += losses.double().numpy() * n
            rows += n
        weight_sum += weights.double().numpy()
        value_sum += float(value)
        term_sum += terms.double().numpy()
    record = totals.record(
        1, ("a", "b", "c", "d"), torch.zeros(k), torch.zeros(()), lambda losses: losses.mean()
    )
    totals.record_terms(record, ["p", "q"], torch.zeros(2))
    expected = loss_sum / rows
    assert record["train_loss/a"] == pytest.approx(expected[0], rel=1e-5)
    assert record["train_loss/c"] == pytest.approx(expected[2], rel=1e-5)
    assert np.isnan(record["train_loss/b"]) and np.isnan(record["train_loss/d"])
    for i, name in enumerate("abcd"):
        assert record[f"weight/{name}"] == pytest.approx(weight_sum[i] / steps, rel=1e-5)
    assert record["train_combined"] == pytest.approx(value_sum / steps, rel=1e-5)
    assert record["term/p"] == pytest.approx(term_sum[0] / steps, rel=1e-5)
    assert record["term/q"] == pytest.approx(term_sum[1] / steps, rel=1e-5)
    assert totals.bad == bad.tolist()


@pytest.mark.parametrize(
    ("objective", "columns"),
    [("upgrad", False), ("mean", True)],  # targets per task; one target matrix (column path)
)
def test_the_epoch_shuffle_by_copy_gives_the_batches_of_the_index_selects(
    objective, columns, hetero_splits, monkeypatch
):
    """Small data are shuffled by one copy per epoch, larger by an index select per step: the
    same rows in the same order, so a fit is bit-identical either way."""
    from polytask.training import _sources

    train, stop, _ = hetero_splits
    runs = []
    for bound in (_sources.SHUFFLE_COPY_BYTES, 0):
        monkeypatch.setattr(_sources, "SHUFFLE_COPY_BYTES", bound)
        torch.manual_seed(0)  # the column model's head draws from the global generator
        model = small_model(columns=columns)
        model, history, _ = fit(
            train, stop, model=model, objective=objective, batch_size=7, max_epochs=2
        )
        runs.append((model.state_dict(), history.to_frame()["stop_loss"].tolist()))
    (first, stops), (second, stops_again) = runs
    assert stops == stops_again
    assert all(torch.equal(first[key], second[key]) for key in first)


def test_early_stopping_restores_the_best_epoch(hetero_splits):
    train, stop, _ = hetero_splits
    # a high learning rate makes the stop loss bounce, so the last epoch is rarely the best
    model, history, trainer = fit(train, stop, lr=0.05, max_epochs=40, patience=3)
    assert history.stopped_early
    best = min(history.records, key=lambda r: r["stop_loss"])
    assert history.best_epoch == best["epoch"] < history["epoch"][-1]
    assert history["epoch"][-1] - history.best_epoch == 3
    restored = trainer.losses_on(model, TASKS, stop)
    recorded = [best[f"stop_loss/{t.name}"] for t in TASKS]
    np.testing.assert_allclose(restored.numpy(), recorded, rtol=1e-5)


def test_same_seed_same_history_bit_for_bit(hetero_splits):
    train, stop, _ = hetero_splits
    runs = [fit(train, stop, model=small_model(seed=0), seed=7)[1] for _ in range(2)]
    strip = [[{k: v for k, v in r.items() if k != "seconds"} for r in h.records] for h in runs]
    assert strip[0] == strip[1]
    other = fit(train, stop, model=small_model(seed=0), seed=8)[1]
    assert other.records[-1]["train_loss"] != runs[0].records[-1]["train_loss"]


def test_fit_leaves_the_global_rng_untouched(hetero_splits):
    train, stop, _ = hetero_splits
    model = small_model()
    model.trunk.append(nn.Dropout(0.1))  # dropout draws from the (forked) global RNG
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    fit(train, stop, model=model, max_epochs=1)
    assert torch.equal(torch.rand(3), expected)


def test_column_fast_path_equals_per_task_losses():
    torch.manual_seed(0)
    names = {"a": 2, "b": 1, "c": 3}
    layer = nn.Linear(4, 6)
    model = pt.MultiTaskModel(nn.Tanh(), pt.ColumnHeads(layer, names))
    tasks = [pt.Task("c", size=3), pt.Task("a", size=2), pt.Task("b")]  # not column order
    x = torch.randn(9, 4)
    y = {"a": torch.randn(9, 2), "b": torch.randn(9), "c": torch.randn(9, 3)}
    source = SharedSource(pt.MultiTargetData(x, y), "train", tasks, torch.device("cpu"))
    plan = LossPlan(model, tasks, source)
    assert plan.columnar
    plan.adopt(source)
    fast, positions = plan.losses(model, next(source.chunks(9)))[:2]
    assert positions is None
    outputs = model(x)
    slow = torch.stack([t.compute_loss(t.output(outputs[t.name]), y[t.name]) for t in tasks])
    torch.testing.assert_close(fast, slow)
    # task_targets undoes adopt's column layout: each task gets its own targets back
    back = plan.task_targets(next(source.chunks(9)).y)
    for task in tasks:
        torch.testing.assert_close(back[task.name], y[task.name])
    with_custom = [*tasks[:2], pt.Task("b", loss=nn.functional.l1_loss)]
    assert not LossPlan(model, with_custom, source).columnar


def test_trainer_trains_the_column_model_like_the_head_model(hetero_splits):
    """The heteroscedastic model (one Dense(T) output) learns: stop loss falls well below the
    variance of the targets."""
    train, stop, _ = hetero_splits
    _, history, _ = fit(train, stop, model=small_model(columns=True), lr=1e-2, max_epochs=15)
    assert history.best["stop_loss/task0"] < 0.5 * float(stop.targets["task0"].var())


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda t, s: (t.subset(slice(0, 0)), s), "the train split is empty"),
        (
            lambda t, s: (pt.MultiTargetData(t.x, {"task0": t.targets["task0"]}), s),
            r"task 'task1': no target column in the train split; its columns are \['task0'\]",
        ),
        (
            lambda t, s: (t, _replace_target(s, "task2", torch.zeros(len(s), 2))),
            r"task 'task2', targets of the stop split: shape \(\d+, 2\), expected \(\d+,\)",
        ),
        (
            lambda t, s: (_replace_x(t, 5, float("nan")), s),
            "inputs x of the train split: non-finite value .* at row 5",
        ),
        (
            lambda t, s: (_replace_target(t, "task1", _with(t.targets["task1"], 3, np.inf)), s),
            "task 'task1', targets of the train split: non-finite value .* at row 3",
        ),
        (
            lambda t, s: (t, pt.MultiTargetData(s.x.repeat(1, 2), s.targets)),
            r"train rows have shape \(1,\), stop rows \(2,\)",
        ),
    ],
)
def test_bad_input_fails_before_any_step(hetero_splits, mutate, message):
    train, stop, _ = hetero_splits
    train, stop = mutate(train, stop)
    model = small_model()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=message):
        fit(train, stop, model=model)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_mismatched_heads_and_tasks_are_reported(hetero_splits):
    train, stop, _ = hetero_splits
    with pytest.raises(ValueError, match=r"tasks \['task0', 'task1'\] do not match.*task2"):
        pt.Trainer(quiet=True).fit(small_model(), TASKS[:2], train, stop)
    wide = small_model()
    wide.heads["task1"] = nn.Linear(16, 3)
    with pytest.raises(ValueError, match=r"task 'task1': its head outputs shape \(2, 3\)"):
        fit(train, stop, model=wide)
    narrow = small_model()  # a head that cannot read the trunk's 16 columns
    narrow.heads["task2"] = nn.Linear(5, 1)
    with pytest.raises(ValueError, match=r"task 'task2': its head cannot take .*\(n, 1\)"):
        fit(train, stop, model=narrow)
    checked = small_model()  # a head whose own check refuses what it reads

    class Picky(nn.Module):
        def forward(self, z):
            raise ValueError(f"Picky: expected 5 columns, got {z.shape[1]}")

    checked.heads["task0"] = Picky()
    with pytest.raises(ValueError, match=r"task 'task0': its head cannot take .*5 columns, got 16"):
        fit(train, stop, model=checked)
    trunkless = small_model()  # every route fails alike: the shared part is at fault
    trunkless.trunk[0] = nn.Linear(7, 16)
    with pytest.raises(ValueError, match=r"^the model cannot take the inputs of shape \(n, 1\)"):
        fit(train, stop, model=trunkless)


def test_a_loss_that_turns_nan_stops_with_epoch_and_task(hetero_splits):
    train, stop, _ = hetero_splits
    calls = {"n": 0}
    steps_per_epoch = -(-len(train) // 32)

    def fragile(output, target):
        calls["n"] += 1
        loss = nn.functional.mse_loss(output, target)
        return loss * float("nan") if calls["n"] > 2.5 * steps_per_epoch else loss

    tasks = [*TASKS[:2], pt.Task("task2", loss=fragile)]
    model = small_model()
    trainer = pt.Trainer(max_epochs=10, patience=None, quiet=True, device="cpu")
    with pytest.raises(
        pt.NonFiniteLossError, match="epoch 3: the training loss of task 'task2'"
    ) as info:
        trainer.fit(model, tasks, train, stop)
    history = info.value.history
    assert len(history) == 3 and history.best_epoch in (1, 2)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert f"weights of epoch {history.best_epoch} restored" in str(info.value)


def test_bad_trainer_configuration():
    with pytest.raises(ValueError, match="patience"):
        pt.Trainer(patience=0)
    with pytest.raises(ValueError, match="lr and eps"):
        pt.Trainer(eps=0)
    with pytest.raises(ValueError, match=r"^unknown device 'gpu': choose 'auto', 'cpu', 'cuda'"):
        pt.Trainer(device="gpu")  # at construction, not at the first fit
    with pytest.raises(ValueError, match=r"^device 'meta' holds no data"):
        pt.Trainer(device="meta")
    assert pt.Trainer(device="cuda:3").device == "cuda:3"  # availability is the fit's to check


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_asking_for_cuda_without_it_is_a_clear_error(hetero_splits):
    train, stop, _ = hetero_splits
    with pytest.raises(ValueError, match="'cuda' was asked for, but CUDA is not available"):
        fit(train, stop, device="cuda")


def _with(column, row, value):
    column = column.clone()
    column[row] = value
    return column


def _replace_target(data, task, column):
    return pt.MultiTargetData(data.x, {**data.targets, task: column})


def _replace_x(data, row, value):
    return pt.MultiTargetData(_with(data.x, row, value), data.targets)


def test_stop_metrics_are_tracked_on_the_column_fast_path(hetero_splits):
    """With one column layer for every regression task the targets travel as one matrix; the
    per-epoch stop metrics still read each task's own column."""
    train, stop, _ = hetero_splits
    tasks = pt.regression_tasks(train.task_names)
    model = small_model(columns=True)
    trainer = pt.Trainer("mean", max_epochs=2, patience=None, quiet=True, device="cpu")
    trainer.track_metrics = True
    history = trainer.fit(model, tasks, train, stop)
    metrics = pt.evaluate(model, tasks, stop)
    for task in tasks:
        recorded = history.best[f"stop_mse/{task.name}"]
        assert recorded == pytest.approx(metrics[task.name]["mse"], rel=1e-5)


# --- the open trainer: optimizer, scheduler, clipping and callbacks that act -------------------
def test_a_custom_optimizer_and_scheduler_take_effect(hetero_splits):
    train, stop, _ = hetero_splits
    made = []

    def sgd(params):
        made.append(torch.optim.SGD(params, lr=0.0))
        return made[-1]

    model = small_model()
    before = [p.detach().clone() for p in model.parameters()]
    fit(train, stop, model=model, optimizer=sgd, max_epochs=2)
    assert isinstance(made[0], torch.optim.SGD)
    assert all(torch.equal(a, b.detach()) for a, b in zip(before, model.parameters(), strict=True))
    halving = lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)  # noqa: E731
    _, history, _ = fit(train, stop, lr=0.01, scheduler=halving, max_epochs=3)
    assert history["lr"] == pytest.approx([0.01, 0.005, 0.0025])

    # ReduceLROnPlateau is given the stop loss: in "max" mode a falling loss is a plateau
    def plateau(opt):
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, "max", patience=0, factor=0.1)

    _, history, _ = fit(train, stop, lr=0.01, scheduler=plateau, max_epochs=3)
    assert history["stop_loss"][1] < history["stop_loss"][0]
    assert history["lr"][2] == pytest.approx(0.001)


class _StepGradients(pt.Callback):
    """Each step's gradient of the mean loss, taken before the backward, against ``.grad``
    after it: a gradient left over from the previous step would show as a difference."""

    def __init__(self) -> None:
        self.expected, self.got = [], []

    def on_before_backward(self, state, losses, positions):
        params = [p for p in state.model.parameters() if p.requires_grad]
        self.expected.append(torch.autograd.grad(losses.mean(), params, retain_graph=True))

    def on_before_optimizer_step(self, state):
        self.got.append([p.grad.clone() for p in state.model.parameters() if p.requires_grad])


def test_each_step_starts_from_cleared_gradients_and_a_custom_zero_grad_is_kept(hetero_splits):
    train, stop, _ = hetero_splits
    log = _StepGradients()
    fit(train, stop, objective="mean", max_epochs=2, callbacks=[log])
    assert len(log.got) > 2
    for expected, got in zip(log.expected, log.got, strict=True):
        for a, b in zip(expected, got, strict=True):
            torch.testing.assert_close(b, a)

    cleared = []

    class CountingSGD(torch.optim.SGD):
        def zero_grad(self, set_to_none: bool = True) -> None:
            cleared.append(set_to_none)
            super().zero_grad(set_to_none)

    log = _StepGradients()
    fit(
        train,
        stop,
        objective="mean",
        optimizer=lambda params: CountingSGD(params, lr=0.01),
        max_epochs=1,
        callbacks=[log],
    )
    assert cleared == [True] * len(log.got)


def test_gradient_clipping_bounds_the_step(hetero_splits):
    train, stop, _ = hetero_splits
    model = small_model()
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    steps = []

    class Count(pt.Callback):
        def on_before_optimizer_step(self, state):
            norm = torch.cat([p.grad.flatten() for p in state.model.parameters()]).norm()
            steps.append(float(norm))

    sgd = lambda params: torch.optim.SGD(params, lr=0.1)  # noqa: E731
    fit(
        train,
        stop,
        model=model,
        optimizer=sgd,
        clip_grad_norm=1e-3,
        max_epochs=1,
        callbacks=[Count()],
    )
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert max(steps) <= 1e-3 * (1 + 1e-5)
    assert float((after - before).norm()) <= 0.1 * 1e-3 * len(steps) * (1 + 1e-4)


def test_a_stopping_callback_ends_the_fit_and_defaults_can_be_replaced(hetero_splits):
    train, stop, _ = hetero_splits

    class StopAtTwo(pt.Callback):
        def on_epoch_end(self, state, record):
            if state.epoch == 2:
                state.request_stop("two epochs are enough")

    _, history, _ = fit(train, stop, max_epochs=10, callbacks=[StopAtTwo()])
    assert len(history) == 2 and history.stop_reason == "two epochs are enough"
    # a BestWeights of the user's replaces the default: here it keeps the worst epoch
    worst = pt.BestWeights(monitor="stop_loss", mode="max")
    _, history, trainer = fit(train, stop, max_epochs=4, callbacks=[worst])
    assert history.best_epoch == int(np.argmax(history["stop_loss"])) + 1
    assert sum(isinstance(c, pt.BestWeights) for c in trainer._callbacks()) == 1
    stopper = pt.EarlyStopping(patience=1, monitor="train_combined")
    _, history, _ = fit(train, stop, max_epochs=50, patience=5, callbacks=[stopper])
    assert "train_combined" in history.stop_reason


def test_checkpoints_are_written_atomically_each_epoch(hetero_splits, tmp_path):
    train, stop, _ = hetero_splits
    checkpoint = pt.Checkpoint(tmp_path / "ckpt")
    model, history, _ = fit(train, stop, max_epochs=3, callbacks=[checkpoint])
    saved = checkpoint.load()
    assert checkpoint.saved_epochs == [1, 2, 3] and saved["epoch"] == 3
    assert saved["history"]["records"] == history.to_dict()["records"]
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["last.pt"]  # no temp file
    assert set(saved["model"]) == set(model.state_dict())
    blocked = tmp_path / "file"
    blocked.write_text("")
    with pytest.raises(ValueError, match="Checkpoint: cannot create"):
        fit(train, stop, max_epochs=1, callbacks=[pt.Checkpoint(blocked / "sub")])


def test_a_checkpoint_write_that_dies_midway_leaves_the_last_one_whole(
    hetero_splits, tmp_path, monkeypatch
):
    """The disk fills (or the process dies) while epoch 2 is being written: epoch 1's checkpoint
    is still the one on disk, whole, and no partial file is left beside it."""
    train, stop, _ = hetero_splits
    save, calls = torch.save, []

    def dies_midway(payload, file, *args, **kwargs):
        calls.append(payload["epoch"])
        if len(calls) == 2:
            file.write(b"PK\x03\x04 half a checkpoint")
            raise OSError(28, "No space left on device")
        save(payload, file, *args, **kwargs)

    monkeypatch.setattr(torch, "save", dies_midway)
    checkpoint = pt.Checkpoint(tmp_path / "ckpt")
    with pytest.raises(OSError, match="No space left"):
        fit(train, stop, max_epochs=3, callbacks=[checkpoint])
    assert calls == [1, 2] and checkpoint.saved_epochs == [1]
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["last.pt"]
    assert checkpoint.load()["epoch"] == 1


def test_configuration_errors_come_at_once():
    with pytest.raises(ValueError, match="unknown method 'unknown'"):
        pt.Trainer("unknown")
    with pytest.raises(TypeError, match="Callback instances"):
        pt.Trainer(callbacks=[lambda state: None])
    with pytest.raises(ValueError, match="clip_grad_norm must be positive"):
        pt.Trainer(clip_grad_norm=0)


def test_an_unwrapped_module_is_told_what_to_pass(hetero_splits):
    train, stop, _ = hetero_splits

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.trunk = nn.Linear(1, 4)
            self.heads = nn.ModuleList([nn.Linear(4, 1) for _ in range(3)])

        def forward(self, x, task_id):
            return self.heads[task_id](self.trunk(x))

    with pytest.raises(TypeError, match=r"pt\.as_multitask\(model, tasks=\[.*\], route='task_id'"):
        fit(train, stop, model=Net())
    wrapped = pt.as_multitask(Net(), TASKS, shared="trunk", route="task_id", keys=range(3))
    _, history, _ = fit(train, stop, model=wrapped, objective="upgrad@repr", max_epochs=2)
    assert np.isfinite(history["stop_loss"]).all()


def test_methods_with_per_task_state_refuse_incomplete_steps_before_training(rng):
    data = {
        t: pt.TaskData(rng.normal(size=(20, 1)).astype(np.float32), rng.normal(size=20))
        for t in ("task0", "task1", "task2")
    }
    model = small_model()
    before = [p.detach().clone() for p in model.parameters()]
    for method in ("dwa", "gradnorm", "famo"):
        trainer = pt.Trainer(method, schedule="sequential", quiet=True, device="cpu", max_epochs=1)
        with pytest.raises(ValueError, match="needs every task in every step"):
            trainer.fit(model, TASKS, data, data)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_the_trainer_takes_per_task_dataloaders_and_datasets():
    from torch.utils.data import DataLoader, TensorDataset

    gen = np.random.default_rng(0)
    x = torch.from_numpy(gen.normal(size=(60, 1)).astype(np.float32))
    data = {
        "task0": TensorDataset(x, 2 * x[:, 0]),
        "task1": DataLoader(TensorDataset(x[:30], -x[:30, 0]), batch_size=8, shuffle=True),
        "task2": TensorDataset(x[:20], x[:20, 0] + 1),
    }
    trainer = pt.Trainer(
        "upgrad", max_epochs=3, batch_size=16, patience=None, quiet=True, device="cpu"
    )
    history = trainer.fit(small_model(), [pt.Task(t) for t in data], data, data)
    assert history["epoch"] == [1, 2, 3]
    assert history["stop_loss"][-1] < history["stop_loss"][0]


@pytest.mark.parametrize("method", ["mean", "upgrad"])
def test_a_models_own_regularization_joins_every_training_step(hetero_splits, method):
    """A model with ``regularization(x)`` (DSelect-k's entropy term, say) has it added to the
    update of every step, on loss-level and gradient methods alike (not on the stop set)."""
    train, stop, _ = hetero_splits
    calls = []

    class Penalised(pt.MultiTaskModel):
        def regularization(self, x):
            calls.append(len(x))
            return 10.0 * self.trunk[0].weight.square().sum()

    def final_norm(penalised):
        model = small_model()
        if penalised:
            model = Penalised(model.trunk, dict(model.heads))
        sgd = lambda params: torch.optim.SGD(params, lr=0.01)  # noqa: E731
        fit(train, stop, model=model, objective=method, optimizer=sgd, max_epochs=1)
        return float(model.trunk[0].weight.detach().norm())

    assert final_norm(True) < 0.5 * final_norm(False)
    assert len(calls) == -(-len(train) // 32)  # once per training step, never on the stop set


def test_the_history_counts_solves_that_missed_their_tolerance(hetero_splits):
    """A solver capped at one iteration cannot converge: the History says so, cumulatively;
    with its default cap the count stays 0."""
    train, stop, _ = hetero_splits
    capped = pt.objectives.NashMTL()
    capped.max_iter = 1  # the torch solver's iteration cap
    _, history, _ = fit(train, stop, objective=capped, max_epochs=2)
    counts = history["solver_unconverged"]
    assert len(counts) == 2 and 0 < counts[0] < counts[1]
    _, history, _ = fit(train, stop, objective="nashmtl", max_epochs=1)
    assert history["solver_unconverged"] == [0.0]
