"""Task-weight search with Optuna: a grid over the simplex or Bayesian (TPE) search, studies in
Optuna's storage (resumable), pruning on the per-epoch stop metric, and the front of static
weightings that any other method can be placed against (Xin et al. 2022)."""

from __future__ import annotations

import itertools
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from .._checks import differences
from ..evaluation import evaluate
from ..evaluation._metrics import greater_is_better
from ..objectives import make_objective
from ..training import Callback
from ._replicate import source_hash

SearchMethod = Literal["grid", "bayes"]
Combine = Literal["mean", "worst"]
COMBINES = ("mean", "worst")


def combine_metrics(values: Sequence[float], combine: Combine, greater: bool) -> float:
    """The per-task metrics as one score: their mean, or the worst task's value."""
    if combine == "mean":
        return float(np.mean(values))
    return float(np.min(values) if greater else np.max(values))


def simplex_grid(
    n_tasks: int, resolution: int, *, interior: bool = False
) -> list[tuple[float, ...]]:
    """Every weight vector with entries in ``{0, 1/r, ..., 1}`` summing to 1, scaled to sum to
    ``n_tasks`` (so equal weighting is the all-ones point when ``r`` is a multiple of T);
    ``interior``: only those that weight every task (no entry 0).

    A search for static weights that keep every task wants the interior: on the grid of step
    1/3 over three tasks, equal weighting is the only point that trains all three.

    Examples
    --------
    >>> simplex_grid(2, 2)
    [(0.0, 2.0), (1.0, 1.0), (2.0, 0.0)]
    >>> simplex_grid(3, 3, interior=True)
    [(1.0, 1.0, 1.0)]
    """
    if n_tasks < 2 or resolution < 1:
        raise ValueError(
            f"a grid needs 2 or more tasks and a resolution >= 1, got {n_tasks}, {resolution}"
        )
    points = []
    for cut in itertools.combinations(range(resolution + n_tasks - 1), n_tasks - 1):
        bounds = (-1, *cut, resolution + n_tasks - 1)
        counts = [bounds[i + 1] - bounds[i] - 1 for i in range(n_tasks)]
        if interior and 0 in counts:
            continue
        points.append(tuple(n_tasks * c / resolution for c in counts))
    if not points:
        raise ValueError(f"the grid of step 1/{resolution} has no point inside the simplex")
    return points


class _ReportStopMetric(Callback):
    """Reports the epoch's mean stop-set metric to the trial and prunes bad trials."""

    def __init__(self, trial: Any, tasks: Sequence[str], metric: str, combine: Combine) -> None:
        self.trial, self.tasks, self.metric, self.combine = trial, tasks, metric, combine
        self.greater = greater_is_better(metric)

    def on_epoch_end(self, state: Any, record: dict[str, float]) -> None:
        import optuna

        values = [record[f"stop_{self.metric}/{t}"] for t in self.tasks]
        value = combine_metrics(values, self.combine, self.greater)
        self.trial.report(value, state.epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"epoch {state.epoch}: stop {self.metric} {value:.4f}")


@dataclass
class TuneResult:
    """The study, the selected weights, and their single evaluation on the test set."""

    study: Any
    weights: dict[str, float]
    stop_score: float
    test_metrics: dict[str, dict[str, float]]

    def front(self) -> pd.DataFrame:
        """One row per finished trial: its weights and each task's stop and test metric."""
        return study_frame(self.study)


def study_frame(study: Any) -> pd.DataFrame:
    import optuna

    rows = []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        rows.append({"trial": trial.number, "score": trial.value, **trial.user_attrs})
    return pd.DataFrame(rows)


class _SurplusTrial(Exception):
    """A trial started after the study already holds its trials (others ran them)."""


def _storage(url: str, heartbeat: int | None) -> Any:
    import optuna

    _create_schema(url)
    if heartbeat is None:
        return url
    # a trial killed with its process stops beating; after the grace period the next run
    # marks it failed and queues its weights again (optuna >= 4.9 names; older ones before)
    storages = optuna.storages
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if hasattr(storages, "RetryHeartbeatStaleTrialCallback"):
            retry = {"heartbeat_stale_trial_callback": storages.RetryHeartbeatStaleTrialCallback(3)}
        else:
            retry = {"failed_trial_callback": storages.RetryFailedTrialCallback(max_retry=3)}
        return storages.RDBStorage(
            url, heartbeat_interval=heartbeat, grace_period=2 * heartbeat, **retry
        )


