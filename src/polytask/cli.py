"""The ``polytask`` command line: ``list``, ``run``, ``compare``, ``report``, ``tune`` and
``suite``."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import sys
import tempfile
import textwrap
import warnings
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from ._device import DEVICE_CHOICES, resolve_device
from ._suite_cli import add_suite_parser, cmd_suite
from .evaluation._metrics import greater_is_better
from .experiments import (
    ARCHITECTURE_DESCRIPTIONS,
    ARCHITECTURE_EXPERIMENTS,
    DATA_DESCRIPTIONS,
    DESCRIPTIONS,
    EXPERIMENTS,
    STRUCTURED_EXPERIMENTS,
    ReviewsExperiment,
    Store,
    config_hash,
    markdown_table,
    replicate,
    results_table,
    write_census_report,
    write_comparison_report,
    write_relatedness_figure,
    write_relatedness_report,
    write_reviews_report,
    write_run_report,
    write_structured_report,
)
from .experiments._census import census_section, gates_figure
from .experiments._comparison_report import _pick_config
from .experiments._replicate import CodeChangedError
from .experiments._report import interval_text
from .experiments._run_suite import write_suite_report
from .experiments._tune import beyond_front, place_methods, plot_front, tune
from .objectives import make_objective
from .training import is_main_process

PRECISION_CHOICES = ("32", "bf16-mixed", "16-mixed")  # Lightning's names, as Trainer takes

DATA_EXPERIMENTS = {
    "reviews": "movie/restaurant/product sentiment + site of a sentence, one dataset per task "
    "(needs --data-dir sentiment_labelled_sentences/)",
    **DATA_DESCRIPTIONS,
}


def _methods(text: str) -> tuple[str, ...]:
    methods = tuple(m.strip() for m in text.split(",") if m.strip())
    if not methods:
        raise argparse.ArgumentTypeError("give at least one method, e.g. mse,geometric")
    return methods


def _names(text: str) -> tuple[str, ...]:
    names = tuple(m.strip() for m in text.split(",") if m.strip())
    if not names:
        raise argparse.ArgumentTypeError("give at least one name, e.g. shared-bottom,mmoe")
    return names


def _correlations(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(c) for c in text.split(","))
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"correlations are comma-separated numbers: {error}"
        ) from None
    if any(not -1 <= c <= 1 for c in values):
        raise argparse.ArgumentTypeError(f"correlations must lie in [-1, 1], got {text}")
    return values


def _weights(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(w) for w in text.split(","))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"weights are comma-separated numbers: {error}") from None


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default in its help: ``(default: X)``, or its help says what ``None`` is."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        # names such as sentiment-domains stay whole (argparse breaks lines on hyphens)
        return textwrap.wrap(
            " ".join(text.split()), width, break_on_hyphens=False, break_long_words=False
        )

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False:
            return action.help or ""  # a flag, or an option whose help explains its default
        return super()._get_help_string(action) or ""


def _own_default(field: str, experiments: Sequence[str]) -> str:
    """``"default: hetero 500, phase 500, ..."``: each experiment's own value of an option."""
    values = []
    for name in experiments:
        if name in EXPERIMENTS:
            value = getattr(EXPERIMENTS[name](), field)
        elif name in ARCHITECTURE_EXPERIMENTS:
            value = getattr(ARCHITECTURE_EXPERIMENTS[name](), field)
        else:
            factory = STRUCTURED_EXPERIMENTS.get(name, ReviewsExperiment)
            value = inspect.signature(factory).parameters[field].default
        values.append(f"{name} {value}")
    return f"default: {', '.join(values)}"


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", type=Path, help="report folder, created if missing (default: runs/<name>-<time>)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of data, weights and shuffling")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--device", default="auto", help=f"{DEVICE_CHOICES}; auto: CUDA if present")


