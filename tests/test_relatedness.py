"""The task-relatedness experiment (MMoE paper, section 4.1): the synthetic data has the asked
task correlation, only the correlation differs between its draws, the experiment fits every
label at every correlation, and the table and figure summarise replications correctly."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from polytask.experiments._relatedness import (
    RelatednessExperiment,
    make_relatedness,
    plot_relatedness,
    relatedness_table,
    relatedness_weights,
    task_name,
    write_relatedness_figure,
)


@pytest.mark.parametrize("p", [1.0, 0.9, 0.5, 0.0, -0.3])
def test_task_weights_have_the_asked_cosine_and_norm(p):
    w1, w2 = relatedness_weights(p, d=30, c=2.0, seed=5)
    assert np.linalg.norm(w1) == pytest.approx(2.0) and np.linalg.norm(w2) == pytest.approx(2.0)
    assert w1 @ w2 / 4.0 == pytest.approx(p, abs=1e-12)
    same_w1, _ = relatedness_weights(0.2, d=30, c=2.0, seed=5)
    np.testing.assert_array_equal(w1, same_w1)  # only w2 depends on p


def test_only_the_correlation_differs_between_draws_of_one_seed():
    high, low = (make_relatedness(400, p, d=12, seed=3) for p in (0.9, 0.1))
    np.testing.assert_array_equal(high.x.numpy(), low.x.numpy())
    np.testing.assert_array_equal(high.targets["t1"].numpy(), low.targets["t1"].numpy())
    assert not np.allclose(high.targets["t2"].numpy(), low.targets["t2"].numpy())
    other = make_relatedness(400, 0.9, d=12, seed=4)
    assert not np.allclose(other.x.numpy(), high.x.numpy())


def test_label_correlation_falls_with_the_task_correlation_and_noise_has_its_scale():
    def label_correlation(p):
        data = make_relatedness(20000, p, d=20, seed=0, noise=0.0)
        return np.corrcoef(data.targets["t1"].numpy(), data.targets["t2"].numpy())[0, 1]

    values = [label_correlation(p) for p in (1.0, 0.9, 0.5, 0.0)]
    assert values[0] == pytest.approx(1.0)
    assert values[0] > values[1] > values[2] > values[3]  # strictly less related
    noisy = make_relatedness(20000, 0.5, d=20, seed=0, noise=0.1)
    residual = (noisy.targets["t1"] - noisy.clean_targets["t1"]).numpy()
    assert residual.std() == pytest.approx(0.1, rel=0.05) and abs(residual.mean()) < 0.005


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match=r"task correlation must be in \[-1, 1\], got 1.5"):
        make_relatedness(10, 1.5)
    with pytest.raises(ValueError, match="d must be at least 2"):
        relatedness_weights(0.5, d=1)
    with pytest.raises(ValueError, match="need n >= 1"):
        make_relatedness(0, 0.5)
    with pytest.raises(ValueError, match="correlations must lie in"):
        RelatednessExperiment(correlations=(0.5, 2.0))
    with pytest.raises(ValueError, match=r"unknown models \['logistic-regression'\]"):
        RelatednessExperiment(models=("logistic-regression",))


def test_the_experiment_fits_every_label_at_every_correlation(tmp_path):
    experiment = RelatednessExperiment(
        correlations=(1.0, 0.0),
        models=("shared-bottom", "mmoe", "single-task"),
        n_train=256,
        n_stop=128,
        n_test=128,
        d=6,
        n_experts=2,
        expert_units=4,
        max_epochs=2,
        device="cpu",
    )
    assert experiment.baseline == "single-task"  # when compared; else the first label
    assert RelatednessExperiment().baseline == "shared-bottom/mean"
    outcome = experiment.run(seed=0, quiet=True, checkpoint=tmp_path)
    tasks = [task_name(p, t) for p in (1.0, 0.0) for t in ("t1", "t2")]
    assert list(outcome.metrics) == ["shared-bottom/mean", "mmoe/mean", "single-task"]
    for per_task in outcome.metrics.values():
        assert sorted(per_task) == sorted(tasks)
        assert all(v["mse"] > 0 for v in per_task.values())
    assert "gate/t1/0" in outcome.histories["mmoe/mean@p=0"].records[-1]
    assert "single-task:t2@p=1" in outcome.histories
    assert len(list(tmp_path.glob("*/last.pt"))) == 2 * (2 + 2)  # one folder per fit
    again = experiment.run(seed=0, quiet=True, checkpoint=tmp_path)
    assert again.metrics == outcome.metrics


def test_table_means_and_intervals_over_replications(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for replication in range(6):
        for method in ("a/mean", "b/mean"):
            for p in (1.0, 0.5):
                for task in ("t1", "t2"):
                    value = 1.0 + (method == "b/mean") * (1 - p) + rng.normal(0, 0.1)
                    rows.append((replication, method, task_name(p, task), value))
    frame = pd.DataFrame(rows, columns=["replication", "method", "task", "mse"])
    table = relatedness_table(frame, baseline="a/mean")
    assert list(zip(table["correlation"], table["method"], strict=True)) == [
        (1.0, "a/mean"),
        (1.0, "b/mean"),
        (0.5, "a/mean"),
        (0.5, "b/mean"),
    ]
    part = frame[(frame["method"] == "b/mean") & frame["task"].str.startswith("p=0.5:")]
    per_replication = part.groupby("replication")["mse"].mean().to_numpy()
    row = table[(table["method"] == "b/mean") & (table["correlation"] == 0.5)].iloc[0]
    assert row["n"] == 6 and row["mean"] == pytest.approx(per_replication.mean())
    half = stats.t.ppf(0.975, 5) * per_replication.std(ddof=1) / np.sqrt(6)
    assert row["ci_high"] - row["mean"] == pytest.approx(half)
    assert row["median"] == pytest.approx(np.median(per_replication))
    assert row["gmean"] == pytest.approx(np.exp(np.log(per_replication).mean()))
    # paired with the baseline replication by replication: b is worse by about 1 + 0.5 at p=0.5
    base = frame[(frame["method"] == "a/mean") & frame["task"].str.startswith("p=0.5:")]
    base_means = base.groupby("replication")["mse"].mean().to_numpy()
    logs = np.log(per_replication / base_means)
    assert row["ratio"] == pytest.approx(np.exp(logs.mean()))
    log_half = stats.t.ppf(0.975, 5) * logs.std(ddof=1) / np.sqrt(6)
    assert row["ratio_high"] == pytest.approx(np.exp(logs.mean() + log_half))
    assert 1.3 < row["ratio"] < 1.7
    assert (table.loc[table["method"] == "a/mean", "ratio"] == 1.0).all()
    written = write_relatedness_figure(frame, tmp_path, baseline="a/mean")
    pd.testing.assert_frame_equal(written, table)
    assert (tmp_path / "relatedness.png").stat().st_size > 10_000
    assert plot_relatedness(table, tmp_path / "again.png").exists()
    with pytest.raises(ValueError, match="tasks named 'p=<correlation>:<task>'"):
        relatedness_table(frame.assign(task="t1"))


@pytest.mark.slow
def test_both_architectures_learn_the_tasks_at_every_correlation():
    """Test MSE against the noiseless targets ends far below the targets' variance (what
    predicting the mean scores) at every correlation, for shared-bottom and MMoE."""
    experiment = RelatednessExperiment(
        models=("shared-bottom", "mmoe"), n_train=2000, max_epochs=80, device="cpu"
    )
    outcome = experiment.run(seed=0, quiet=True)
    for p in experiment.correlations:
        test = experiment.data(0, p)[2]
        for task in ("t1", "t2"):
            variance = float(test.clean_targets[task].var())
            for label, per_task in outcome.metrics.items():
                assert per_task[task_name(p, task)]["mse"] < 0.25 * variance, (label, p, task)