def _create_schema(url: str, attempts: int = 5) -> None:
    """Create Optuna's tables once: processes that create them at the same moment on a new
    PostgreSQL database collide (optuna/optuna#1092); the one that loses tries again and
    finds them made."""
    import optuna
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    for attempt in range(attempts):
        try:
            optuna.storages.RDBStorage(url).engine.dispose()
            return
        except (IntegrityError, OperationalError, ProgrammingError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


def _check_identity(study: Any, identity: dict[str, Any]) -> None:
    """Mark a new study with what made it; refuse one that another configuration (or other
    code) made: its trials would be read as this search's, and Optuna keeps the direction it
    was made with."""
    made = study.user_attrs.get("polytask")
    if made is None:
        if study.get_trials(deepcopy=False):
            raise ValueError(
                f"study {study.study_name!r} holds trials that polytask tune did not record "
                "with its configuration; give another --study name or --storage"
            )
        study.set_user_attr("polytask", identity)
        return
    differs = differences(made, identity)
    if differs:
        raise ValueError(
            f"study {study.study_name!r} was made by another configuration ({'; '.join(differs)}); "
            "give another --study name or --storage"
        )


def tune(
    experiment: Any,
    method: SearchMethod = "grid",
    trials: int = 20,
    *,
    storage: str | None = None,
    study_name: str | None = None,
    seed: int = 0,
    resolution: int = 6,
    interior: bool = False,
    prune: bool = True,
    heartbeat: int | None = 60,
    combine: Combine = "mean",
    quiet: bool = True,
    score_test: bool = True,
) -> TuneResult:
    """Search the task weights of ``experiment``'s weighted loss on its stop set.

    Each trial fits the model with one weight vector (same split and initial weights, drawn
    from ``seed``) and scores it by the stop-set ``experiment.metric`` combined over tasks by
    ``combine`` (``mean``, or ``worst``: the worst task's value); maximised or minimised as the
    metric wants (macro F1 up, MSE down; synthetic experiments test against the noiseless
    targets, as their comparisons do).
    ``grid`` walks :func:`simplex_grid` (of step ``1 / resolution``; ``interior``: only the
    points that weight every task); ``bayes`` draws weights with Optuna's TPE sampler
    (normalised to sum to T). Trials are pruned by Optuna's median rule on the per-epoch stop
    metric. The study lives in ``storage`` (any SQLAlchemy URL; an existing study of the same
    name resumes, with its finished trials kept). The best weights are then fitted once more
    and evaluated once on the test set; with ``score_test`` each trial's test metrics are
    recorded too, for the front plot only, never for the selection (``False``: the test rows
    are read by the final fit only).

    Examples
    --------
    >>> import tempfile
    >>> from polytask.experiments import SyntheticExperiment
    >>> experiment = SyntheticExperiment("hetero", n=400, n_tasks=2, max_epochs=2, device="cpu")
    >>> storage = f"sqlite:///{tempfile.mkdtemp()}/study.db"
    >>> result = tune(experiment, "grid", trials=3, resolution=2, storage=storage)
    >>> len(result.weights)
    2
    """
    try:
        import optuna
    except ImportError as error:
        message = "polytask tune needs the 'tune' extra: pip install 'polytask[tune]'"
        raise ImportError(message) from error
    if method not in ("grid", "bayes"):
        raise ValueError(f"method must be 'grid' or 'bayes', got {method!r}")
    if trials < 1:
        raise ValueError(f"trials must be positive, got {trials}")
    if combine not in COMBINES:
        raise ValueError(f"combine must be one of {COMBINES}, got {combine!r}")
    greater = greater_is_better(experiment.metric)
    against = experiment.test_against
    tasks = [t.name for t in experiment.tasks()]
    train, stop, test = experiment.data(seed)
    grid = simplex_grid(len(tasks), resolution, interior=interior) if method == "grid" else []
    if method == "grid":
        sampler: Any = optuna.samplers.GridSampler({"point": list(range(len(grid)))}, seed=seed)
        trials = min(trials, len(grid))
    else:
        sampler = None  # seeded below, once the study says how many trials it already holds
    pruner = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=3)
    # a grid index means its grid: its step, and whether it holds the boundary
    search = f"grid{resolution}{'i' * interior}" if method == "grid" else method
    name = study_name or (
        f"{experiment.name}-{search}-{combine}-{experiment.config_hash()}-seed{seed}"
    )
    # errors only: a trial stopped because others took the budget (_SurplusTrial, caught and
    # recorded as failed) is the study's own bookkeeping, not a warning with a traceback
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    store = _storage(storage, heartbeat) if storage else None
    study = optuna.create_study(
        storage=store,
        sampler=sampler,
        pruner=pruner if prune else optuna.pruners.NopPruner(),
        study_name=name,
        direction="maximize" if greater else "minimize",
        load_if_exists=True,
    )
    _check_identity(
        study,
        {
            "experiment": experiment.name,
            "configuration": experiment.config_hash(),
            "search": search,
            "combine": combine,
            "seed": seed,
            "direction": "maximize" if greater else "minimize",
            "tasks": tasks,
            "polytask_source": source_hash(),
        },
    )
    if method == "bayes":
        # A resumed study must continue the search: a sampler seeded as at the start would
        # re-propose the points the first trials already tried.
        resumed = len(study.get_trials(deepcopy=False))
        sampler_seed = np.random.SeedSequence([seed, resumed]).generate_state(1)[0]
        # TPE draws its first n_startup_trials at random (10 by default): half the budget
        startup = max(1, min(10, trials // 2))
        study.sampler = optuna.samplers.TPESampler(seed=int(sampler_seed), n_startup_trials=startup)

    def weights_of(trial: Any) -> list[float]:
        if method == "grid":
            return list(grid[trial.suggest_categorical("point", list(range(len(grid))))])
        raw = [trial.suggest_float(f"w_{t}", 1e-3, 1.0, log=True) for t in tasks]
        return [len(tasks) * r / sum(raw) for r in raw]

    def objective(trial: Any) -> float:
        # another process sharing the study may have started the last trials meanwhile:
        # MaxTrialsCallback counts finished trials only, so stop here rather than overshoot
        taken = (*done, optuna.trial.TrialState.RUNNING)
        if len(study.get_trials(deepcopy=False, states=taken)) > trials:
            study.stop()
            raise _SurplusTrial(f"{trials} trials are finished or running")
        weights = weights_of(trial)
        report = _ReportStopMetric(trial, tasks, experiment.metric, combine)
        callbacks = [report] if prune else []
        model, _ = experiment.fit(
            experiment.weighted(weights), train, stop, seed, quiet, callbacks, track_metrics=prune
        )
        stop_metrics = evaluate(model, experiment.tasks(), stop)
        trial.set_user_attr("weights", weights)
        for t in tasks:
            trial.set_user_attr(f"stop/{t}", stop_metrics[t][experiment.metric])
        if score_test:  # for the front plot only, never for the selection
            test_metrics = evaluate(model, experiment.tasks(), test, against=against)
            for t in tasks:
                trial.set_user_attr(f"test/{t}", test_metrics[t][experiment.metric])
        return combine_metrics(
            [stop_metrics[t][experiment.metric] for t in tasks], combine, greater
        )

    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)

    def count(*states: Any) -> int:
        return len(study.get_trials(deepcopy=False, states=states))

    beaten: set[int] = set()
    while (finished := count(*done)) < trials:
        study.optimize(
            objective,
            n_trials=trials - finished,
            callbacks=[optuna.study.MaxTrialsCallback(trials, states=done)],
            catch=(_SurplusTrial,),  # recorded as failed: never counted, never selected
        )
        running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        if count(*done) >= trials or not running or heartbeat is None:
            break  # without a heartbeat a killed process's trial would never be freed
        # trials still running elsewhere: wait for them to finish, or (a killed process's)
        # to be failed by the heartbeat and queued again, then take what is left. A process
        # killed before its trial's first heartbeat leaves a trial without any, which Optuna
        # never finds stale: give each waited-on trial one beat, so that a dead one expires
        # after the grace period (a live one's own thread keeps beating)
        for trial in running:
            if trial._trial_id not in beaten and isinstance(store, optuna.storages.RDBStorage):
                store.record_heartbeat(trial._trial_id)
                beaten.add(trial._trial_id)
        time.sleep(min(5.0, heartbeat / 2))
    best = study.best_trial
    weights = dict(zip(tasks, best.user_attrs["weights"], strict=True))
    model, _ = experiment.fit(experiment.weighted(list(weights.values())), train, stop, seed, quiet)
    test_metrics = evaluate(model, experiment.tasks(), test, against=against)
    return TuneResult(study, weights, float(best.value), test_metrics)


def tune_on_stop_set(experiment: Any, seed: int, trials: int = 10) -> TuneResult:
    """The weights search of one replication, as a comparison's ``tuned`` method runs it:
    on the stop set of the split drawn from ``seed`` only (its test rows are read once, by the
    final fit), a grid over the inside of the simplex for 2 or 3 tasks (every task weighted;
    the finest grid with at most ``trials`` points that holds equal weights) and TPE with
    ``trials`` fits above; Optuna's median pruning on the per-epoch stop metric; an in-memory
    study.

    Examples
    --------
    >>> from polytask.experiments import SyntheticExperiment
    >>> experiment = SyntheticExperiment("hetero", n=400, n_tasks=2, max_epochs=2, device="cpu")
    >>> sorted(tune_on_stop_set(experiment, seed=0, trials=3).weights)
    ['task0', 'task1']
    """
    n_tasks = len(experiment.tasks())
    if n_tasks > 3:
        return tune(experiment, "bayes", trials, seed=seed, score_test=False)
    resolution = search_resolution(n_tasks, trials)
    return tune(
        experiment,
        "grid",
        trials,
        seed=seed,
        resolution=resolution,
        interior=True,
        score_test=False,
    )


def search_resolution(n_tasks: int, trials: int) -> int:
    """The finest grid step ``1 / r`` whose interior (:func:`simplex_grid` with ``interior``)
    has at most ``trials`` points (at least the grid of step ``1 / T``, equal weights alone)
    and includes equal weights (``r`` a multiple of T), so a search can always keep them.

    Examples
    --------
    >>> search_resolution(2, 10), search_resolution(3, 10)
    (10, 6)
    >>> simplex_grid(3, 6, interior=True)[:3]
    [(0.5, 0.5, 2.0), (0.5, 1.0, 1.5), (0.5, 1.5, 1.0)]
    """

    def size(r: int) -> int:
        return len(simplex_grid(n_tasks, r, interior=True))

    fits = max(trials, 1)
    return max(r for r in range(n_tasks, 13 * n_tasks, n_tasks) if size(r) <= fits)


def place_methods(
    experiment: Any, methods: Sequence[str], seed: int = 0, quiet: bool = True
) -> dict[str, dict[str, float]]:
    """Fit other methods on the same split and initial weights as the study: each method's
    ``stop/<task>`` and ``test/<task>`` metric, for :func:`plot_front`. A name is one of the
    experiment's methods or any objective name (``mgda``, ``upgrad``...)."""
    train, stop, test = experiment.data(seed)
    placed = {}
    for method in methods:
        if method in experiment.known_methods:
            objective = experiment.objective(method)
        else:
            objective = make_objective(method)
        model, _ = experiment.fit(objective, train, stop, seed, quiet)
        row = {}
        for split, data, against in (
            ("stop", stop, "targets"),
            ("test", test, experiment.test_against),
        ):
            metrics = evaluate(model, experiment.tasks(), data, against=against)
            row.update({f"{split}/{t}": v[experiment.metric] for t, v in metrics.items()})
        placed[method] = row
    return placed


def _dominated(q: np.ndarray, p: np.ndarray) -> bool:
    """Whether q is at least as good as p everywhere and better somewhere (higher is better)."""
    return bool(np.all(q >= p) and np.any(q > p))


def _pareto(points: np.ndarray, greater: bool = True) -> np.ndarray:
    """Indices of the points no other point beats on both coordinates, sorted by the first."""
    points = points if greater else -points
    keep = [
        i
        for i, p in enumerate(points)
        if not any(_dominated(q, p) for j, q in enumerate(points) if j != i)
    ]
    return np.array(sorted(keep, key=lambda i: points[i, 0]), dtype=int)


def plot_front(
    frame: pd.DataFrame,
    tasks: Sequence[str],
    metric: str,
    path: str | Path,
    placed: dict[str, dict[str, float]] | None = None,
) -> Path:
    """The front of static weightings: for each pair of tasks (one pair for two tasks, three
    for three), each grid weighting's metric on the stop set (left) and the test set (right),
    its non-dominated front as a line, and other methods as labelled markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if len(tasks) not in (2, 3):
        raise ValueError(f"the front is drawn for two or three tasks, got {len(tasks)}")
    pairs = list(itertools.combinations(tasks, 2))
    fig, axes = plt.subplots(len(pairs), 2, figsize=(10, 4.2 * len(pairs)), squeeze=False)
    markers = itertools.cycle("*DsP^vX")
    styles = {m: next(markers) for m in (placed or {})}
    for row, (a, b) in enumerate(pairs):
        for col, split in enumerate(("stop", "test")):
            ax = axes[row, col]
            points = frame[[f"{split}/{a}", f"{split}/{b}"]].to_numpy(dtype=float)
            ax.scatter(points[:, 0], points[:, 1], s=18, color="0.6", label="static weights")
            front = _pareto(points, greater_is_better(metric))
            ax.plot(points[front, 0], points[front, 1], color="0.2", lw=1.2, label="front")
            for method, values in (placed or {}).items():
                ax.scatter(
                    values[f"{split}/{a}"],
                    values[f"{split}/{b}"],
                    marker=styles[method],
                    s=90,
                    label=method,
                    zorder=3,
                )
            ax.set_xlabel(f"{a} {metric}")
            ax.set_ylabel(f"{b} {metric}")
            ax.set_title(f"{split} set")
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def beyond_front(
    frame: pd.DataFrame, tasks: Sequence[str], values: dict[str, float], greater: bool = True
) -> bool:
    """Whether ``values`` (``test/<task>`` metrics of a method) are beaten on every task by no
    static weighting of the grid: the method lands on or beyond the front."""
    columns = [f"test/{t}" for t in tasks]
    sign = 1.0 if greater else -1.0
    point = sign * np.array([values[c] for c in columns])
    grid = sign * frame[columns].to_numpy(dtype=float)
    return not any(_dominated(q, point) for q in grid)