def _subcommand(commands: Any, name: str, help: str) -> argparse.ArgumentParser:
    return commands.add_parser(name, help=help, description=help, formatter_class=_HelpFormatter)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="polytask",
        description="Multi-task learning experiments on PyTorch.",
        formatter_class=_HelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    _subcommand(commands, "list", "list the built-in experiments and every method")
    run = _subcommand(commands, "run", "run one experiment and write its report")
    _experiment_options(run, with_data=True)
    run.add_argument(
        "--checkpoint",
        type=Path,
        help="folder where each fit saves its state every epoch (one subfolder per "
        "model/method); running the same command again resumes there and does not retrain "
        "finished fits (hetero, phase, census, relatedness; default: no checkpoints)",
    )
    run.add_argument(
        "--precision",
        choices=PRECISION_CHOICES,
        default="32",
        help="floating point of the training forward pass (hetero, phase): autocast to "
        "bfloat16 or float16 with a gradient scaler; methods always read float32",
    )
    _common(run)
    compare = _subcommand(
        commands, "compare", "replicate an experiment over many seeds and compare methods"
    )
    _experiment_options(compare, with_data=True, replicable=True)
    compare.add_argument(
        "--replications",
        type=_positive,
        default=10,
        help="replications to run and report (a store holding more reports the first ones)",
    )
    compare.add_argument("--jobs", type=_positive, default=1, help="parallel workers")
    compare.add_argument(
        "--backend", choices=("joblib", "ray"), default="joblib", help="how workers are run"
    )
    compare.add_argument(
        "--store",
        help="the results store: an SQLite file or an SQLAlchemy URL such as "
        "postgresql+psycopg2://user@host/db, shared by processes on several machines "
        "(default: <out>/results.sqlite)",
    )
    _common(compare)
    report = _subcommand(commands, "report", "write the report of a stored comparison")
    report.add_argument(
        "store", help="the store of a compare run: SQLite file or SQLAlchemy URL (read only)"
    )
    report.add_argument("--config", help="configuration hash (prefix) to report (default: latest)")
    report.add_argument("--out", type=Path, help="report folder (default: beside the store)")
    report.add_argument("--metric", help="metric compared (default: the experiment's own)")
    report.add_argument(
        "--suite",
        action="store_true",
        help="the leaderboard of a 'polytask suite' store (each data set's latest stored run)",
    )
    report.add_argument(
        "--replications",
        type=_positive,
        help="report the first N replications only (default: all stored)",
    )
    _tune_parser(_subcommand(commands, "tune", "search the task weights of a weighted loss"))
    suite = _subcommand(
        commands,
        "suite",
        "run the benchmark suite (real data sets x methods x replications, resumable) and "
        "write its leaderboard",
    )
    add_suite_parser(suite, _positive, _common)
    return parser


def _tune_parser(tune: argparse.ArgumentParser) -> None:
    experiments = sorted(EXPERIMENTS) + sorted(STRUCTURED_EXPERIMENTS)
    tune.add_argument("experiment", choices=experiments)
    tune.add_argument(
        "--data-dir", type=Path, help="the data folder of a real-data experiment (default: none)"
    )
    synthetic = sorted(EXPERIMENTS)
    tune.add_argument(
        "--n", type=_positive, help=f"rows drawn, synthetic only ({_own_default('n', synthetic)})"
    )
    tune.add_argument(
        "--tasks",
        type=_positive,
        help=f"number of tasks, synthetic only ({_own_default('n_tasks', synthetic)})",
    )
    tune.add_argument(
        "--batch-size",
        type=_positive,
        help=f"rows per minibatch ({_own_default('batch_size', experiments)})",
    )
    tune.add_argument(
        "--method", choices=("grid", "bayes"), default="grid", help="grid or Optuna TPE search"
    )
    tune.add_argument("--trials", type=_positive, default=28, help="at most the grid's size")
    tune.add_argument("--resolution", type=_positive, default=6, help="grid step 1/resolution")
    tune.add_argument("--storage", help="Optuna storage URL (default: sqlite:///<out>/study.db)")
    tune.add_argument("--study", help="study name (default: from the experiment, method and seed)")
    tune.add_argument("--no-prune", action="store_true", help="no pruning of bad trials")
    tune.add_argument(
        "--combine", choices=("mean", "worst"), default="mean", help="of the per-task metrics"
    )
    tune.add_argument("--heartbeat", type=_positive, default=60, help="seconds between beats")
    tune.add_argument(
        "--place",
        type=_methods,
        help="methods drawn on the front, e.g. consistency,mgda (default: none)",
    )
    tune.add_argument(
        "--max-epochs",
        type=_positive,
        help=f"most training epochs ({_own_default('max_epochs', experiments)})",
    )
    tune.add_argument(
        "--patience",
        type=_positive,
        help=f"early-stopping patience in epochs ({_own_default('patience', experiments)})",
    )
    _common(tune)


