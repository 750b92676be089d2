"""Bad inputs get a clear error at construction: task metrics and sizes, dataset masks and
labels, method options and loss weights."""

import math

import numpy as np
import pytest
import torch

import polytask as pt
from polytask import objectives

X = np.random.default_rng(0).normal(size=(60, 5)).astype("f4")
Y = X[:, 0]


# -- Task: metric names are checked against the registry and the task's kind -------------------
@pytest.mark.parametrize(
    ("metric", "message"),
    [
        (  # a classification metric on a regression task
            "accuracy",
            r"task 'a': the metric 'accuracy' does not apply to a regression task; "
            r"a regression task takes \['mse', 'mae'\]",
        ),
        (  # an unknown metric, listing the known ones
            "rmse",
            r"task 'a': unknown metric 'rmse'; known metrics: "
            r"\['accuracy', 'auc', 'f1', 'macro_f1', 'mae', 'mse'\]",
        ),
    ],
)
def test_a_metric_a_regression_task_cannot_take_is_refused(metric, message):
    with pytest.raises(ValueError, match=message):
        pt.Task("a", metrics=(metric,))


@pytest.mark.parametrize(
    ("kind", "size", "metric"),
    [
        ("multiclass", 3, "auc"),  # scikit-learn's AUC of one logit column per class fails
        ("multiclass", 3, "mse"),
        ("binary", 1, "mae"),
        ("multilabel", 2, "mse"),
    ],
)
def test_a_metric_of_another_kind_is_refused_naming_those_that_apply(kind, size, metric):
    with pytest.raises(ValueError, match=f"the metric '{metric}' does not apply to a {kind} task"):
        pt.Task("a", kind, size, metrics=(metric,))


def test_a_single_metric_name_given_as_a_string_is_refused():
    with pytest.raises(
        ValueError, match=r"task 'a': metrics must be a sequence of names.*\('mse',\)"
    ):
        pt.Task("a", metrics="mse")


def test_the_metric_kinds_cover_the_registry_and_every_kind_accepts_its_metrics():
    from polytask.evaluation import METRICS
    from polytask.tasks import DEFAULT_METRICS, METRIC_KINDS

    assert set(METRIC_KINDS) == set(METRICS)
    for kind, defaults in DEFAULT_METRICS.items():
        assert all(kind in METRIC_KINDS[name] for name in defaults)
    size = {"regression": 1, "binary": 1, "multiclass": 3, "multilabel": 3}
    for kind in size:
        names = tuple(name for name, kinds in METRIC_KINDS.items() if kind in kinds)
        assert pt.Task("a", kind, size[kind], metrics=names).metrics == names
    assert pt.Task("a", "multilabel", 2, metrics=["auc"]).metrics == ("auc",)


def test_evaluate_scores_the_metrics_a_task_accepts():
    task = pt.Task("a", "binary", metrics=("accuracy", "f1", "macro_f1", "auc"))
    model = pt.MultiTaskModel(torch.nn.Identity(), {"a": torch.nn.Linear(5, 1)})
    got = pt.evaluate(model, [task], pt.MultiTargetData(X, {"a": (Y > 0).astype("f4")}))["a"]
    assert set(got) == {"accuracy", "f1", "macro_f1", "auc"}
    assert all(0.0 <= value <= 1.0 for value in got.values())


# -- Task: size ------------------------------------------------------------------------------
def test_an_integral_numpy_size_is_accepted_as_an_int():
    task = pt.Task("a", "multiclass", size=np.int64(3))
    assert task.size == 3 and type(task.size) is int
    assert pt.Task("a", size=torch.tensor(2)).output_shape == (2,)


@pytest.mark.parametrize("size", [True, 3.0, np.float64(3.0), 0, -2, np.int64(0), "3"])
def test_a_size_that_is_not_a_positive_integer_is_refused(size):
    with pytest.raises(ValueError, match=r"task 'a': size must be a positive integer, got"):
        pt.Task("a", "multiclass", size=size)


# -- MultiTargetData: masks and clean targets ------------------------------------------------
def test_a_mask_for_an_unknown_task_is_refused():
    with pytest.raises(
        ValueError, match=r"masks given for unknown tasks \['zz'\]; the tasks are \['a'\]"
    ):
        pt.MultiTargetData(X, {"a": Y}, masks={"zz": np.ones(60, bool)})


