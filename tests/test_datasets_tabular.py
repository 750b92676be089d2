"""The four tabular regression data sets (energy, concrete, parkinsons, student): the validated
reader (file, line, column of the first problem), each loader on its real file (shapes,
training-only standardisation, seeded splits, parkinsons by subject, student by student), and
one short fit."""

from __future__ import annotations

import importlib
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import polytask as pt
from conftest import shared_data
from polytask.datasets import DataFormatError, _files, _parkinsons, _student, dataset
from polytask.datasets._files import Scaling, read_table, split_groups, split_rows

EXPECTED = {
    # name: (file, tasks, train / stop / test rows (None: by group), n inputs)
    "energy": ("ENB2012_data.csv", ("heating", "cooling"), (461, 154, 153), 8),
    "concrete": ("slump_test.data", ("slump", "flow", "strength"), (62, 21, 20), 7),
    "parkinsons": ("parkinsons_updrs.data", ("motor_UPDRS", "total_UPDRS"), None, 18),
    "student": ("student-por.csv", ("G1", "G2", "G3"), None, None),
}
NAMES = tuple(EXPECTED)


def _write(tmp_path, text, name="t.csv"):
    path = tmp_path / name
    path.write_bytes(text.encode())
    return path


# --- the reader (no shared data needed) -------------------------------------------------------
def test_a_well_formed_table_is_read_with_quotes_crlf_and_trailing_blank_lines(tmp_path):
    path = _write(tmp_path, 'b;a\r\n"x";1\r\n"y;z";"2.5e-3"\r\n\r\n')
    frame = read_table(path, ["a", "b"], rows=2, sep=";", numeric=["a"])
    assert list(frame.columns) == ["a", "b"]  # the order asked for, not the file's
    assert frame["a"].tolist() == [1.0, 0.0025]
    assert frame["b"].tolist() == ["x", "y;z"]
    headerless = read_table(_write(tmp_path, "1,2\n3,4\n"), 2, rows=2)
    assert headerless.to_numpy().tolist() == [[1.0, 2.0], [3.0, 4.0]]


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("a,c\n1,2\n", "line 1, column 'b': missing from the header"),
        ("a,b,c\n1,2,3\n", "line 1, column 'c': unexpected header column"),
        ("a,b\n1,2\n3,4,5\n", "line 3, column 3: extra field (3 fields, the header has 2)"),
        ("a,b\n1,2\n3\n", "line 3, column 'b': missing (1 fields, the header has 2)"),
        ("a,b\n1,2\n3,x\n", "line 3, column 'b': 'x' is not a number"),
        ("a,b\n1,2\n3,nan\n", "line 3, column 'b': 'nan' is not a finite number"),
        ("a,b\n1, \n3,4\n", "line 2, column 'b': empty value"),
        ("a,b\n1,2\n", "line 3, column 'a': the file ends after 1 data rows, expected 2"),
        ("a,b\n1,2\n3,4\n5,6\n", "line 4, column 'a': a data row beyond the 2 expected"),
        ("a,b\n1,2\n\n3,4\n", "line 3, column 'a': blank line inside the table"),
        ("a,b\r\n1,2\r\n3,4\r\n\r\n", None),  # CRLF and a trailing blank line: fine
    ],
)
def test_a_malformed_table_is_refused_naming_file_line_and_column(tmp_path, text, where):
    path = _write(tmp_path, text)
    if where is None:
        assert len(read_table(path, ["a", "b"], rows=2)) == 2
        return
    with pytest.raises(DataFormatError) as error:
        read_table(path, ["a", "b"], rows=2)
    assert str(error.value) == f"{path}: {where}"


def test_headerless_problems_count_lines_from_1_and_columns_from_1(tmp_path):
    path = _write(tmp_path, "1,2\n3,x\n")
    with pytest.raises(DataFormatError, match=r"t\.csv: line 2, column 2: 'x' is not a number"):
        read_table(path, 2, rows=2)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothere\.csv"):
        read_table(tmp_path / "nothere.csv", ["a"], rows=1)