def _experiment_options(
    parser: argparse.ArgumentParser, with_data: bool = False, replicable: bool = False
) -> None:
    data = sorted(STRUCTURED_EXPERIMENTS) if replicable else sorted(DATA_EXPERIMENTS)
    architectures = sorted(ARCHITECTURE_EXPERIMENTS)
    experiments = sorted(EXPERIMENTS) + (data + architectures if with_data else [])
    parser.add_argument("experiment", choices=experiments)
    if with_data:
        parser.add_argument(
            "--data-dir", type=Path, help="folder of a real-data experiment (default: none)"
        )
        parser.add_argument(
            "--weights",
            type=_weights,
            help="task weights of the 'tuned' method, e.g. 1,0.5,2 (default: searched on each "
            "replication's own stop set)",
        )
    parser.add_argument(
        "--methods",
        type=_methods,
        help="comma-separated, e.g. mse,geometric; see polytask list "
        "(default: the experiment's own)",
    )
    parser.add_argument(
        "--baseline",
        help="method the others are compared with; census, relatedness: a model/method label "
        "or a model (default: first; census: single-task)",
    )
    if with_data:
        parser.add_argument(
            "--models",
            type=_names,
            help="architectures compared, each with every method, e.g. shared-bottom,mmoe,ple; "
            "also single-task (one network per task) and, for census, logistic-regression, "
            "hist-gradient-boosting (census, relatedness; default: the experiment's own)",
        )
        parser.add_argument(
            "--correlations",
            type=_correlations,
            help="task correlations, e.g. 1,0.9,0.5 (relatedness; default: 1,0.9,0.5)",
        )
    synthetic = sorted(EXPERIMENTS)
    parser.add_argument(
        "--n",
        "--rows",  # torchrun reads --n as an abbreviation of its own --nnodes
        dest="n",
        type=_positive,
        help=f"rows drawn, train/stop/test = 5/45/50%% ({_own_default('n', synthetic)}); "
        "census: training rows kept (default: all), relatedness: training rows "
        f"({_own_default('n_train', ['relatedness'])})",
    )
    parser.add_argument(
        "--tasks", type=_positive, help=f"number of tasks ({_own_default('n_tasks', synthetic)})"
    )
    parser.add_argument(
        "--max-epochs",
        type=_positive,
        help=f"most training epochs ({_own_default('max_epochs', experiments)})",
    )
    parser.add_argument(
        "--patience",
        type=_positive,
        help=f"early-stopping patience in epochs ({_own_default('patience', experiments)})",
    )
    parser.add_argument(
        "--batch-size",
        type=_positive,
        help=f"rows per minibatch ({_own_default('batch_size', experiments)})",
    )


def _cmd_list() -> int:
    print("Experiments:")
    for name, text in sorted({**DESCRIPTIONS, **DATA_EXPERIMENTS}.items()):
        print(f"  {name:18s} {text}")
    print()
    print("Architecture experiments (--models a,b; every model with every method):")
    for name, text in sorted(ARCHITECTURE_DESCRIPTIONS.items()):
        print(f"  {name:18s} {text}")
    print(f"  models: {', '.join(ARCHITECTURE_EXPERIMENTS['census'].known_models)}")
    print()
    print(
        "Methods (--methods a,b; a gradient method but gradnorm and dbmtl takes a path: "
        "NAME@exact, @repr or @naive):"
    )
    for names, text in method_descriptions():
        print(f"  {names:26s} {text}")
    return 0


