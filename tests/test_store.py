"""The store: never writes to a file that is not one, reads only what it is asked."""

import sqlite3

import pytest

from polytask.experiments import Store


def _result(replication: int) -> dict:
    return {
        "replication": replication,
        "seed": 100 + replication,
        "versions": {"torch": "x"},
        "seconds": 0.5,
        "metrics": {"mse": {"task0": {"mse": float(replication)}}},
        "histories": {},
    }


@pytest.fixture
def filled(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    store.register("abc", "hetero", {"baseline": "mse"})
    for i in (0, 1, 2, 3, 4):
        store.add("abc", _result(i))
    return store


def test_first_reads_only_the_first_replications(filled):
    view = Store(filled.path, read_only=True, first=3)
    assert [r["replication"] for r in view.replications("abc")] == [0, 1, 2]
    assert view.finished("abc") == {0, 1, 2}
    assert sorted(view.frame("abc")["replication"].unique()) == [0, 1, 2]
    assert view.configs()["replications"].tolist() == [3]
    assert Store(filled.path, read_only=True).configs()["replications"].tolist() == [5]
    with pytest.raises(ValueError, match="positive number of replications, got 0"):
        Store(filled.path, read_only=True, first=0)


def test_read_only_store_reads_and_never_writes(filled):
    before = filled.path.read_bytes()
    view = Store(filled.path, read_only=True)
    assert len(view.replications("abc")) == 5
    with pytest.raises(ValueError, match="opened read-only"):
        view.add("abc", _result(7))
    with pytest.raises(ValueError, match="opened read-only"):
        view.register("new", "hetero", {})
    assert filled.path.read_bytes() == before


@pytest.mark.parametrize("read_only", [True, False])
def test_a_file_that_is_not_a_store_is_refused_and_left_alone(tmp_path, read_only):
    text = tmp_path / "notes.txt"
    text.write_text("my notes\n")
    with pytest.raises(ValueError, match=r"notes.txt is not a polytask store \(not an SQLite"):
        Store(text, read_only=read_only)
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE mine (x)")
    before = other.read_bytes()
    with pytest.raises(
        ValueError, match=r"SQLite database but not a polytask store \(tables: mine"
    ):
        Store(other, read_only=read_only)
    assert text.read_text() == "my notes\n" and other.read_bytes() == before
    with pytest.raises(ValueError, match="is a folder"):
        Store(tmp_path, read_only=read_only)


def test_read_only_refuses_a_missing_or_empty_file_without_creating_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="no store at"):
        Store(tmp_path / "missing.sqlite", read_only=True)
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    with pytest.raises(ValueError, match=r"empty\.sqlite is empty, not a polytask store"):
        Store(empty, read_only=True)
    assert empty.stat().st_size == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.sqlite"]


def test_a_store_whose_folder_cannot_be_created_is_a_clear_error(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("")
    with pytest.raises(ValueError, match="cannot create the folder of the store"):
        Store(afile / "s.sqlite")