def test_clean_targets_for_an_unknown_task_are_refused():
    with pytest.raises(
        ValueError, match=r"clean targets given for unknown tasks \['b'\]; the tasks are \['a'\]"
    ):
        pt.MultiTargetData(X, {"a": Y}, clean_targets={"a": Y, "b": Y})


def test_a_mask_of_the_wrong_length_is_named_as_the_mask():
    with pytest.raises(ValueError, match="the mask of task 'a' has 50 rows, inputs x have 60"):
        pt.MultiTargetData(X, {"a": Y}, masks={"a": np.ones(50, bool)})


def test_clean_targets_of_the_wrong_length_are_named_as_clean_targets():
    with pytest.raises(
        ValueError, match="the clean targets of task 'a' have 50 rows, inputs x have 60"
    ):
        pt.MultiTargetData(X, {"a": Y}, clean_targets={"a": Y[:50]})


def test_targets_of_the_wrong_length_keep_their_message():
    with pytest.raises(ValueError, match="task 'a': targets have 50 rows, inputs x have 60"):
        pt.MultiTargetData(X, {"a": Y[:50]})


def test_a_mask_that_is_not_one_flag_per_row_is_refused():
    with pytest.raises(
        ValueError, match=r"the mask of task 'a': shape \(60, 2\), expected \(60,\)"
    ):
        pt.MultiTargetData(X, {"a": Y}, masks={"a": np.ones((60, 2), bool)})
    with pytest.raises(ValueError, match=r"the mask of task 'a': values must be 0 or 1"):
        pt.MultiTargetData(X, {"a": Y}, masks={"a": np.full(60, 0.5)})


def test_a_valid_mask_is_kept():
    mask = np.arange(60) % 2 == 0
    data = pt.MultiTargetData(X, {"a": Y}, masks={"a": mask.astype(int)})
    assert data.masks["a"].dtype == torch.bool and data.masks["a"].tolist() == mask.tolist()


# -- MultiTargetData: string class labels ----------------------------------------------------
@pytest.mark.parametrize(
    "labels", [np.array(["x", "y"] * 30), np.array(["x", "y"] * 30, dtype=object), ["x", "y"] * 30]
)
def test_string_class_labels_are_refused_naming_the_task_and_the_remedy(labels):
    with pytest.raises(
        TypeError,
        match=r"targets of task 'a': .*strings.*encode classes as integers 0\.\.K-1.*LabelEncoder",
    ):
        pt.MultiTargetData(X, {"a": labels})


def test_string_inputs_are_refused_as_inputs():
    with pytest.raises(TypeError, match=r"inputs x: .*strings"):
        pt.MultiTargetData(np.array([["a"]] * 60), {"a": Y})


def test_string_labels_of_one_task_dataset_are_refused():
    with pytest.raises(TypeError, match=r"targets y: .*strings.*LabelEncoder"):
        pt.TaskData(X, np.array(["x", "y"] * 30))