def test_a_changed_file_is_read_again_not_served_from_the_cache(tmp_path):
    path = _write(tmp_path, "a\n1\n")
    assert read_table(path, ["a"], rows=1)["a"].tolist() == [1.0]
    path.write_text("a\n22\n")  # a new size: a new cache key even within the same mtime tick
    assert read_table(path, ["a"], rows=1)["a"].tolist() == [22.0]


def test_row_and_group_splits_are_seeded_partitions():
    parts = split_rows(100, seed=3)
    assert [len(p) for p in parts] == [60, 20, 20]
    assert sorted(np.concatenate(parts).tolist()) == list(range(100))
    assert all(np.array_equal(a, b) for a, b in zip(parts, split_rows(100, seed=3), strict=True))
    assert not np.array_equal(parts[0], split_rows(100, seed=4)[0])
    groups = np.repeat(np.arange(10), 3)
    by_group = split_groups(groups, seed=0)
    assert [len(set(groups[p])) for p in by_group] == [6, 2, 2]
    assert sorted(np.concatenate(by_group).tolist()) == list(range(30))
    assert set(groups[by_group[0]]).isdisjoint(groups[by_group[1]])


def test_a_scaling_keeps_a_constant_training_column_finite():
    scaling = Scaling.fit(np.array([[1.0, 2.0], [1.0, 4.0]]))
    out = scaling(np.array([[5.0, 3.0]]))
    assert out.dtype == np.float32
    assert out.tolist() == [[4.0, 0.0]]


# --- the loaders on their real files ----------------------------------------------------------
def _folder(name):
    return shared_data(dataset(name).folder)


def _array(values):
    return np.asarray(values, dtype=np.float64)


