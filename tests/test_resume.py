"""A fit that is killed resumes from its last checkpoint and ends as if never interrupted."""

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

import polytask as pt
from conftest import small_model

TASKS = pt.regression_tasks(["task0", "task1", "task2"])


def records(history):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history.records]


def _with_term(method):
    """The method plus a structured term: the checkpoint restores the container and the
    method inside it, which the engine must then run."""
    return pt.make_objective(method) + pt.objectives.Consistency([("task0", "task1")], weight=0.1)


@pytest.mark.parametrize(
    "method", ["uw", "dwa", "dbmtl", "pcgrad", "upgrad@repr", "uw+term", "nashmtl+term"]
)
def test_an_extended_fit_equals_one_that_ran_straight_through(method, hetero_splits, tmp_path):
    """Two epochs with a checkpoint, then the same fit to five epochs, give the weights and
    history of five epochs in one go, bit for bit (the optimizer's moments, the method's own
    state, early-stopping counters, the shuffling generator and the global RNG all resume)."""
    train, stop, _ = hetero_splits

    def run(max_epochs, checkpoint):
        model = nn.Sequential()  # placeholder, replaced below
        model = small_model()
        objective = _with_term(method.removesuffix("+term")) if "+term" in method else method
        trainer = pt.Trainer(
            objective,
            max_epochs=max_epochs,
            patience=3,
            quiet=True,
            device="cpu",
            checkpoint=checkpoint,
            lr=1e-2,
        )
        history = trainer.fit(model, TASKS, train, stop)
        return model, history

    straight_model, straight = run(5, None)
    run(2, tmp_path / "ckpt")
    resumed_model, resumed = run(5, tmp_path / "ckpt")
    assert records(resumed) == records(straight)
    assert resumed.best_epoch == straight.best_epoch
    for a, b in zip(
        resumed_model.state_dict().values(), straight_model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)


def test_a_checkpoint_of_another_configuration_is_refused(hetero_splits, tmp_path):
    train, stop, _ = hetero_splits
    pt.Trainer("mean", max_epochs=1, quiet=True, device="cpu", checkpoint=tmp_path).fit(
        small_model(), TASKS, train, stop
    )
    with pytest.raises(ValueError, match=r"another configuration; lr: 0\.001 -> 0\.01"):
        pt.Trainer(
            "mean", max_epochs=2, lr=0.01, quiet=True, device="cpu", checkpoint=tmp_path
        ).fit(small_model(), TASKS, train, stop)
    with pytest.raises(ValueError, match="objective: Mean"):
        pt.Trainer("upgrad", max_epochs=2, quiet=True, device="cpu", checkpoint=tmp_path).fit(
            small_model(), TASKS, train, stop
        )


def test_a_finished_fit_is_not_trained_again(hetero_splits, tmp_path):
    train, stop, _ = hetero_splits
    trainer = pt.Trainer("mean", max_epochs=3, quiet=True, device="cpu", checkpoint=tmp_path)
    first_model = small_model()
    first = trainer.fit(first_model, TASKS, train, stop)
    again_model = small_model(seed=5)  # other initial weights: all must come from the checkpoint
    again = trainer.fit(again_model, TASKS, train, stop)
    assert records(again) == records(first)
    for a, b in zip(
        again_model.state_dict().values(), first_model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)


SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np, torch
    sys.path.insert(0, {tests!r})
    import polytask as pt
    from conftest import small_model

    torch.set_num_threads(1)
    train, stop, _ = pt.split(pt.make_hetero(4000, n_tasks=3, seed=1))
    kill_at = int(os.environ.get("KILL_AT", "0"))

    class Kill(pt.Callback):
        def on_step_end(self, state):
            if kill_at and state.step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    model = small_model()
    trainer = pt.Trainer(
        "dbmtl", max_epochs=6, patience=None, quiet=True, device="cpu",
        checkpoint=sys.argv[1], callbacks=[Kill()], lr=1e-2, batch_size=16,
    )
    history = trainer.fit(model, pt.regression_tasks(["task0", "task1", "task2"]), train, stop)
    torch.save({{"model": model.state_dict(), "records": history.records}}, sys.argv[2])
    """
)


def test_a_fit_killed_mid_epoch_resumes_to_the_same_weights(tmp_path):
    script = tmp_path / "fit.py"
    script.write_text(SCRIPT.format(tests=os.path.dirname(__file__)))

    def run(folder, out, kill_at=0):
        env = {**os.environ, "KILL_AT": str(kill_at)}
        cmd = [sys.executable, str(script), str(tmp_path / folder), str(tmp_path / out)]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)

    killed = run("ckpt", "killed.pt", kill_at=13 * 3 + 5)  # 13 steps an epoch: mid epoch 4
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (tmp_path / "killed.pt").exists()
    saved = torch.load(tmp_path / "ckpt" / "last.pt", weights_only=False)
    assert saved["epoch"] == 3
    resumed = run("ckpt", "resumed.pt")
    assert resumed.returncode == 0, resumed.stderr
    straight = run("fresh", "straight.pt")
    assert straight.returncode == 0, straight.stderr
    a = torch.load(tmp_path / "resumed.pt", weights_only=False)
    b = torch.load(tmp_path / "straight.pt", weights_only=False)
    drop = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert drop(a["records"]) == drop(b["records"]) and len(a["records"]) == 6
    for key in b["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert np.isfinite([r["stop_loss"] for r in a["records"]]).all()


def test_resuming_with_other_callbacks_is_refused_naming_them(hetero_splits, tmp_path):
    train, stop, _ = hetero_splits
    pt.Trainer("mean", max_epochs=1, quiet=True, device="cpu", checkpoint=tmp_path).fit(
        small_model(), TASKS, train, stop
    )
    monitor = pt.training.GradientMonitor(every=5)
    trainer = pt.Trainer(
        "mean", max_epochs=2, quiet=True, device="cpu", checkpoint=tmp_path, callbacks=[monitor]
    )
    with pytest.raises(ValueError, match=r"'BestWeights'\], this fit has \[.*'GradientMonitor'"):
        trainer.fit(small_model(), TASKS, train, stop)


def _first_epoch(tmp_path, train, stop, model=None, **options):
    settings = {"max_epochs": 1, "quiet": True, "device": "cpu", "checkpoint": tmp_path}
    pt.Trainer("mean", **{**settings, **options}).fit(model or small_model(), TASKS, train, stop)


def _resume(tmp_path, train, stop, model=None, **options):
    settings = {"max_epochs": 2, "quiet": True, "device": "cpu", "checkpoint": tmp_path}
    return pt.Trainer("mean", **{**settings, **options}).fit(
        model or small_model(), TASKS, train, stop
    )


def test_an_optimizer_factory_with_other_settings_is_refused(hetero_splits, tmp_path):
    """A partial or a closure names the same factory with another learning rate: the optimizer
    it builds is compared, not only its name (its old settings would be loaded silently)."""
    import functools

    train, stop, _ = hetero_splits
    _first_epoch(tmp_path, train, stop, optimizer=functools.partial(torch.optim.SGD, lr=0.1))
    with pytest.raises(
        ValueError, match=r"optimizer: partial\(.*lr=0\.1\) -> partial\(.*lr=0\.001"
    ):
        _resume(tmp_path, train, stop, optimizer=functools.partial(torch.optim.SGD, lr=0.001))
    with pytest.raises(ValueError, match="optimizer: partial"):  # SGD -> Adam: not a KeyError
        _resume(tmp_path, train, stop, optimizer=functools.partial(torch.optim.Adam))

    def factory(rate):  # the same code for both fits: only the object it closes over differs
        config = {"lr": rate}
        return lambda params: torch.optim.SGD(params, **config)

    other = tmp_path / "closure"
    _first_epoch(other, train, stop, optimizer=factory(0.1))
    with pytest.raises(
        ValueError, match=r"optimizer settings: SGD .*'lr': 0\.1.* -> SGD .*'lr': 0\.5"
    ):
        _resume(other, train, stop, optimizer=factory(0.5))
    # the same settings resume, and the scheduler's moved rate is no difference
    halving = lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)  # noqa: E731
    third = tmp_path / "scheduled"
    _first_epoch(third, train, stop, optimizer=factory(0.1), scheduler=halving)
    history = _resume(third, train, stop, optimizer=factory(0.1), scheduler=halving)
    assert history["lr"] == pytest.approx([0.1, 0.05])


def test_other_data_past_the_first_rows_is_refused(hetero_splits, tmp_path):
    train, stop, _ = hetero_splits
    _first_epoch(tmp_path, train, stop)
    assert len(stop) > 300
    changed = stop.targets["task2"].clone()
    changed[-1] += 1.0  # the last row only
    edited = pt.MultiTargetData(stop.x, {**stop.targets, "task2": changed})
    with pytest.raises(ValueError, match="data: "):
        _resume(tmp_path, train, edited)
    shorter = pt.MultiTargetData(stop.x[:300], {t: y[:300] for t, y in stop.targets.items()})
    with pytest.raises(
        ValueError, match=rf"rows: \[{len(train)}, {len(stop)}\] -> \[{len(train)}, 300\]"
    ):
        _resume(tmp_path, train, shorter)


def test_a_model_of_another_structure_with_the_same_shapes_is_refused(hetero_splits, tmp_path):
    train, stop, _ = hetero_splits
    _first_epoch(tmp_path, train, stop)
    model = small_model()
    model.trunk[1] = nn.Tanh()  # ReLU -> Tanh: no parameter changes shape
    assert isinstance(small_model().trunk[1], nn.ReLU)
    with pytest.raises(ValueError, match="structure: "):
        _resume(tmp_path, train, stop, model=model)
    with pytest.raises(ValueError, match="eval_batch_size: 8192 -> 100"):
        _resume(tmp_path, train, stop, eval_batch_size=100)


def test_monitors_records_survive_a_resume(hetero_splits, tmp_path):
    train, stop, _ = hetero_splits

    def monitors():
        return [pt.training.GradientMonitor(every=5), pt.training.TaskMetricProbe(TASKS, stop, 7)]

    straight = monitors()
    pt.Trainer("mean", max_epochs=2, quiet=True, device="cpu", callbacks=straight).fit(
        small_model(), TASKS, train, stop
    )
    _first_epoch(tmp_path, train, stop, callbacks=monitors())
    resumed = monitors()
    _resume(tmp_path, train, stop, callbacks=resumed)
    for a, b in zip(straight, resumed, strict=True):
        assert len(a.records) > 2 and a.records[0]["epoch"] == 1
        assert b.records == a.records


def test_an_unreadable_checkpoint_or_a_lower_max_epochs_is_refused_clearly(hetero_splits, tmp_path):
    train, stop, _ = hetero_splits
    pt.Trainer("mean", max_epochs=2, quiet=True, device="cpu", checkpoint=tmp_path).fit(
        small_model(), TASKS, train, stop
    )
    with pytest.raises(ValueError, match="at epoch 2, past max_epochs=1"):
        pt.Trainer("mean", max_epochs=1, quiet=True, device="cpu", checkpoint=tmp_path).fit(
            small_model(), TASKS, train, stop
        )
    path = tmp_path / "last.pt"
    assert oct(path.stat().st_mode & 0o777) != oct(0o600)  # an ordinary file's mode
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.raises(ValueError, match=rf"the checkpoint {path} cannot be read"):
        _resume(tmp_path, train, stop)
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=rf"the checkpoint {path} cannot be read"):
        _resume(tmp_path, train, stop)


def test_a_label_turned_missing_is_another_data_set(tmp_path):
    """A missing label reaches the losses as a mask (its target slot holds a placeholder):
    the fingerprint reads the masks as well as the values."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 1)).astype(np.float32)
    y = {t: rng.normal(size=40).astype(np.float32) for t in ("task0", "task1", "task2")}
    y["task1"][3] = 0.0
    tasks = [pt.Task(t, allow_missing=True) for t in y]
    data = pt.MultiTargetData(x, y)

    def fit(train):
        return pt.Trainer("mean", max_epochs=1, quiet=True, device="cpu", checkpoint=tmp_path).fit(
            small_model(), tasks, train, data
        )

    fit(data)
    holed = dict(y, task1=y["task1"].copy())
    holed["task1"][3] = np.nan
    with pytest.raises(ValueError, match="data: "):
        fit(pt.MultiTargetData(x, holed))


def test_an_identical_factory_gets_the_same_fingerprint_in_every_run():
    """Memory addresses in a partial's arguments or a closure's values differ between runs of
    one script: they are left out of the fingerprint, or a plain resume would be refused."""
    import functools

    from polytask.training._trainer import _qualified

    def made():  # what a new run of the same script builds: new objects, new addresses
        decay = lambda step: 0.9**step  # noqa: E731
        partial = functools.partial(torch.optim.SGD, lr=0.01, decay=decay)
        pair = (decay, 0.01)
        return partial, lambda params: torch.optim.SGD(params, lr=pair[1])

    (first, closure_a), (second, closure_b) = made(), made()
    assert first.keywords["decay"] is not second.keywords["decay"]
    assert _qualified(first) == _qualified(second) and " at 0x" not in _qualified(first)
    assert _qualified(closure_a) == _qualified(closure_b) and "0.01" in _qualified(closure_a)
    assert _qualified(functools.partial(torch.optim.SGD, lr=0.1)) != _qualified(first)
