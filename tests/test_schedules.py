"""Schedules: exact order and counts per size mode, reshuffled cycles, determinism."""

from collections import Counter

import numpy as np
import pytest

from polytask.data import Schedule

SIZES = {"a": 5, "b": 2, "c": 3}  # with batch 2: a has 3 batches, b 1, c 2


def tasks_of(steps):
    return [[task for task, _ in step] for step in steps]


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("min_size", [["a", "b", "c"]]),
        ("max_size_cycle", [["a", "b", "c"]] * 3),
        ("max_size", [["a", "b", "c"], ["a", "c"], ["a"]]),
    ],
)
def test_round_robin(mode, expected):
    assert tasks_of(Schedule("round_robin", mode).epoch(SIZES, 2, seed=0)) == expected


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("min_size", ["a", "b", "c"]),
        ("max_size_cycle", ["a"] * 3 + ["b"] * 3 + ["c"] * 3),
        ("max_size", ["a"] * 3 + ["b"] + ["c"] * 2),
    ],
)
def test_sequential(mode, expected):
    steps = Schedule("sequential", mode).epoch(SIZES, 2, seed=0)
    assert tasks_of(steps) == [[t] for t in expected]


@pytest.mark.parametrize("kind", ["proportional", "temperature"])
@pytest.mark.parametrize(
    ("mode", "total", "exact"),
    [("min_size", 3, None), ("max_size_cycle", 9, None), ("max_size", 6, {"a": 3, "b": 1, "c": 2})],
)
def test_sampled_schedules_counts(kind, mode, total, exact):
    steps = Schedule(kind, mode).epoch(SIZES, 2, seed=3)
    assert len(steps) == total and all(len(step) == 1 for step in steps)
    if exact:  # every batch exactly once: shorter tasks just end
        assert Counter(t for [(t, _)] in steps) == exact


def test_batches_of_a_pass_cover_each_row_once_and_cycles_are_reshuffled():
    steps = Schedule("round_robin", "max_size_cycle").epoch({"a": 20, "b": 6}, 2, seed=1)
    a = np.concatenate([index for step in steps for task, index in step if task == "a"])
    assert sorted(a) == list(range(20))
    b = [index for step in steps for task, index in step if task == "b"]
    passes = [np.concatenate(b[i : i + 3]) for i in range(0, 9, 3)]  # three full passes
    assert all(sorted(p) == list(range(6)) for p in passes)
    assert len({tuple(p) for p in passes}) > 1  # not replayed in the same order


def test_epoch_composition_is_deterministic_given_the_seed():
    schedule = Schedule("temperature", "max_size_cycle", temperature=3.0)
    first = schedule.epoch(SIZES, 2, seed=7)
    again = schedule.epoch(SIZES, 2, seed=7)
    other = schedule.epoch(SIZES, 2, seed=8)
    flat = [(t, tuple(i)) for step in first for t, i in step]
    assert flat == [(t, tuple(i)) for step in again for t, i in step]
    assert flat != [(t, tuple(i)) for step in other for t, i in step]


def test_sampling_probabilities():
    sizes = {"big": 900, "small": 100}
    assert Schedule("proportional").probabilities(sizes) == pytest.approx(
        {"big": 0.9, "small": 0.1}
    )
    # size ** (1/T) with T = 2: 30 and 10
    assert Schedule("temperature", temperature=2.0).probabilities(sizes) == pytest.approx(
        {"big": 0.75, "small": 0.25}
    )
    capped = Schedule("temperature", temperature=1.0, size_cap=100).probabilities(sizes)
    assert capped == pytest.approx({"big": 0.5, "small": 0.5})
    draws = Counter()
    schedule = Schedule("proportional", "max_size_cycle")
    for seed in range(40):
        draws.update(t for [(t, _)] in schedule.epoch(sizes, 50, seed=seed))
    assert draws["small"] / sum(draws.values()) == pytest.approx(0.1, abs=0.03)


def test_bad_schedules():
    with pytest.raises(ValueError, match="schedule must be one of"):
        Schedule("random")
    with pytest.raises(ValueError, match="size_mode must be one of"):
        Schedule("round_robin", "longest")
    with pytest.raises(ValueError, match="at least one row"):
        Schedule().epoch({"a": 0}, 2, seed=0)