@pytest.mark.parametrize("name", NAMES)
def test_each_loader_gives_standardised_float32_splits_of_its_tasks(name):
    spec = dataset(name)
    folder = _folder(name)
    _, tasks, sizes, n_inputs = EXPECTED[name]
    spec.check(folder)
    assert tuple(t.name for t in spec.tasks) == tasks
    assert all(t.kind == "regression" and t.metrics == ("mse", "mae") for t in spec.tasks)
    assert spec.metric == "mse"
    splits = spec.load(folder, 0)
    parts = (splits.train, splits.stop, splits.test)
    if sizes is not None:
        assert tuple(len(p) for p in parts) == sizes
    widths = {p.x.shape[1] for p in parts}
    assert len(widths) == 1
    if n_inputs is not None:
        assert widths == {n_inputs}
    for part in parts:
        assert part.task_names == tasks
        assert part.x.dtype == torch.float32
        assert torch.isfinite(part.x).all()
        for y in part.targets.values():
            assert y.dtype == torch.float32 and y.shape == (len(part),)
            assert torch.isfinite(y).all()
    assert set(splits.target_scale) == set(tasks)
    # standardised with the training rows only: exact on train, not on stop
    for task in tasks:
        train, stop = _array(splits.train.targets[task]), _array(splits.stop.targets[task])
        assert abs(train.mean()) < 1e-5 and abs(train.std() - 1) < 1e-5
        assert abs(stop.mean()) > 1e-4
        assert splits.target_scale[task] > 0
    x = _array(splits.train.x)
    scaled = ~np.all(np.isin(x, (0.0, 1.0)), axis=0)  # student's one-hot columns stay 0/1
    assert np.allclose(x[:, scaled].mean(axis=0), 0, atol=1e-5)
    assert np.allclose(x[:, scaled].std(axis=0), 1, atol=1e-4)
    assert not np.allclose(_array(splits.stop.x)[:, scaled].mean(axis=0), 0, atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_the_same_seed_gives_the_same_split_and_another_seed_another(name):
    spec, folder = dataset(name), _folder(name)
    a, b, c = spec.load(folder, 7), spec.load(folder, 7), spec.load(folder, 8)
    for part in ("train", "stop", "test"):
        assert torch.equal(getattr(a, part).x, getattr(b, part).x)
        for task in a.train.task_names:
            assert torch.equal(getattr(a, part).targets[task], getattr(b, part).targets[task])
    assert a.target_scale == b.target_scale
    assert len(a.train) != len(c.train) or not torch.equal(a.train.x, c.train.x)


def test_energy_target_scale_is_the_training_sd_in_the_files_units():
    folder = _folder("energy")
    splits = dataset("energy").load(folder, 0)
    frame = read_table(
        folder / "ENB2012_data.csv", [*(f"X{i}" for i in range(1, 9)), "Y1", "Y2"], rows=768
    )
    train, _, _ = split_rows(768, 0)
    assert splits.target_scale["heating"] == pytest.approx(frame["Y1"].to_numpy()[train].std())
    assert splits.target_scale["cooling"] == pytest.approx(frame["Y2"].to_numpy()[train].std())


def test_parkinsons_puts_every_subject_in_exactly_one_split():
    folder = _folder("parkinsons")
    seed = 5
    splits = dataset("parkinsons").load(folder, seed)
    frame = _parkinsons._read(folder)
    parts = split_groups(frame[_parkinsons.SUBJECT].to_numpy(), seed)
    subjects = [set(frame[_parkinsons.SUBJECT].to_numpy()[p]) for p in parts]
    assert sum(len(s) for s in subjects) == len(set().union(*subjects)) == 42
    assert [len(s) for s in subjects] == [25, 8, 9]
    # the loaded splits are exactly these rows: the targets, unstandardised, match the file
    motor = frame["motor_UPDRS"].to_numpy()
    mean = motor[parts[0]].mean()
    scale = splits.target_scale["motor_UPDRS"]
    for part, rows in zip((splits.train, splits.stop, splits.test), parts, strict=True):
        restored = _array(part.targets["motor_UPDRS"]) * scale + mean
        np.testing.assert_allclose(restored, motor[rows], rtol=1e-5, atol=1e-4)
    # neither the subject id nor test_time is an input
    assert "test_time" not in _parkinsons.INPUTS and _parkinsons.SUBJECT not in _parkinsons.INPUTS


def test_student_keeps_a_student_of_both_course_files_in_one_split():
    folder = _folder("student")
    frame = _student._read(folder)
    assert len(frame) == 395 + 649
    groups = _student.student_groups(frame)
    shared = set(groups[frame["portuguese"] == 0]) & set(groups[frame["portuguese"] == 1])
    # 382 row pairs match on the key (student.txt); a few keys repeat within a file
    assert 360 <= len(shared) <= 382
    parts = split_groups(groups, 3)
    seen = [set(groups[p]) for p in parts]
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
    splits = dataset("student").load(folder, 3)
    assert [len(splits.train), len(splits.stop), len(splits.test)] == [len(p) for p in parts]
    x = _array(splits.train.x)
    assert set(np.unique(x[:, len(_student.NUMERIC) :])) == {0.0, 1.0}  # one-hot + course flag
    assert set(x[:, -1]) == {0.0, 1.0}  # both courses in training


# --- corrupted copies of the real files -------------------------------------------------------
def _corrupt(tmp_path, name, edit):
    """A copy of data set ``name``'s folder whose main file went through ``edit(lines)``."""
    source = _folder(name)
    target = tmp_path / name
    shutil.copytree(source, target)
    path = target / EXPECTED[name][0]
    path.chmod(0o644)
    raw = path.read_bytes().decode()
    newline = "\r\n" if "\r\n" in raw else "\n"
    lines = raw.split(newline)
    path.write_text(newline.join(edit(lines)), newline="")
    return target, path


def _set_field(lines, line, column, value, sep=","):
    fields = lines[line - 1].split(sep)
    fields[column] = value
    lines[line - 1] = sep.join(fields)
    return lines


CORRUPTIONS = [
    # name, edit of the lines (line k is lines[k - 1]), expected message tail
    (
        "energy",
        lambda lines: [*lines[:300], lines[300][: lines[300].index(",", 5)]],  # cut in X3
        "line 301, column 'X3': missing (2 fields, the header has 10)",
    ),
    (
        "energy",
        lambda lines: lines[:500],
        "line 501, column 'X1': the file ends after 499 data rows, expected 768",
    ),
    (
        "energy",
        lambda lines: _set_field(lines, 123, 8, "1O.5"),
        "line 123, column 'Y1': '1O.5' is not a number",
    ),
    (
        "energy",
        lambda lines: [lines[0].replace(",Y2", ",Y_2"), *lines[1:]],
        "line 1, column 'Y2': missing from the header",
    ),
    (
        "concrete",
        lambda lines: [*lines[:40], lines[40] + ",7", *lines[41:]],
        "line 41, column 12: extra field (12 fields, the header has 11)",
    ),
    (
        "concrete",
        lambda lines: _set_field(lines, 77, 4, ""),
        "line 77, column 'Water': empty value",
    ),
    (
        "parkinsons",
        lambda lines: _set_field(lines, 4000, 21, "0.2x"),
        "line 4000, column 'PPE': '0.2x' is not a number",
    ),
    (
        "student",
        lambda lines: _set_field(lines, 333, 31, '"1x"', sep=";"),
        "line 333, column 'G2': '1x' is not a number",
    ),
    (
        "student",
        lambda lines: [lines[0].replace(";absences;", ";"), *lines[1:]],
        "line 1, column 'absences': missing from the header",
    ),
]


@pytest.mark.parametrize(("name", "edit", "where"), CORRUPTIONS)
def test_a_corrupted_copy_is_refused_naming_file_line_and_column(tmp_path, name, edit, where):
    folder, path = _corrupt(tmp_path, name, edit)
    spec = dataset(name)
    for call in (lambda: spec.check(folder), lambda: spec.load(folder, 0)):
        with pytest.raises(DataFormatError) as error:
            call()
        assert str(error.value) == f"{path}: {where}"


@pytest.mark.parametrize("name", NAMES)
def test_a_missing_file_is_refused_naming_it(tmp_path, name):
    folder, path = _corrupt(tmp_path, name, lambda lines: lines)
    path.unlink()  # for student the second file: check reads every file
    spec = dataset(name)
    for call in (lambda: spec.check(folder), lambda: spec.load(folder, 0)):
        with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
            call()


def test_the_loaders_import_no_layer_above_datasets():
    modules = [_files, *(importlib.import_module(f"polytask.datasets._{n}") for n in NAMES)]
    for module in modules:
        source = Path(module.__file__).read_text()
        for layer in ("training", "experiments", "cli"):
            assert f"from ..{layer}" not in source and f"polytask.{layer}" not in source


# --- one short fit ----------------------------------------------------------------------------
def test_two_epochs_on_energy_beat_predicting_the_training_mean():
    spec = dataset("energy")
    splits = spec.load(_folder("energy"), 0)
    torch.manual_seed(0)
    model = spec.model(tuple(splits.train.x.shape[1:]), spec.tasks, 0)
    trainer = pt.Trainer(
        lr=spec.lr, batch_size=spec.batch_size, max_epochs=2, quiet=True, device="cpu"
    )
    history = trainer.fit(model, list(spec.tasks), splits.train, splits.stop)
    assert len(history) == 2
    assert history["stop_loss"][1] < history["stop_loss"][0]
    model.eval()
    with torch.no_grad():
        outputs = model(splits.test.x)
    for task in ("heating", "cooling"):
        mse = float(((outputs[task].reshape(-1) - splits.test.targets[task]) ** 2).mean())
        assert mse < 0.5  # predicting the training mean (0) scores about 1