# -- method options --------------------------------------------------------------------------
NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: pt.CAGrad(c=NAN), r"CAGrad: c must be a finite number >= 0, got nan"),
        (lambda: pt.CAGrad(c=INF), r"CAGrad: c must be a finite number >= 0, got inf"),
        (lambda: pt.GradNorm(alpha=NAN), r"GradNorm: alpha must be a finite number >= 0, got nan"),
        (lambda: pt.GradNorm(alpha=-1), r"GradNorm: alpha must be a finite number >= 0, got -1"),
        (lambda: pt.NashMTL(max_norm=NAN), r"NashMTL: max_norm must be a finite number >= 0"),
        (lambda: pt.NashMTL(max_norm=INF), r"NashMTL: max_norm must be a finite number >= 0"),
        (lambda: pt.NashMTL(max_norm=-1), r"NashMTL: max_norm must be a finite number >= 0"),
        (
            lambda: pt.NashMTL(update_weights_every=1.5),
            r"NashMTL: update_weights_every must be a positive integer, got 1.5",
        ),
        (
            lambda: pt.NashMTL(optim_niter=0),
            r"NashMTL: optim_niter must be a positive integer, got 0",
        ),
        (lambda: objectives.FairGrad(alpha=NAN), r"FairGrad: alpha must be a finite number >= 0"),
        (lambda: objectives.FairGrad(alpha=INF), r"FairGrad: alpha must be a finite number >= 0"),
        (
            lambda: objectives.DBMTL(beta_sigma=INF),
            r"DBMTL: beta_sigma must be a finite number >= 0",
        ),
        (lambda: pt.DWA(temperature=NAN), r"DWA: temperature must be a finite number > 0"),
        (lambda: pt.DWA(temperature=0), r"DWA: temperature must be a finite number > 0, got 0"),
        (lambda: pt.FAMO(lr=NAN), r"FAMO: lr must be a finite number, got nan"),
        (lambda: pt.FAMO(weight_decay=INF), r"FAMO: weight_decay must be a finite number, got inf"),
        (
            lambda: objectives.UPGrad(pref_vector=torch.tensor([1.0, NAN])),
            r"UPGrad: pref_vector must be finite",
        ),
        (lambda: objectives.MGDA(epsilon=NAN), r"MGDA: epsilon must be a finite number, got nan"),
        (lambda: objectives.MGDA(max_iters=INF), r"MGDA: max_iters must be a finite number"),
        (lambda: pt.CAGrad(c="0.4"), r"CAGrad: c must be a finite number >= 0, got '0.4'"),
        (
            lambda: pt.GradNorm(alpha=True),
            r"GradNorm: alpha must be a finite number >= 0, got True",
        ),
    ],
)
def test_a_method_option_that_is_not_finite_or_out_of_range_is_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: pt.FAMO(lr=-1.0), "lr` should be non-negative"),
        (lambda: objectives.MGDA(epsilon=0.0), "epsilon must be positive"),
    ],
)
def test_torchjd_refuses_the_range_of_its_options_when_the_method_is_bound(make, message):
    method = make()  # finite: accepted here; the range is torchjd's to check
    with pytest.raises(ValueError, match=message):
        method.bind(["a", "b"])


def test_method_options_at_the_edge_of_their_range_are_accepted():
    assert pt.CAGrad(c=0).options["c"] == 0
    assert pt.GradNorm(alpha=0).alpha == 0
    assert pt.NashMTL(max_norm=0, update_weights_every=np.int64(2)).options["max_norm"] == 0
    assert objectives.FairGrad(alpha=np.float32(0.5)).options["alpha"] == 0.5
    assert objectives.DBMTL(beta_sigma=0).beta_sigma == 0.0
    assert pt.FAMO(lr=0.0, weight_decay=0.0).lr == 0.0
    assert pt.DWA(temperature=np.float64(0.5)).temperature == 0.5
    method = objectives.MGDA(epsilon=1e-6, max_iters=10)
    method.bind(["a", "b"])
    weights = method.weights_from_gramian(torch.eye(2))
    torch.testing.assert_close(weights, torch.full((2,), 0.5))


# -- Weighted: numpy and torch weights -------------------------------------------------------
@pytest.mark.parametrize(
    "weights",
    [
        list(np.array([1, 2], "f4")),
        np.array([1, 2], "f4"),
        np.array([1, 2]),
        torch.tensor([1.0, 2.0]),
        [torch.tensor(1.0), np.int64(2)],
        {"a": np.float32(1.0), "b": torch.tensor(2.0)},
    ],
)
def test_weights_from_numpy_and_torch_are_accepted(weights):
    objective = pt.Weighted(weights)
    objective.bind(["a", "b"])
    assert float(objective.value(torch.tensor([1.0, 1.0]))) == 3.0
    given = objective.given.values() if isinstance(objective.given, dict) else objective.given
    assert all(type(w) in (int, float) for w in given)


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        (torch.tensor([1.0, NAN]), r"weights must be finite and non-negative, got \[1.0, nan\]"),
        (np.array([1.0, -1.0]), r"weights must be finite and non-negative, got \[1.0, -1.0\]"),
        (torch.zeros(2), r"every weight is 0"),
        (np.zeros(0), "weights must be finite and non-negative, got"),
        (torch.ones(2, 2), r"weights: expected one weight per task \(1-D\), got shape \(2, 2\)"),
        (torch.tensor(1.0), r"weights: expected one weight per task \(1-D\), got shape \(\)"),
        (["1", 2.0], r"weights must be finite and non-negative, got \['1', 2.0\]"),
    ],
)
def test_bad_numpy_and_torch_weights_are_still_refused(weights, message):
    with pytest.raises(ValueError, match=message):
        pt.Weighted(weights)


def test_python_weights_keep_their_repr():
    assert repr(pt.Weighted([1, 2])) == "Weighted([1, 2])"
    assert math.isclose(pt.Weighted((0.5, 1.5)).given[1], 1.5)
