"""The census experiment: the Adult files read and validated, the two tasks, the encoding fitted
on the training rows only, every architecture and reference on a tiny budget, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import shared_data
from polytask.datasets._census import (
    ADULT_COLUMNS,
    EXPECTED_ROWS,
    CensusFormatError,
    census_inputs,
    census_targets,
    read_census,
)
from polytask.experiments._census import (
    MULTI_TASK_MODELS,
    CensusExperiment,
    build_architecture,
    census_parameter_counts,
    compared_labels,
    fit_folder,
)

HEADER = ", ".join(ADULT_COLUMNS)
ROW = (
    "39, State-gov, 77516, Bachelors, 13, Never-married, Adm-clerical, Not-in-family, White, "
    "Male, 2174, 0, 40, United-States, <=50K"
)


def _file(tmp_path, rows, name="adult.data", header=HEADER):
    path = tmp_path / name
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


# --- reading and validation (no shared data needed) -------------------------------------------
def test_a_well_formed_file_is_read_with_missing_values_and_test_labels(tmp_path):
    rows = [ROW, ROW.replace("State-gov", "?").replace("<=50K", ">50K."), ""]
    frame = read_census(_file(tmp_path, rows), expected_rows=2)
    assert list(frame.columns) == ADULT_COLUMNS
    assert frame["workclass"].isna().tolist() == [False, True]
    assert frame["Y"].tolist() == ["<=50K", ">50K"]  # the test file's period stripped
    assert frame["age"].dtype.kind == "i"
    targets = census_targets(frame)
    assert targets["income"].tolist() == [0.0, 1.0]
    assert targets["never_married"].tolist() == [1.0, 1.0]


@pytest.mark.parametrize(
    ("row", "where"),
    [
        (ROW.replace("39,", "thirty-nine,"), "line 3, column 'age': 'thirty-nine' is not an int"),
        (ROW.replace(", 40,", ", ,"), "line 3, column 'hours-per-week': empty value"),
        (ROW.replace("<=50K", "<=60K"), "line 3, column 'Y': '<=60K' is not one of"),
        (ROW.rsplit(",", 1)[0], "line 3: 14 fields, the header has 15"),
    ],
)
def test_a_malformed_row_is_refused_naming_file_line_and_column(tmp_path, row, where):
    path = _file(tmp_path, [ROW, row, ROW])
    with pytest.raises(CensusFormatError) as error:
        read_census(path)
    assert str(error.value).startswith(f"{path.resolve()}, ")
    assert where in str(error.value)


def test_a_missing_column_or_a_truncated_file_is_refused(tmp_path):
    header = HEADER.replace("marital-status, ", "")
    bad = _file(tmp_path, [ROW], header=header)
    with pytest.raises(CensusFormatError, match=r"line 1 \(header\): columns \['marital-status'\]"):
        read_census(bad)
    short = _file(tmp_path, [ROW, ROW], name="adult.test")
    with pytest.raises(CensusFormatError, match="2 data rows, expected 16281"):
        read_census(short, EXPECTED_ROWS["adult.test"])
    with pytest.raises(FileNotFoundError, match="no such census file"):
        read_census(tmp_path / "absent.data")


def test_marital_status_and_the_label_are_not_inputs():
    frame = read_census_row_frame()
    inputs = census_inputs(frame)
    assert "marital-status" not in inputs.columns and "Y" not in inputs.columns
    assert inputs["capital-gain"].iloc[0] == pytest.approx(np.log1p(2174))


def read_census_row_frame():
    import pandas as pd

    values = [v.strip() for v in ROW.split(",")]
    frame = pd.DataFrame([values], columns=ADULT_COLUMNS)
    for column in ("age", "fnlwgt", "education-num", "capital-gain", "capital-loss"):
        frame[column] = frame[column].astype(int)
    frame["hours-per-week"] = frame["hours-per-week"].astype(int)
    return frame


# --- configuration ---------------------------------------------------------------------------
def test_labels_baseline_and_bad_configurations():
    experiment = CensusExperiment(models=("shared-bottom", "mmoe"), methods=("mean", "uw"))
    assert experiment.labels() == ["shared-bottom/mean", "shared-bottom/uw", "mmoe/mean", "mmoe/uw"]
    assert experiment.baseline == "shared-bottom/mean"  # no single-task: the first label
    assert CensusExperiment().baseline == "single-task"
    assert CensusExperiment(models=("mmoe", "ple"), baseline="ple").baseline == "ple/mean"
    with pytest.raises(ValueError, match=r"unknown models \['moe'\]"):
        CensusExperiment(models=("moe",))
    with pytest.raises(ValueError, match=r"models \['mmoe'\] named twice"):
        CensusExperiment(models=("mmoe", "mmoe"))
    with pytest.raises(ValueError, match="baseline 'cgc' is not among"):
        CensusExperiment(models=("mmoe",), baseline="cgc")
    with pytest.raises(ValueError, match="unknown method"):
        CensusExperiment(methods=("nope",))
    assert compared_labels(["single-task", "ple"], ["mean"]) == ["single-task", "ple/mean"]


def test_architectures_have_matched_parameter_counts():
    counts = census_parameter_counts()
    for name, count in counts.items():
        assert 0.75 < count / counts["shared-bottom"] < 1.3, (name, counts)
    tasks = {"income": 1, "never_married": 1}
    models = {name: build_architecture(name, 20, tasks, seed=1) for name in MULTI_TASK_MODELS}
    assert {type(m).__name__ for m in models.values()} == {
        "SharedBottom",
        "MMoE",
        "CGC",
        "PLE",
        "CrossStitch",
        "DSelectK",
    }
    assert fit_folder("c", "single-task", "never_married").name == "single-task_never_married"


# --- on the shared Adult files ---------------------------------------------------------------
@pytest.fixture(scope="module")
def adult():
    return shared_data("adult")


def test_the_files_match_their_source_description(adult):
    data = read_census(adult / "adult.data", EXPECTED_ROWS["adult.data"])
    test = read_census(adult / "adult.test", EXPECTED_ROWS["adult.test"])
    assert int(census_targets(data)["income"].sum()) == 7841  # SOURCE.md
    assert int(census_targets(data)["never_married"].sum()) == 10683
    assert int(census_targets(test)["income"].sum()) == 3846
    assert int(census_targets(test)["never_married"].sum()) == 5434
    assert data["workclass"].isna().any() and set(test["Y"]) == {"<=50K", ">50K"}


def test_splits_and_encoding_fitted_on_the_training_rows_only(adult):
    experiment = CensusExperiment(data_dir=adult, stop_fraction=0.25)
    train, stop, test = experiment.frames(seed=3)
    assert len(train) + len(stop) == EXPECTED_ROWS["adult.data"] and len(test) == 16281
    assert not set(train.index) & set(stop.index)
    assert experiment.frames(seed=4)[1].index.tolist() != stop.index.tolist()
    splits = experiment.prepare(seed=3)
    inputs = list(splits.encoder.feature_names_in_)
    assert "marital-status" not in inputs and "Y" not in inputs and len(inputs) == 13
    numeric = splits.train.x[:, :6].numpy()
    np.testing.assert_allclose(numeric.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(numeric.std(axis=0), 1.0, atol=1e-3)
    assert np.abs(splits.test.x[:, :6].numpy().mean(axis=0)).max() > 1e-3  # not refitted
    scaler = splits.encoder.named_transformers_["numeric"]
    np.testing.assert_allclose(scaler.mean_[0], train["age"].mean())
    # categories come from the training rows: a small training set misses rare countries,
    # whose test rows get no one-hot code at all
    small = CensusExperiment(data_dir=adult, n_train=300).prepare(seed=0)
    countries = small.encoder.named_transformers_["categorical"].categories_[-1]
    assert set(countries) == set(small.frames[0]["native-country"].fillna("missing"))
    unseen = ~small.frames[2]["native-country"].fillna("missing").isin(countries).to_numpy()
    assert unseen.any()
    country_columns = [
        i for i, n in enumerate(small.encoder.get_feature_names_out()) if "country" in n
    ]
    assert (small.test.x[unseen][:, country_columns] == 0).all()


def test_every_model_and_reference_runs_and_scores_auc(adult):
    experiment = CensusExperiment(
        data_dir=adult,
        models=(*MULTI_TASK_MODELS, "single-task", "logistic-regression"),
        n_train=600,
        max_epochs=1,
        n_experts=4,
        expert_units=8,
        device="cpu",
    )
    outcome = experiment.run(seed=0, quiet=True)
    assert list(outcome.metrics) == experiment.labels()
    for label, per_task in outcome.metrics.items():
        assert sorted(per_task) == ["income", "never_married"], label
        for values in per_task.values():
            assert 0.0 < values["auc"] <= 1.0
    # logistic regression on 600 rows is far above chance on both tasks
    assert outcome.metrics["logistic-regression"]["income"]["auc"] > 0.8
    assert outcome.metrics["logistic-regression"]["never_married"]["auc"] > 0.9
    gated = {k: h for k, h in outcome.histories.items() if "gate/income/0" in h.records[-1]}
    assert sorted(gated) == ["cgc/mean", "dselect-k/mean", "mmoe/mean", "ple/mean"]
    assert sorted(outcome.histories) == sorted(
        [f"{m}/mean" for m in MULTI_TASK_MODELS]
        + ["single-task:income", "single-task:never_married"]
    )


def test_same_seed_same_results_with_or_without_a_checkpoint(adult, tmp_path):
    """Bit-identical test metrics for one seed, and a checkpoint changes nothing (its resume
    without retraining is tested through the command line, tests/test_cli.py)."""
    experiment = CensusExperiment(
        data_dir=adult,
        models=("mmoe", "single-task"),
        n_train=800,
        max_epochs=2,
        n_experts=2,
        expert_units=4,
        device="cpu",
    )
    plain = experiment.run(seed=1, quiet=True)
    first = experiment.run(seed=1, quiet=True, checkpoint=tmp_path)
    assert first.metrics == plain.metrics
    assert (
        first.histories["mmoe/mean"]
        .to_frame()
        .drop(columns="seconds")
        .equals(plain.histories["mmoe/mean"].to_frame().drop(columns="seconds"))
    )
    saved = sorted(p.parent.name for p in tmp_path.glob("*/last.pt"))
    assert saved == ["mmoe_mean", "single-task_income", "single-task_never_married"]


def test_the_comparison_section_pairs_every_model_with_shared_bottom(tmp_path):
    import pandas as pd
    from scipy import stats

    from polytask.experiments._census import census_section, census_summary

    rng = np.random.default_rng(0)
    rows = []
    for replication in range(8):
        for task in ("income", "never_married"):
            base = 0.9 + rng.normal(0, 0.01)
            rows.append((replication, "shared-bottom/mean", task, base))
            rows.append((replication, "mmoe/mean", task, base + 0.002 + rng.normal(0, 0.001)))
            rows.append((replication, "single-task", task, base - 0.01))
    frame = pd.DataFrame(rows, columns=["replication", "method", "task", "auc"])
    means, paired = census_summary(frame)
    sb = frame[(frame["method"] == "shared-bottom/mean") & (frame["task"] == "income")]["auc"]
    row = means[(means["method"] == "shared-bottom/mean") & (means["task"] == "income")].iloc[0]
    half = stats.t.ppf(0.975, 7) * sb.std(ddof=1) / np.sqrt(8)
    assert row["mean"] == pytest.approx(sb.mean()) and row["ci_high"] == pytest.approx(
        sb.mean() + half
    )
    single = paired[(paired["method"] == "single-task") & (paired["task"] == "income")].iloc[0]
    assert single["mean difference"] == pytest.approx(-0.01) and single["higher"] == "0 of 8"
    mmoe = paired[(paired["method"] == "mmoe/mean") & (paired["task"] == "never_married")]
    assert mmoe.iloc[0]["higher"] == "8 of 8" and mmoe.iloc[0]["wilcoxon_p"] < 0.01
    text = census_section(frame, tmp_path)
    assert "## Paired against shared-bottom/mean" in text
    assert "| mmoe/mean | 0.00" in text and "8 of 8" in text
    assert (tmp_path / "census_means.csv").exists()
    assert len(pd.read_csv(tmp_path / "census_vs_shared_bottom.csv")) == 4
    # an undefined AUC is left out of the mean and counted; a repeated row is refused
    holed = frame.copy()
    holed.loc[0, "auc"] = np.nan  # replication 0, shared-bottom, income
    means, _ = census_summary(holed)
    row = means[(means["method"] == "shared-bottom/mean") & (means["task"] == "income")].iloc[0]
    assert row["n"] == 7 and row["n_missing"] == 1
    assert row["mean"] == pytest.approx(sb.iloc[1:].mean())
    assert "Undefined scores left out (and out of the pairs): shared-bottom/mean on income: 1" in (
        census_section(holed, tmp_path)
    )
    assert "cannot reach p < 0.05" in census_section(frame[frame["replication"] < 4], tmp_path)
    with pytest.raises(
        ValueError, match=r"1 \(replication, task, method\) keys have several result rows"
    ):
        census_summary(pd.concat([frame, frame.iloc[:1]]))