_SENTENCE_END = re.compile(r"(?<!\bal)(?<!\be\.g)(?<!\bi\.e)(?<!\bvs)\.(?:\s|$)")


def first_sentence(doc: str | None) -> str:
    """The first sentence of a docstring, on one line, without reST markup.

    Examples
    --------
    >>> first_sentence("MGDA (Sener et al., 2018): the minimum norm. More text.")
    'MGDA (Sener et al., 2018): the minimum norm.'
    """
    if not doc or not doc.strip():
        return "(no description)"
    paragraph = " ".join(doc.strip().split("\n\n")[0].split()).replace("``", "")
    end = _SENTENCE_END.search(paragraph)
    return paragraph[: end.start() + 1] if end else paragraph


def method_descriptions() -> list[tuple[str, str]]:
    """``(CLI names, "Class: first sentence of its docstring")`` for every method, aliases joined.

    Built from :data:`polytask.objectives.OBJECTIVES`: a builder's ``cls`` names its class
    (``weighted`` builds :class:`polytask.objectives.Weighted` from its weights); a builder
    whose objective runs on a path other than the exact one (``mgda-ub``) gets its own line.
    """
    from .objectives import OBJECTIVES, Weighted

    groups: dict[tuple[str, str], list[str]] = {}
    for name, build in OBJECTIVES.items():
        cls = Weighted if name == "weighted" else getattr(build, "cls", None)
        if cls is None:
            groups.setdefault((name, "(no description)"), []).append(name)
            continue
        label = f"{cls.__name__}: {first_sentence(cls.__doc__)}"
        path = _path_of(build) if name != "weighted" else None
        if path not in (None, "exact"):
            label = f"{cls.__name__} on the {path} path: {first_sentence(cls.__doc__)}"
        groups.setdefault((cls.__qualname__ + str(path), label), []).append(
            "weighted:W1:W2:..." if name == "weighted" else name
        )
    return [(", ".join(names), label) for (_, label), names in groups.items()]


def _path_of(build: Callable[[list[str]], Any]) -> str | None:
    return getattr(build([]), "path", None)


def _structured(args: argparse.Namespace) -> Any:
    if getattr(args, "data_dir", None) is None:
        raise ValueError(f"the {args.experiment} experiment needs --data-dir")
    if not Path(args.data_dir).is_dir():
        raise FileNotFoundError(f"--data-dir {args.data_dir} is not a folder")
    for option in ("n", "tasks"):
        if getattr(args, option, None) is not None:
            raise ValueError(f"--{option} is for the synthetic experiments, not {args.experiment}")
    changes = {
        "max_epochs": args.max_epochs,
        "patience": args.patience,
        "batch_size": getattr(args, "batch_size", None),
        "methods": getattr(args, "methods", None),
        "baseline": getattr(args, "baseline", None),
        "weights": getattr(args, "weights", None),
    }
    return STRUCTURED_EXPERIMENTS[args.experiment](
        data_dir=str(args.data_dir),
        device=args.device,
        **{k: v for k, v in changes.items() if v is not None},
    )


def _refuse_architecture_options(args: argparse.Namespace) -> None:
    for option in ("models", "correlations"):
        if getattr(args, option, None) is not None:
            raise ValueError(
                f"--{option} is for the architecture experiments "
                f"({', '.join(sorted(ARCHITECTURE_EXPERIMENTS))}), not {args.experiment}"
            )


