"""The command line, end to end on a small heteroscedastic run."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import shared_data
from polytask.cli import main
from polytask.experiments import SyntheticExperiment


def test_run_hetero_writes_the_whole_report(tmp_path, capsys):
    out = tmp_path / "report"
    code = main(
        [
            "run",
            "hetero",
            "--n",
            "1200",
            "--max-epochs",
            "4",
            "--seed",
            "3",
            "--quiet",
            "--device",
            "cpu",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    table = pd.read_csv(out / "results.csv")
    assert list(table["task"]) == [f"task{i}" for i in range(5)]
    ratio = table["test mse (mse)"] / table["test mse (geometric)"]
    pd.testing.assert_series_equal(ratio, table["ratio mse/geometric"], check_names=False)
    assert (table["test mse (mse)"] > 0).all()
    assert "| ratio mse/geometric |" in (out / "results.md").read_text()
    for name in ("training_curves.png", "task_losses.png", "predictions.png"):
        assert (out / name).stat().st_size > 10_000, name
    for method in ("mse", "geometric"):
        history = pd.read_csv(out / f"history_{method}.csv")
        assert list(history["epoch"]) == [1, 2, 3, 4]
    config = json.loads((out / "config.json").read_text())
    assert config["seed"] == 3 and config["n"] == 1200 and len(config["config_hash"]) == 12
    printed = capsys.readouterr().out
    assert "ratio mse/geometric" in printed and str(out) in printed


def test_same_seed_same_report(tmp_path):
    args = ["run", "phase", "--n", "600", "--max-epochs", "2", "--quiet", "--device", "cpu"]
    for name in ("a", "b"):
        assert main([*args, "--out", str(tmp_path / name)]) == 0
    first, second = (pd.read_csv(tmp_path / n / "results.csv") for n in ("a", "b"))
    pd.testing.assert_frame_equal(first, second)


def test_unknown_method_is_a_clear_error(tmp_path, capsys):
    code = main(["run", "hetero", "--methods", "mse,nope", "--out", str(tmp_path), "--quiet"])
    assert code == 2
    assert "unknown method 'nope'" in capsys.readouterr().err


SCRIPT = Path(sys.prefix) / "bin" / "polytask"


@pytest.mark.skipif(not SCRIPT.exists(), reason="package not installed as a console script")
def test_console_script_lists_experiments():
    exe = str(SCRIPT)
    listing = subprocess.run([exe, "list"], capture_output=True, text=True, check=True).stdout
    assert "hetero" in listing and "phase" in listing


@pytest.mark.slow
def test_default_hetero_experiment_learns_every_task(tmp_path):
    """The full-size default run (as `make demo`): every task's test MSE against the noiseless
    curve ends far below the variance of sin(2 pi x) (0.5), for both losses."""
    assert main(["run", "hetero", "--quiet", "--device", "cpu", "--out", str(tmp_path)]) == 0
    table = pd.read_csv(tmp_path / "results.csv")
    assert (table["test mse (mse)"] < 0.05).all()
    assert (table["test mse (geometric)"] < 0.05).all()


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("polytask: error: "), err
    assert "Traceback" not in err
    return lines[0]


def _subparsers(parser):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.items()


def test_every_help_shows_the_defaults():
    """Each option with a value shows `(default: X)`; one whose default is None says what it
    means in its own help text."""
    from polytask.cli import build_parser

    parser = build_parser()
    checked = 0
    for name, sub in [("polytask", parser), *_subparsers(parser)]:
        text = " ".join(sub.format_help().split())
        for action in sub._actions:
            if not action.option_strings or action.dest == "help" or action.default is False:
                continue
            if action.default is None:
                assert action.help and "default" in action.help, (name, action.dest)
            else:
                assert f"(default: {action.default})" in text, (name, action.dest)
            checked += 1
    assert checked > 40
    compare = dict(_subparsers(parser))["compare"].format_help()
    assert "(default: 10)" in " ".join(compare.split())  # --replications


def test_list_shows_every_method_with_its_description(capsys):
    from polytask.objectives import OBJECTIVES

    assert main(["list"]) == 0
    printed = capsys.readouterr().out
    experiments, _, methods = printed.partition("Methods")
    assert "hetero" in experiments and methods
    lines = methods.strip().splitlines()[1:]
    listed = {n.strip() for line in lines for n in line.split("  ")[1].split(",")}
    assert listed == {n if n != "weighted" else "weighted:W1:W2:..." for n in OBJECTIVES}
    by_name = {line.split()[0].rstrip(","): line for line in lines}
    assert "Mean: The mean of the task losses (every task weight 1/T)." in by_name["mean"]
    assert "mse" in by_name["mean"] and "equal" in by_name["mean"]
    assert "MGDA on the representation path" in by_name["mgda-ub"]
    assert "Weighted:" in by_name["weighted:W1:W2:..."]
    for line in lines:  # one sentence each: nothing after the first full stop
        description = line.split(": ", 1)[1]
        rest = description
        for abbreviation in ("et al. ", "i.e. ", "e.g. "):  # not the end of a sentence
            rest = rest.replace(abbreviation, "")
        assert description and ". " not in rest, line


def test_first_sentence_keeps_abbreviations():
    from polytask.cli import first_sentence

    text = 'X (Chen et al., 2018, "A"): the ``a`` b. second one.\n\nmore'
    assert first_sentence(text) == 'X (Chen et al., 2018, "A"): the a b.'
    assert first_sentence(None) == "(no description)"
    assert first_sentence("A (i.e. B) c. D.") == "A (i.e. B) c."


def test_torchrun_writes_the_report_of_one_process_from_rank_zero(tmp_path):
    """``torchrun --nproc-per-node 2 -m polytask run hetero`` trains data-parallel and writes
    one report, equal (to float summation order) to a single process's."""
    import os
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    args = ["run", "hetero", "--rows", "600", "--tasks", "2", "--max-epochs", "2", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    launcher += ["--master-addr", "127.0.0.1", "--master-port", port, "-m", "polytask"]
    done = subprocess.run(
        [*launcher, *args, "--out", str(tmp_path / "two")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("report written to") == 1  # rank 0 only
    one = pd.read_csv(tmp_path / "one" / "results.csv")
    two = pd.read_csv(tmp_path / "two" / "results.csv")
    assert list(one.columns) == list(two.columns) and len(one) == len(two) > 0
    numeric = one.select_dtypes("number").columns
    pd.testing.assert_frame_equal(one[numeric], two[numeric], rtol=1e-4)


def test_precision_reaches_the_trainer_and_is_refused_where_unsupported(tmp_path, capsys):
    out = tmp_path / "bf16"
    args = ["run", "hetero", "--rows", "300", "--tasks", "2", "--max-epochs", "1", "--quiet"]
    assert main([*args, "--precision", "bf16-mixed", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["precision"] == "bf16-mixed"
    assert main([*args, "--out", str(tmp_path / "fp32")]) == 0
    # the same seed in float32 trains otherwise: the precision reached the trainer
    bf16 = pd.read_csv(out / "history_mse.csv")["train_loss"]
    fp32 = pd.read_csv(tmp_path / "fp32" / "history_mse.csv")["train_loss"]
    assert not np.allclose(bf16, fp32, rtol=1e-6, atol=0)
    code = main(["run", "relatedness", "--precision", "bf16-mixed", "--out", str(tmp_path / "r")])
    assert code == 2
    assert "--precision is for hetero, phase; not relatedness" in capsys.readouterr().err


@pytest.fixture
def no_training(monkeypatch):
    """Fails the test if any experiment starts to train."""

    def refuse(*args, **kwargs):
        raise AssertionError("training started before the bad input was refused")

    monkeypatch.setattr(SyntheticExperiment, "run", refuse)


TINY_RUN = ["run", "hetero", "--n", "200", "--tasks", "2", "--max-epochs", "1", "--quiet"]


def test_out_that_is_a_file_is_refused_before_training(tmp_path, capsys, no_training):
    afile = tmp_path / "notes.txt"
    afile.write_text("mine")
    assert main([*TINY_RUN, "--device", "cpu", "--out", str(afile)]) == 2
    assert f"--out {afile} is a file, not a folder" in _one_line(capsys.readouterr().err)
    assert main([*TINY_RUN, "--device", "cpu", "--out", str(afile / "sub")]) == 2
    assert f"--out {afile / 'sub'} cannot be created" in _one_line(capsys.readouterr().err)
    assert afile.read_text() == "mine"


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_out_that_cannot_be_written_is_refused_before_training(capsys, no_training):
    """/proc/self is a folder that nobody, root included, can write a file into."""
    for command in (TINY_RUN, ["compare", *TINY_RUN[1:]]):
        assert main([*command, "--device", "cpu", "--out", "/proc/self"]) == 2
        assert "--out /proc/self cannot be written" in _one_line(capsys.readouterr().err)


def test_compare_of_one_method_is_refused_before_training(tmp_path, capsys, no_training):
    command = ["compare", *TINY_RUN[1:], "--device", "cpu", "--out", str(tmp_path / "o")]
    assert main([*command, "--methods", "mse"]) == 2
    error = _one_line(capsys.readouterr().err)
    assert "compare needs two methods (or models) or more, got ['mse']" in error


def test_a_report_of_the_baseline_alone_is_refused(tmp_path):
    from polytask.experiments import Store, replicate, write_comparison_report

    experiment = SyntheticExperiment(
        n=200, n_tasks=2, max_epochs=1, methods=("mse",), baseline="mse", device="cpu"
    )
    store = Store(tmp_path / "results.sqlite")
    replicate(experiment, 1, store=store, quiet=True)
    with pytest.raises(ValueError, match="holds the baseline 'mse' only: nothing to compare"):
        write_comparison_report(store, tmp_path / "report")


def test_store_that_is_not_sqlite_is_refused_before_training(tmp_path, capsys, no_training):
    store = tmp_path / "notes.txt"
    store.write_text("my notes\n")
    command = ["compare", *TINY_RUN[1:], "--device", "cpu", "--out", str(tmp_path / "o")]
    assert main([*command, "--store", str(store)]) == 2
    error = _one_line(capsys.readouterr().err)
    assert f"{store} is not a polytask store (not an SQLite database)" in error
    assert store.read_text() == "my notes\n"


def test_report_never_writes_to_a_file_that_is_not_a_store(tmp_path, capsys):
    import sqlite3

    empty = tmp_path / "empty.sqlite"
    empty.touch()
    text = tmp_path / "notes.txt"
    text.write_text("my notes\n")
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE mine (x)")
    before = other.read_bytes()
    assert main(["report", str(empty)]) == 2
    assert f"{empty} is empty, not a polytask store" in _one_line(capsys.readouterr().err)
    assert main(["report", str(text)]) == 2
    assert "not an SQLite database" in _one_line(capsys.readouterr().err)
    assert main(["report", str(other)]) == 2
    assert "SQLite database but not a polytask store (tables: mine" in _one_line(
        capsys.readouterr().err
    )
    assert empty.stat().st_size == 0 and text.read_text() == "my notes\n"
    assert other.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "empty.sqlite",
        "notes.txt",
        "other.sqlite",
    ]


def test_unknown_device_is_one_line_naming_the_choices(tmp_path, capsys, no_training):
    assert main([*TINY_RUN, "--device", "gpu", "--out", str(tmp_path)]) == 2
    error = _one_line(capsys.readouterr().err)
    assert "unknown device 'gpu'" in error and "'cpu', 'cuda'" in error


def test_resolve_device_raises_a_value_error_naming_the_choices():
    from polytask._device import resolve_device

    with pytest.raises(ValueError, match=r"unknown device 'gpu': choose 'auto', 'cpu', 'cuda'"):
        resolve_device("gpu")
    with pytest.raises(ValueError, match="unknown device 'cuda:x'"):
        resolve_device("cuda:x")
    assert resolve_device("cpu").type == "cpu"
    for meta in ("meta", torch.device("meta")):  # shapes only: nothing could be computed
        with pytest.raises(ValueError, match="holds no data"):
            resolve_device(meta)


# --- architectures: census, relatedness, --models, --checkpoint -------------------------------
TINY_RELATEDNESS = [
    "relatedness",
    "--n",
    "128",
    "--max-epochs",
    "1",
    "--correlations",
    "1,0",
    "--quiet",
    "--device",
    "cpu",
]


def test_compare_varies_the_architecture_against_one_baseline(tmp_path, capsys):
    out = tmp_path / "cmp"
    models = "shared-bottom,mmoe,cgc"
    args = ["compare", *TINY_RELATEDNESS, "--models", models, "--baseline", "shared-bottom"]
    assert main([*args, "--replications", "2", "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert report.startswith(
        "# relatedness: shared-bottom/mean, mmoe/mean, cgc/mean (2 replications)"
    )
    assert "- **baseline**: shared-bottom/mean" in report
    overall = pd.read_csv(out / "statistics_overall.csv")
    assert list(overall["method"]) == ["mmoe/mean", "cgc/mean"]
    per_task = pd.read_csv(out / "statistics_per_task.csv")
    assert set(per_task["task"]) == {"p=1:t1", "p=1:t2", "p=0:t1", "p=0:t2"}
    assert (per_task["n"] == 2).all()
    figure = pd.read_csv(out / "relatedness.csv")
    assert sorted(figure["method"].unique()) == ["cgc/mean", "mmoe/mean", "shared-bottom/mean"]
    assert sorted(figure["correlation"].unique()) == [0.0, 1.0] and (figure["n"] == 2).all()
    assert (out / "relatedness.png").stat().st_size > 10_000
    assert "## Test loss against task correlation" in report
    assert "## Gates (first replication)" in report  # mmoe and cgc recorded theirs
    assert (out / "gates.png").stat().st_size > 10_000
    assert "Test loss against task correlation" in capsys.readouterr().out
    # the report command redraws the same figure from the store alone
    again = tmp_path / "again"
    assert main(["report", str(out / "results.sqlite"), "--out", str(again)]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(again / "relatedness.csv"), figure)


def test_compare_census_pairs_every_model_with_shared_bottom_over_replications(tmp_path):
    """``compare census --models ...``: the architectures and a scikit-learn reference over
    replications, each paired with shared-bottom per task, and the gates of the first."""
    adult = shared_data("adult")
    out = tmp_path / "census"
    command = ["compare", "census", "--data-dir", str(adult), "--rows", "600", "--quiet"]
    command += ["--models", "shared-bottom,mmoe,logistic-regression", "--max-epochs", "1"]
    assert main([*command, "--replications", "2", "--device", "cpu", "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert report.startswith(
        "# census: shared-bottom/mean, mmoe/mean, logistic-regression (2 replications)"
    )
    assert "- **baseline**: shared-bottom/mean" in report
    paired = pd.read_csv(out / "census_vs_shared_bottom.csv")
    assert sorted(zip(paired["method"], paired["task"], strict=True)) == [
        ("logistic-regression", "income"),
        ("logistic-regression", "never_married"),
        ("mmoe/mean", "income"),
        ("mmoe/mean", "never_married"),
    ]
    assert (paired["n"] == 2).all() and paired["mean difference"].between(-1, 1).all()
    means = pd.read_csv(out / "census_means.csv")
    assert set(means["method"]) == {"shared-bottom/mean", "mmoe/mean", "logistic-regression"}
    assert means["mean"].between(0, 1).all() and (means["n"] == 2).all()
    logistic = means[means["method"] == "logistic-regression"].set_index("task")["mean"]
    assert logistic["income"] > 0.8 and logistic["never_married"] > 0.9  # on 600 rows
    assert "## Gates (first replication)" in report  # MMoE's, recorded on the stop rows
    assert (out / "gates.png").stat().st_size > 10_000


def test_architecture_options_are_checked_before_training(tmp_path, capsys, no_training):
    assert main(["run", *TINY_RELATEDNESS, "--models", "shared-bottom,moe"]) == 2
    assert "unknown models ['moe']" in _one_line(capsys.readouterr().err)
    assert main([*TINY_RUN, "--models", "mmoe", "--out", str(tmp_path)]) == 2
    assert "--models is for the architecture experiments" in _one_line(capsys.readouterr().err)
    assert main(["run", "census", "--quiet", "--out", str(tmp_path)]) == 2
    assert "census experiment needs --data-dir" in _one_line(capsys.readouterr().err)
    assert main(["run", "adult-education", "--checkpoint", str(tmp_path), "--quiet"]) == 2
    assert "--checkpoint is for hetero, phase, census, relatedness" in _one_line(
        capsys.readouterr().err
    )


def test_a_malformed_census_file_is_refused_before_training(tmp_path, capsys, monkeypatch):
    from polytask.experiments import CensusExperiment

    monkeypatch.setattr(CensusExperiment, "run", lambda *a, **k: pytest.fail("trained"))
    header = "age, workclass, fnlwgt, education, education-num, marital-status, occupation, "
    header += "relationship, race, sex, capital-gain, capital-loss, hours-per-week, "
    header += "native-country, Y"
    row = "39, State-gov, 77516, Bachelors, 13, Never-married, Adm-clerical, Not-in-family, "
    row += "White, Male, 2174, 0, 40, United-States, <=50K"
    (tmp_path / "adult.data").write_text("\n".join([header, row, row.replace("77516", "7e4")]))
    (tmp_path / "adult.test").write_text("\n".join([header, row]))
    command = ["run", "census", "--data-dir", str(tmp_path), "--quiet", "--device", "cpu"]
    assert main([*command, "--out", str(tmp_path / "out")]) == 2
    error = _one_line(capsys.readouterr().err)
    assert f"{(tmp_path / 'adult.data').resolve()}, line 3, column 'fnlwgt'" in error
    assert "'7e4' is not an integer" in error


def test_run_relatedness_writes_its_table_and_figure(tmp_path, capsys):
    out = tmp_path / "rel"
    assert (
        main(["run", *TINY_RELATEDNESS, "--models", "shared-bottom,mmoe", "--out", str(out)]) == 0
    )
    table = pd.read_csv(out / "results.csv")
    assert sorted(zip(table["correlation"], table["method"], strict=True)) == [
        (0.0, "mmoe/mean"),
        (0.0, "shared-bottom/mean"),
        (1.0, "mmoe/mean"),
        (1.0, "shared-bottom/mean"),
    ]
    assert (table["n"] == 1).all() and (table["mean"] > 0).all()
    assert (out / "relatedness.png").stat().st_size > 10_000
    assert (out / "history_mmoe_mean_p=0.csv").exists()
    assert (out / "gates.png").stat().st_size > 10_000
    assert "![gate weights per expert](gates.png)" in (out / "results.md").read_text()
    assert "| correlation | mmoe/mean | shared-bottom/mean |" in capsys.readouterr().out


def test_run_census_with_a_checkpoint_resumes_and_gives_the_same_report(tmp_path, capsys):
    """Run twice with --checkpoint: the second run trains nothing (every fit's checkpoint
    is left untouched) and writes the same report; another seed is refused, naming why."""
    adult = shared_data("adult")
    checkpoint = tmp_path / "ckpt"
    command = [
        "run",
        "census",
        "--data-dir",
        str(adult),
        "--models",
        "shared-bottom,mmoe,single-task",
        "--n",
        "600",
        "--max-epochs",
        "2",
        "--quiet",
        "--device",
        "cpu",
        "--checkpoint",
        str(checkpoint),
    ]
    assert main([*command, "--out", str(tmp_path / "first")]) == 0
    saved = sorted(checkpoint.glob("*/last.pt"))
    assert [p.parent.name for p in saved] == [
        "mmoe_mean",
        "shared-bottom_mean",
        "single-task_income",
        "single-task_never_married",
    ]
    stamps = [p.stat().st_mtime_ns for p in saved]
    first = pd.read_csv(tmp_path / "first" / "results.csv")
    assert list(first["model/method"]) == ["shared-bottom/mean", "mmoe/mean", "single-task"]
    assert first["test auc (income)"].between(0.5, 1.0).all()
    assert (tmp_path / "first" / "gates.png").exists()
    assert main([*command, "--out", str(tmp_path / "second")]) == 0
    assert [p.stat().st_mtime_ns for p in saved] == stamps  # nothing trained again
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "second" / "results.csv"), first)
    for name in ("history_mmoe_mean.csv", "history_single-task_income.csv"):
        assert (tmp_path / "first" / name).read_text() == (tmp_path / "second" / name).read_text()
    capsys.readouterr()
    assert main([*command, "--seed", "1", "--out", str(tmp_path / "third")]) == 2
    assert "is from another configuration" in _one_line(capsys.readouterr().err)


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_checkpoint_to_the_same_report(tmp_path):
    """`polytask run hetero --checkpoint DIR` killed (SIGKILL) after its first checkpoint, then
    run again: the report equals that of a run never interrupted."""
    import signal
    import time

    command = [str(SCRIPT), "run", "hetero", "--n", "4000", "--tasks", "2", "--max-epochs"]
    command += ["40", "--patience", "40", "--quiet", "--device", "cpu"]
    checkpoint = tmp_path / "ckpt"
    killed = subprocess.Popen([*command, "--checkpoint", str(checkpoint), "--out", str(tmp_path)])
    deadline = time.monotonic() + 120
    while not (checkpoint / "mse" / "last.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL  # killed mid-run, before its report
    assert not (tmp_path / "results.csv").exists()
    resumed = subprocess.run([*command, "--checkpoint", str(checkpoint), "--out", str(tmp_path)])
    assert resumed.returncode == 0
    fresh = tmp_path / "fresh"
    assert main([*command[1:], "--out", str(fresh)]) == 0
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "results.csv"), pd.read_csv(fresh / "results.csv")
    )
    for method in ("mse", "geometric"):
        name = f"history_{method}.csv"
        resumed_history = pd.read_csv(tmp_path / name).drop(columns="seconds", errors="ignore")
        fresh_history = pd.read_csv(fresh / name).drop(columns="seconds", errors="ignore")
        pd.testing.assert_frame_equal(resumed_history, fresh_history)


def test_options_a_synthetic_run_would_ignore_are_refused(tmp_path, capsys, no_training):
    out = ["--device", "cpu", "--out", str(tmp_path / "o")]
    assert main([*TINY_RUN, "--weights", "1,2", "--methods", "mean", *out]) == 2
    assert "--weights is for the 'tuned' method of" in _one_line(capsys.readouterr().err)
    assert main([*TINY_RUN, "--data-dir", str(tmp_path), *out]) == 2
    assert "hetero draws synthetic data: --data-dir" in _one_line(capsys.readouterr().err)


@pytest.mark.parametrize("storage", ["bogus://x", "study.db"])
def test_tune_storage_that_is_no_database_url_is_refused_before_the_study(
    tmp_path, capsys, storage
):
    out = tmp_path / "o"
    command = ["tune", "hetero", "--n", "200", "--trials", "1", "--storage", storage]
    assert main([*command, "--out", str(out), "--device", "cpu", "--quiet"]) == 2
    error = _one_line(capsys.readouterr().err)
    assert f"--storage '{storage}' is not a database URL SQLAlchemy can open" in error
    assert not out.exists()  # refused before the report folder was made


def test_tune_storage_that_cannot_be_opened_is_refused_before_the_study(tmp_path, capsys):
    text = tmp_path / "notes.sqlite"
    text.write_text("not a database")
    out = tmp_path / "o"
    base = ["tune", "hetero", "--n", "200", "--trials", "1", "--device", "cpu", "--quiet"]
    for storage, reason in (
        (f"sqlite:///{text}", "file is not a database"),
        (f"sqlite:///{tmp_path}/missing/folder/study.db", "unable to open database file"),
    ):
        assert main([*base, "--storage", storage, "--out", str(out)]) == 2
        error = _one_line(capsys.readouterr().err)
        assert f"--storage '{storage}' cannot be opened as a database" in error
        assert reason in error
    assert not out.exists()
    assert text.read_text() == "not a database"


def test_tune_refuses_place_it_cannot_judge_before_the_study(tmp_path, capsys):
    out = tmp_path / "o"
    base = ["tune", "hetero", "--n", "200", "--tasks", "2", "--trials", "2", "--device", "cpu"]
    assert main([*base, "--place", "nope", "--out", str(out), "--quiet"]) == 2
    assert "unknown method 'nope'" in _one_line(capsys.readouterr().err)
    bayes = [*base, "--method", "bayes", "--place", "mgda", "--out", str(out), "--quiet"]
    assert main(bayes) == 2
    error = _one_line(capsys.readouterr().err)
    assert "--place draws methods against the front of a grid search of 2 or 3 tasks" in error
    assert not out.exists()


def test_a_study_of_another_configuration_is_refused_and_pruning_is_reported(tmp_path, capsys):
    storage = f"sqlite:///{tmp_path}/shared.db"
    common = ["--n", "300", "--max-epochs", "2", "--tasks", "2", "--device", "cpu", "--quiet"]
    study = ["--storage", storage, "--study", "S", "--resolution", "2", "--trials", "2"]
    assert main(["tune", "hetero", *common, *study, "--out", str(tmp_path / "a")]) == 0
    capsys.readouterr()
    assert main(["tune", "phase", *common, *study, "--out", str(tmp_path / "b")]) == 2
    error = _one_line(capsys.readouterr().err)
    assert "study 'S' was made by another configuration (experiment: hetero -> phase" in error
    # the same configuration resumes it: one more grid point, two kept
    more = ["--storage", storage, "--study", "S", "--resolution", "2", "--trials", "3"]
    assert main(["tune", "hetero", *common, *more, "--out", str(tmp_path / "c")]) == 0
    assert "3 finished trials" in capsys.readouterr().out
    # pruned points are counted in the report (the median rule starts after five trials)
    pruning = ["--n", "600", "--max-epochs", "8", "--tasks", "2", "--device", "cpu", "--quiet"]
    grid = ["--resolution", "10", "--trials", "11", "--out", str(tmp_path / "d")]
    assert main(["tune", "hetero", *pruning, *grid]) == 0
    report = (tmp_path / "d" / "report.md").read_text()
    pruned = int(report.split(" pruned by the median rule")[0].rsplit(", ", 1)[1])
    assert pruned >= 1
    assert f"{11 - pruned} finished trials, {pruned} pruned" in report