def _architectures(args: argparse.Namespace) -> Any:
    """The census or relatedness experiment the options describe (files checked here)."""
    name = args.experiment
    census = name == "census"
    if getattr(args, "weights", None) is not None:
        raise ValueError(f"--weights is not an option of {name}")
    if getattr(args, "tasks", None) is not None:
        raise ValueError(f"--tasks is for the synthetic experiments, not {name}")
    if census and getattr(args, "correlations", None) is not None:
        raise ValueError("--correlations is for the relatedness experiment, not census")
    if census and getattr(args, "data_dir", None) is None:
        raise ValueError("the census experiment needs --data-dir (the folder of adult.data)")
    if not census and getattr(args, "data_dir", None) is not None:
        raise ValueError(f"{name} draws synthetic data: --data-dir is not an option")
    changes = {
        "models": getattr(args, "models", None),
        "methods": args.methods,
        "baseline": args.baseline,
        "max_epochs": args.max_epochs,
        "patience": args.patience,
        "batch_size": args.batch_size,
        "n_train": args.n,
        "correlations": getattr(args, "correlations", None),
    }
    if census:
        if not Path(args.data_dir).is_dir():
            raise FileNotFoundError(f"--data-dir {args.data_dir} is not a folder")
        changes["data_dir"] = str(args.data_dir)
    experiment = ARCHITECTURE_EXPERIMENTS[name](
        device=args.device, **{k: v for k, v in changes.items() if v is not None}
    )
    if census:
        experiment.check_files()  # a malformed file is refused here, before any training
    return experiment


def _experiment(args: argparse.Namespace) -> Any:
    if args.experiment in ARCHITECTURE_EXPERIMENTS:
        return _architectures(args)
    _refuse_architecture_options(args)
    if args.experiment in STRUCTURED_EXPERIMENTS:
        return _structured(args)
    if getattr(args, "weights", None) is not None:
        raise ValueError(
            f"--weights is for the 'tuned' method of {', '.join(sorted(STRUCTURED_EXPERIMENTS))}"
            f", not {args.experiment}"
        )
    if getattr(args, "data_dir", None) is not None:
        raise ValueError(f"{args.experiment} draws synthetic data: --data-dir is not an option")
    experiment = EXPERIMENTS[args.experiment]()
    changes = {
        "n": args.n,
        "n_tasks": args.tasks,
        "max_epochs": args.max_epochs,
        "patience": args.patience,
        "batch_size": args.batch_size,
        "methods": args.methods,
        "baseline": args.baseline or (args.methods[0] if args.methods else None),
        "device": args.device,
    }
    return dataclasses.replace(experiment, **{k: v for k, v in changes.items() if v is not None})


def _out(args: argparse.Namespace, name: str) -> Path:
    """The report folder, created and checked writable before any training (by the main
    process only, under torchrun: the others write nothing)."""
    path = args.out or Path("runs") / f"{name}-{datetime.now():%Y%m%d-%H%M%S}"
    return writable_folder(path) if is_main_process() else path


def writable_folder(path: Path, option: str = "--out") -> Path:
    """Create ``path`` if needed and check that a file can be written there.

    Raises
    ------
    ValueError
        ``path`` is a file, cannot be created or cannot be written; the message names it.
    """
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option} {path} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"{option} {path} cannot be created: {error.strerror or error}") from None
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise ValueError(f"{option} {path} cannot be written: {error.strerror or error}") from None
    return path


def _cmd_reviews(args: argparse.Namespace) -> int:
    if args.data_dir is None:
        raise ValueError("the reviews experiment needs --data-dir (sentiment_labelled_sentences/)")
    changes = {
        "max_epochs": args.max_epochs,
        "patience": args.patience,
        "batch_size": args.batch_size,
    }
    experiment = ReviewsExperiment(
        args.data_dir,
        seed=args.seed,
        device=args.device,
        **{k: v for k, v in changes.items() if v is not None},
    )
    experiment.spec.check(Path(args.data_dir))  # a missing file, before the report folder
    out = _out(args, experiment.name)
    result = experiment.run(quiet=args.quiet or not is_main_process())
    if not is_main_process():  # under torchrun, one report from rank 0
        return 0
    report = write_reviews_report(result, experiment, out)
    print(markdown_table(result["table"]))
    print(f"Delta_m% multi-task vs single-task: {result['delta_m']:.2f} (lower is better)")
    print(f"report written to {report}")
    return 0


def _cmd_run_structured(args: argparse.Namespace) -> int:
    experiment = _structured(args)
    out = _out(args, experiment.name)
    outcome = experiment.run(args.seed, quiet=args.quiet or not is_main_process())
    if not is_main_process():  # under torchrun, one report from rank 0
        return 0
    table = write_structured_report(outcome, experiment, out)
    print(f"{experiment.name}, seed {args.seed}: test metrics")
    print(markdown_table(table))
    print(f"report written to {out}")
    return 0


def _checkpoint(args: argparse.Namespace) -> Path | None:
    """The ``--checkpoint`` folder, created and checked writable before any training."""
    if args.checkpoint is None:
        return None
    if args.experiment not in (*EXPERIMENTS, *ARCHITECTURE_EXPERIMENTS):
        known = ", ".join([*sorted(EXPERIMENTS), *sorted(ARCHITECTURE_EXPERIMENTS)])
        raise ValueError(f"--checkpoint is for {known}; not {args.experiment}")
    return writable_folder(args.checkpoint, "--checkpoint")


def _cmd_run_architectures(args: argparse.Namespace) -> int:
    experiment = _architectures(args)
    out = _out(args, experiment.name)
    checkpoint = _checkpoint(args)
    quiet = args.quiet or not is_main_process()
    outcome = experiment.run(args.seed, quiet=quiet, checkpoint=checkpoint)
    if not is_main_process():  # under torchrun, one report from rank 0
        return 0
    if experiment.name == "census":
        table = write_census_report(outcome, experiment, out)
        print(f"census, seed {args.seed}: test AUC on adult.test")
    else:
        table = write_relatedness_report(outcome, experiment, out)
        print(f"relatedness, seed {args.seed}: test MSE against the noiseless targets")
    print(markdown_table(table))
    print(f"report written to {out}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    if args.precision != "32" and args.experiment not in EXPERIMENTS:
        raise ValueError(
            f"--precision is for {', '.join(sorted(EXPERIMENTS))}; not {args.experiment}"
        )
    if args.experiment in ARCHITECTURE_EXPERIMENTS:
        return _cmd_run_architectures(args)
    _checkpoint(args)  # refused here for the experiments without checkpoints
    if args.experiment in STRUCTURED_EXPERIMENTS:
        _refuse_architecture_options(args)
        return _cmd_run_structured(args)
    if args.experiment in DATA_EXPERIMENTS:
        _refuse_architecture_options(args)
        return _cmd_reviews(args)
    experiment = dataclasses.replace(_experiment(args), precision=args.precision)
    out = _out(args, experiment.name)
    main_process = is_main_process()  # under torchrun, one report from rank 0
    quiet = args.quiet or not main_process
    result = experiment.run(args.seed, quiet=quiet, checkpoint=_checkpoint(args))
    if not main_process:
        return 0
    files = write_run_report(result, out)
    print(f"{experiment.name}, seed {args.seed}: test MSE against the noiseless targets")
    print(markdown_table(results_table(result)))
    print(f"report written to {files['table_md'].parent}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    experiment = _experiment(args)
    labels = experiment.labels() if hasattr(experiment, "labels") else list(experiment.methods)
    if len(labels) < 2:  # refused before any training: a report compares two at least
        raise ValueError(
            f"compare needs two methods (or models) or more, got {labels}: add one, e.g. "
            f"--methods {labels[0]},mean"
        )
    out = _out(args, f"compare-{experiment.name}")
    store = Store(args.store or out / "results.sqlite")  # refused here if it is not a store
    replicate(
        experiment,
        args.replications,
        seed=args.seed,
        jobs=args.jobs,
        backend=args.backend,
        store=store,
        quiet=args.quiet,
    )
    key = config_hash(experiment, args.seed)
    view = Store(store.url or store.path, read_only=True, first=args.replications)
    files = write_comparison_report(view, out, config_hash=key)
    print(files["markdown"].read_text().split("![")[0].rstrip())
    section = _experiment_section(view, key, files["markdown"])
    if section:
        print(section)
    stored = len(store.finished(key))
    if stored > args.replications:
        print(
            f"\nnote: the store holds {stored} replications of this configuration; this report "
            f"uses the first {args.replications} (--replications {stored} reports them all)"
        )
    print(f"\nreport written to {files['markdown']} and {files['html']}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    store = Store(args.store, read_only=True, first=args.replications)
    if args.out is None and store.url is not None:
        raise ValueError("a report of a database store needs --out (the report folder)")
    out = writable_folder(args.out or Path(store.path).parent)
    if args.suite:
        files = write_suite_report(store, out)
        print(f"leaderboard written to {files['markdown']} and {files['html']}")
        return 0
    files = write_comparison_report(store, out, config_hash=args.config, metric=args.metric)
    _experiment_section(store, _pick_config(store, args.config), files["markdown"])
    print(f"report written to {files['markdown']} and {files['html']}")
    return 0


def _experiment_section(store: Store, key: str, markdown: Path) -> str:
    """Append an architecture experiment's own section to a comparison's report: census, the
    test AUC per task with intervals and the models paired against shared-bottom; relatedness,
    the figure of test loss against task correlation. Nothing for the other experiments."""
    config = store.config(key)
    section = ""
    if config["experiment"] == "census":
        first = min(store.replications(key), key=lambda r: r["replication"])
        frame = store.frame(key)
        section = census_section(frame, markdown.parent, config["metric"], first["histories"])
    elif config["experiment"] == "relatedness":
        first = min(store.replications(key), key=lambda r: r["replication"])
        section = _relatedness_section(
            store.frame(key), markdown.parent, config["metric"], config["baseline"]
        ) + "\n".join(gates_figure(first["histories"], markdown.parent, "first replication"))
    if section:
        with open(markdown, "a") as file:
            file.write(section)
    return section


def _relatedness_section(frame: Any, folder: Path, metric: str, baseline: str) -> str:
    """The figure of test loss against task correlation, and its tables in Markdown."""
    table = write_relatedness_figure(frame, folder, metric, baseline)
    pivot = table.pivot(index="correlation", columns="method", values="mean")
    pivot = pivot.sort_index(ascending=False).reset_index()
    cells = [
        f"{r:.4g} {interval_text(a, b)}"
        for r, a, b in zip(table["ratio"], table["ratio_low"], table["ratio_high"], strict=True)
    ]
    ratios = table.assign(cell=cells).pivot(index="correlation", columns="method", values="cell")
    ratios = ratios.drop(columns=baseline).sort_index(ascending=False).reset_index()
    return "\n".join(
        [
            "",
            "## Test loss against task correlation",
            "",
            f"Mean over replications of the two tasks' test {metric} (95% intervals in "
            "relatedness.csv).",
            "",
            markdown_table(pivot),
            "",
            f"Paired ratio of that mean to {baseline}'s on the same replication (geometric "
            "mean [95% CI]; above 1: worse than the baseline):",
            "",
            markdown_table(ratios),
            "",
            "![test loss against task correlation](relatedness.png)",
            "",
        ]
    )


def _check_storage(url: str) -> None:
    """A storage URL SQLAlchemy can parse, of a database it has a driver for and can open and
    read (Optuna's storages are SQLAlchemy's), refused before the study starts."""
    import sqlalchemy
    from sqlalchemy.engine import make_url

    hint = "give one such as sqlite:///study.db or postgresql+psycopg2://user@host/db"
    try:
        make_url(url).get_dialect()
        engine = sqlalchemy.create_engine(url)
    except ModuleNotFoundError as error:  # the dialect's driver (psycopg...) is not installed
        raise ValueError(
            f"--storage {url!r}: its database driver is not installed ({error}); for "
            "PostgreSQL install the 'postgres' extra and write postgresql+psycopg2://..."
        ) from None
    except sqlalchemy.exc.ArgumentError as error:  # unparsable, or a dialect it does not know
        raise ValueError(
            f"--storage {url!r} is not a database URL SQLAlchemy can open ({error}); {hint}"
        ) from None
    try:
        sqlalchemy.inspect(engine).get_table_names()  # a text file is no SQLite database
    except sqlalchemy.exc.SQLAlchemyError as error:  # no such folder, or not a database
        raise ValueError(
            f"--storage {url!r} cannot be opened as a database "
            f"({str(error).splitlines()[0]}); {hint}"
        ) from None
    finally:
        engine.dispose()


def _pruned(study: Any) -> int:
    import optuna

    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.PRUNED,)))


def _cmd_tune(args: argparse.Namespace) -> int:
    args.methods = args.baseline = None  # the study's method is the weighted loss
    experiment = _experiment(args)
    if args.storage is not None:
        _check_storage(args.storage)
    for method in args.place or ():  # placed after the study: refuse an unknown name first
        if method not in experiment.known_methods:
            make_objective(method)
    if args.place and not (args.method == "grid" and len(experiment.tasks()) in (2, 3)):
        raise ValueError(
            "--place draws methods against the front of a grid search of 2 or 3 tasks; this "
            f"is a {args.method} search of {len(experiment.tasks())} tasks"
        )
    out = _out(args, f"tune-{experiment.name}")
    storage = args.storage or f"sqlite:///{(out / 'study.db').resolve()}"
    result = tune(
        experiment,
        args.method,
        args.trials,
        storage=storage,
        study_name=args.study,
        seed=args.seed,
        resolution=args.resolution,
        prune=not args.no_prune,
        combine=args.combine,
        heartbeat=args.heartbeat if storage.startswith(("sqlite", "postgresql", "mysql")) else None,
        quiet=args.quiet,
    )
    frame = result.front()
    frame.to_csv(out / "trials.csv", index=False)
    tasks = [t.name for t in experiment.tasks()]
    placed = place_methods(experiment, args.place or (), args.seed, args.quiet)
    lines = [
        f"# Task-weight search: {experiment.name} ({args.method}, seed {args.seed})",
        "",
        f"Study `{result.study.study_name}` in `{storage}`: {len(frame)} finished trials"
        + (
            f", {pruned} pruned by the median rule (their points are neither selected nor on "
            "the front; --no-prune fits every point)."
            if (pruned := _pruned(result.study))
            else "."
        ),
        f"Selected on the stop set ({args.combine} {experiment.metric} {result.stop_score:.4f}): "
        + ", ".join(f"{t}={w:.3g}" for t, w in result.weights.items()),
        "",
        f"Test {experiment.metric} of the selected weights (evaluated once): "
        + ", ".join(f"{t}={m[experiment.metric]:.4f}" for t, m in result.test_metrics.items()),
    ]
    if args.method == "grid" and len(tasks) in (2, 3) and len(frame):
        plot_front(frame, tasks, experiment.metric, out / "front.png", placed)
        lines += ["", "![front of static weightings](front.png)"]
    for method, values in placed.items():
        greater = greater_is_better(experiment.metric)
        beyond = beyond_front(frame, tasks, values, greater)
        verdict = "on or beyond" if beyond else "inside"
        cells = ", ".join(f"{t}={values[f'test/{t}']:.4f}" for t in tasks)
        lines.append(f"- {method}: test {cells} - {verdict} the front of static weights")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"--weights {','.join(f'{w:.6g}' for w in result.weights.values())}")
    print(f"report written to {out / 'report.md'}")
    return 0


def _one_line_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    print(f"polytask: warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``polytask`` command.

    A bad input (an unknown device, a store that is not one, an ``--out`` that cannot be
    written...) is one line on stderr and exit code 2, found before any training.
    """
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warning
        try:
            if args.command == "list":
                return _cmd_list()
            if getattr(args, "device", None) is not None:
                resolve_device(args.device)
            commands = {
                "run": _cmd_run,
                "compare": _cmd_compare,
                "report": _cmd_report,
                "tune": _cmd_tune,
                "suite": lambda a: cmd_suite(a, _out(a, "suite")),
            }
            return commands[args.command](args)
        except (ValueError, FileNotFoundError, ImportError, CodeChangedError) as error:
            print(f"polytask: error: {error}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
