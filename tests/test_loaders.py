"""The user's own per-task DataLoaders / Datasets mixed by polytask's schedules, the trainer's
LoaderSource over them, and split of a dict of per-task datasets."""

from collections import Counter

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, TensorDataset

import polytask as pt
from polytask.data import Schedule, TaskData, as_loaders, mix_loaders
from polytask.training._loader_source import LoaderSource
from polytask.training._sources import PerTaskSource

KINDS = ("round_robin", "sequential", "proportional", "temperature")
MODES = ("min_size", "max_size_cycle", "max_size")
CPU = torch.device("cpu")


def rows(n, offset=0, width=3):
    """A dataset whose first input column is the row's id (offset + row)."""
    x = torch.zeros(n, width)
    x[:, 0] = torch.arange(n, dtype=torch.float32) + offset
    return TensorDataset(x, torch.arange(n, dtype=torch.float32))


def ids(batch):
    return batch[0][:, 0].long().tolist()


def loaders_for(sizes, batch_size, shuffle=True):
    return {
        t: DataLoader(rows(n), batch_size=batch_size, shuffle=shuffle) for t, n in sizes.items()
    }


def composition(steps):
    return [list(step) for step in steps]


# -- mix_loaders: the same schedule as on TaskData ------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", MODES)
def test_composition_over_loaders_matches_the_schedule_over_taskdata(kind, mode):
    sizes, batch = {"a": 5, "b": 2, "c": 3}, 2  # 3, 1 and 2 batches
    schedule = Schedule(kind, mode)
    over_loaders = composition(mix_loaders(loaders_for(sizes, batch), schedule, seed=4))
    over_rows = [[t for t, _ in step] for step in schedule.epoch(sizes, batch, seed=4)]
    assert len(over_loaders) == len(over_rows)
    if kind in ("round_robin", "sequential"):  # no draw: the same steps exactly
        assert over_loaders == over_rows
    else:
        assert all(len(step) == 1 for step in over_loaders)
    if mode == "max_size" or kind in ("round_robin", "sequential"):
        assert Counter(t for s in over_loaders for t in s) == Counter(
            t for s in over_rows for t in s
        )


def test_round_robin_size_modes_count_batches():
    sizes = {"a": 10, "b": 4, "c": 6}  # batch 2: 5, 2 and 3 batches
    loaders = loaders_for(sizes, 2)
    min_size = composition(mix_loaders(loaders, Schedule("round_robin", "min_size")))
    assert min_size == [["a", "b", "c"]] * 2
    cycle = composition(mix_loaders(loaders, Schedule("round_robin", "max_size_cycle")))
    assert cycle == [["a", "b", "c"]] * 5
    ends = composition(mix_loaders(loaders, Schedule("round_robin", "max_size")))
    assert Counter(t for s in ends for t in s) == {"a": 5, "b": 2, "c": 3}


def test_each_step_holds_each_tasks_batch_as_its_loader_gives_it():
    loaders = {"a": DataLoader(rows(4), batch_size=2), "b": DataLoader(rows(2, 100), batch_size=1)}
    steps = list(mix_loaders(loaders, Schedule("round_robin", "max_size")))
    assert [{t: ids(b) for t, b in step.items()} for step in steps] == [
        {"a": [0, 1], "b": [100]},
        {"a": [2, 3], "b": [101]},
    ]
    assert all(isinstance(b, list) and len(b) == 2 for step in steps for b in step.values())


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 25), min_size=1, max_size=4),
    batch=st.integers(1, 6),
    kind=st.sampled_from(KINDS),
    mode=st.sampled_from(MODES),
    seed=st.integers(0, 1000),
)
def test_batches_served_per_task_match_the_schedule(sizes, batch, kind, mode, seed):
    sizes = {f"t{i}": n for i, n in enumerate(sizes)}
    schedule = Schedule(kind, mode)
    steps = list(mix_loaders(loaders_for(sizes, batch), schedule, seed=seed))
    served = Counter(t for step in steps for t in step)
    batches = {t: -(-n // batch) for t, n in sizes.items()}
    shortest, longest = min(batches.values()), max(batches.values())
    total = {"min_size": shortest, "max_size_cycle": longest}.get(mode)
    if mode == "max_size":
        assert served == batches  # every batch of every task exactly once
    elif kind in ("round_robin", "sequential"):
        assert served == dict.fromkeys(sizes, total)
    else:
        assert sum(served.values()) == len(sizes) * total
    if kind == "round_robin":
        assert all(len(set(step)) == len(step) for step in steps)
    # rows: within each pass of a task, every row at most once; a full pass covers all
    for task, n in sizes.items():
        seen = [i for step in steps if task in step for i in ids(step[task])]
        passes = [seen[i : i + n] for i in range(0, len(seen), n)]
        assert all(len(set(p)) == len(p) for p in passes)
        assert all(sorted(p) == list(range(n)) for p in passes if len(p) == n)


def test_same_seed_and_epoch_give_the_same_steps_and_leave_torch_rng_alone():
    loaders = {"a": rows(12), "b": DataLoader(rows(5), batch_size=2, shuffle=True)}
    schedule = Schedule("proportional", "max_size_cycle")

    def run(seed, epoch):
        steps = mix_loaders(loaders, schedule, seed=seed, epoch=epoch, batch_size=3)
        return [{t: ids(b) for t, b in step.items()} for step in steps]

    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = run(1, 0)
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(999)  # the global state does not decide the order
    assert run(1, 0) == first
    assert run(1, 1) != first
    assert run(2, 0) != first


class CountingSampler(Sampler):
    """Sequential or shuffled indices; counts how many times a pass was started."""

    def __init__(self, n, shuffle=False):
        self.n, self.shuffle, self.started = n, shuffle, 0

    def __len__(self):
        return self.n

    def __iter__(self):
        self.started += 1
        order = torch.randperm(self.n) if self.shuffle else torch.arange(self.n)
        return iter(order.tolist())


def test_a_cycled_loader_is_restarted_and_reshuffled():
    sampler = CountingSampler(6, shuffle=True)
    short = DataLoader(rows(6), batch_size=3, sampler=sampler)  # 2 batches per pass
    long = DataLoader(rows(12), batch_size=2)  # 6 batches
    steps = list(mix_loaders({"long": long, "short": short}, "round_robin", seed=3))
    assert len(steps) == 6 and sampler.started == 3
    seen = [ids(step["short"]) for step in steps]
    passes = [seen[i] + seen[i + 1] for i in (0, 2, 4)]
    assert all(sorted(p) == list(range(6)) for p in passes)
    assert len({tuple(p) for p in passes}) > 1  # each pass is reshuffled


def test_a_loader_that_ends_before_its_length_names_the_task():
    class Short(CountingSampler):
        def __len__(self):
            return self.n + 4  # claims 2 batches more than it gives

    liar = DataLoader(rows(4), batch_size=2, sampler=Short(4))
    steps = mix_loaders({"a": DataLoader(rows(8), batch_size=2), "b": liar}, "round_robin")
    with pytest.raises(ValueError, match=r"task 'b': its DataLoader ended after 2 batches"):
        list(steps)


def test_bad_loader_entries_name_the_task_at_once():
    class Stream(IterableDataset):
        def __iter__(self):
            return iter([])

    with pytest.raises(ValueError, match="task 'b': a Dataset needs batch_size"):
        mix_loaders({"a": DataLoader(rows(2)), "b": rows(3)})
    with pytest.raises(TypeError, match="task 'b': an IterableDataset"):
        mix_loaders({"a": rows(2), "b": Stream()}, batch_size=2)
    with pytest.raises(TypeError, match="task 'a': a TaskData is not a torch Dataset"):
        mix_loaders({"a": TaskData(np.zeros((2, 1)), np.zeros(2))}, batch_size=2)
    with pytest.raises(TypeError, match="task 'a': its DataLoader has no length"):
        mix_loaders({"a": DataLoader(Stream())})
    with pytest.raises(ValueError, match="task 'a': its DataLoader gives no batch"):
        mix_loaders({"a": DataLoader(rows(3), batch_size=4, drop_last=True)})
    with pytest.raises(TypeError, match="task 'a': expected a torch DataLoader"):
        mix_loaders({"a": 3})
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        mix_loaders({"a": rows(2)}, seed=-1, batch_size=1)


def test_as_loaders_wraps_datasets_with_the_batch_size_and_keeps_loaders():
    given_loader = DataLoader(rows(5), batch_size=4)
    loaders = as_loaders({"a": rows(5), "b": given_loader}, 2, shuffle=False)
    assert len(loaders["a"]) == 3 and loaders["b"] is given_loader
    assert [ids(b) for b in loaders["a"]] == [[0, 1], [2, 3], [4]]


# -- LoaderSource: the trainer's source over loaders ------------------------------------------


def source_of(loaders, tasks=None, **kwargs):
    tasks = tasks or [pt.Task(name) for name in loaders]
    return LoaderSource(loaders, "train", tasks, CPU, **kwargs)


def part_ids(part):
    x = part.x.to_dense() if part.x.layout == torch.sparse_csr else part.x
    return x[:, 0].long().tolist()


@pytest.mark.parametrize("kind", KINDS)
def test_loader_source_epoch_serves_every_row_once_with_max_size(kind):
    loaders = {"a": rows(7), "b": DataLoader(rows(4, 100), batch_size=3, shuffle=True)}
    source = source_of(loaders)
    batches = list(source.epoch(Schedule(kind, "max_size"), 2, seed=5))
    seen = {0: [], 1: []}
    for batch in batches:
        assert batch.counts == [len(p.y) for p in batch.parts]
        for part in batch.parts:
            assert part.x.dtype == torch.float32 and part.x.shape[1:] == (3,)
            seen[part.position] += part_ids(part)
    assert sorted(seen[0]) == list(range(7)) and sorted(seen[1]) == list(range(100, 104))
    if kind == "round_robin":
        assert [b.positions for b in batches] == [(0, 1), (0, 1), (0,), (0,)]


def test_loader_source_steps_match_per_task_source_on_the_same_data():
    sizes = {"a": 9, "b": 4, "c": 6}
    tasks = [pt.Task(t) for t in sizes]
    data = {t: TaskData(rows(n).tensors[0], rows(n).tensors[1]) for t, n in sizes.items()}
    per_task = PerTaskSource(data, "train", tasks, CPU)
    loaders = source_of({t: rows(n) for t, n in sizes.items()}, tasks)
    for kind in ("round_robin", "sequential"):
        for mode in MODES:
            schedule = Schedule(kind, mode)
            a = [(b.positions, b.counts) for b in per_task.epoch(schedule, 2, seed=0)]
            b = [(b.positions, b.counts) for b in loaders.epoch(schedule, 2, seed=0)]
            assert a == b, (kind, mode)


def test_loader_source_chunks_cover_every_row_once_per_task():
    loaders = {
        "a": rows(7),
        "b": DataLoader(rows(5, 100), batch_size=2, shuffle=True),
        "c": DataLoader(rows(3, 200), batch_size=5),
    }
    source = source_of(loaders)
    seen = {0: [], 1: [], 2: []}
    for batch in source.chunks(3):
        assert len(batch.parts) == 1
        seen[batch.parts[0].position] += part_ids(batch.parts[0])
    assert sorted(seen[0]) == list(range(7))
    assert sorted(seen[1]) == list(range(100, 105))
    assert sorted(seen[2]) == list(range(200, 203))
    assert [b.counts for b in source.chunks(3) if b.positions == (0,)] == [[3], [3], [1]]


def test_loader_source_same_seed_same_epoch():
    loaders = {"a": rows(10), "b": DataLoader(rows(6), batch_size=2, shuffle=True)}
    source = source_of(loaders)
    schedule = Schedule("temperature", "max_size_cycle")

    def run(seed):
        return [
            [(p.position, part_ids(p)) for p in batch.parts]
            for batch in source.epoch(schedule, 3, seed)
        ]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_loader_source_converts_targets_and_masks():
    x = torch.zeros(4, 2)
    classes = TensorDataset(x, torch.tensor([0.0, 2.0, 1.0, 2.0]))
    masked = TensorDataset(x, torch.ones(4), torch.tensor([True, False, False, True]))
    tasks = [pt.Task("c", kind="multiclass", size=3), pt.Task("m", kind="binary")]
    source = source_of({"c": classes, "m": masked}, tasks)
    batches = list(source.chunks(2))
    assert batches[0].parts[0].y.dtype == torch.long
    assert [b.counts for b in batches] == [[2], [2], [1], [1]]
    assert batches[2].parts[0].mask.tolist() == [True, False]
    unlabelled = TensorDataset(x, torch.ones(4), torch.tensor([False, False, True, True]))
    source = source_of({"c": classes, "m": unlabelled}, tasks)
    assert [b.positions for b in source.chunks(2)] == [(0,), (0,), (1,)]  # no label: skipped


def csr_collate(items):
    x = sp.csr_matrix(torch.stack([item[0] for item in items]).numpy())
    return x, torch.stack([item[1] for item in items])


@pytest.mark.parametrize("sparse_input", [True, False])
@pytest.mark.parametrize("form", ["scipy", "torch"])
def test_loader_source_sparse_inputs(form, sparse_input):
    data = rows(5, 1)
    if form == "scipy":
        loader = DataLoader(data, batch_size=2, collate_fn=csr_collate)
    else:
        loader = [(x.to_sparse_csr(), y) for x, y in DataLoader(data, batch_size=2)]
        loader = DataLoader(loader, batch_size=None)  # the items are the batches already
    source = source_of({"a": loader}, sparse_input=sparse_input)
    parts = [b.parts[0] for b in source.chunks(2)]
    layout = torch.sparse_csr if sparse_input else torch.strided
    assert all(p.x.layout == layout and p.x.dtype == torch.float32 for p in parts)
    assert [i for p in parts for i in part_ids(p)] == [1, 2, 3, 4, 5]


def test_bad_targets_fail_in_preflight_naming_the_task_tensor_and_range():
    good = rows(4)
    out_of_range = TensorDataset(torch.zeros(4, 3), torch.tensor([0, 1, 5, 1]))
    tasks = [pt.Task("a"), pt.Task("b", kind="multiclass", size=3)]
    with pytest.raises(
        ValueError,
        match=r"task 'b', targets of the train split: class labels in \[0, 5\], "
        r"expected integers in \[0, 3\) \(batch 0 of its train loader\)",
    ):
        source_of({"a": good, "b": DataLoader(out_of_range, batch_size=4)}, tasks)
    wide = TensorDataset(torch.zeros(4, 3), torch.zeros(4, 2))
    with pytest.raises(ValueError, match=r"task 'a', targets .* shape \(2, 2\), expected \(2,\)"):
        source_of({"a": wide, "b": good}, [pt.Task("a"), pt.Task("b")])
    nan_x = TensorDataset(torch.full((2, 3), float("nan")), torch.zeros(2))
    with pytest.raises(ValueError, match=r"inputs x of task 'a', batch 0 of its train loader"):
        source_of({"a": nan_x})


def test_a_bad_batch_later_in_the_loader_names_the_task_and_batch():
    y = torch.zeros(6)
    y[5] = float("nan")
    bad = DataLoader(TensorDataset(torch.zeros(6, 3), y), batch_size=2)  # row 5: batch 2
    source = source_of({"a": rows(4), "b": bad})
    with pytest.raises(ValueError, match=r"task 'b', targets .* row 1.* \(batch 2 of its train"):
        list(source.epoch(Schedule("round_robin"), 2, seed=0))


def test_loader_source_checks_tasks_shapes_and_items():
    with pytest.raises(ValueError, match=r"task 'b': no loader in the train split"):
        LoaderSource({"a": rows(2)}, "train", [pt.Task("a"), pt.Task("b")], CPU)
    with pytest.raises(ValueError, match=r"loaders for unknown tasks \['z'\]"):
        LoaderSource({"a": rows(2), "z": rows(2)}, "train", [pt.Task("a")], CPU)
    with pytest.raises(ValueError, match=r"inputs differ in shape per row: \{'a': \(3,\), 'b'"):
        source_of({"a": rows(2), "b": rows(2, width=4)})

    class Triple(Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return torch.zeros(3), torch.zeros(()), torch.tensor(True), 0

    with pytest.raises(TypeError, match=r"task 'a', batch 0 .* a 4-tuple; expected \(x, y\)"):
        source_of({"a": Triple()})
    with pytest.raises(ValueError, match=r"task 'a', batch 0 .* targets y have 3 rows, inputs"):
        source_of({"a": DataLoader([(torch.zeros(2, 3), torch.zeros(3))], batch_size=None)})


def test_a_width_change_after_preflight_names_the_task_and_batch():
    batches = [(torch.zeros(2, 3), torch.zeros(2)), (torch.zeros(2, 4), torch.zeros(2))]
    source = source_of({"a": DataLoader(batches, batch_size=None)})
    with pytest.raises(ValueError, match=r"task 'a', batch 1 of its train loader: shape per row"):
        list(source.chunks(2))


def test_complete_steps_only_for_round_robin_without_masks():
    plain = source_of({"a": rows(4), "b": rows(2)})
    assert plain.complete_steps(Schedule("round_robin", "max_size_cycle"))
    assert plain.complete_steps(Schedule("round_robin", "min_size"))
    assert not plain.complete_steps(Schedule("round_robin", "max_size"))
    assert not plain.complete_steps(Schedule("proportional", "max_size_cycle"))
    masked = TensorDataset(torch.zeros(2, 3), torch.zeros(2), torch.ones(2, dtype=torch.bool))
    with_mask = source_of({"a": rows(4), "b": masked})
    assert with_mask.masked == {"a": False, "b": True}
    assert not with_mask.complete_steps(Schedule("round_robin", "max_size_cycle"))
    missing = source_of({"a": rows(4)}, [pt.Task("a", allow_missing=True)])
    assert not missing.complete_steps(Schedule("round_robin", "max_size_cycle"))


def test_a_task_whose_batches_change_form_is_named():
    batches = [(torch.zeros(2, 3), torch.zeros(2)), (torch.zeros(2, 3), torch.zeros(2), [1, 1])]
    source = source_of({"a": DataLoader(batches, batch_size=None)})
    with pytest.raises(ValueError, match=r"task 'a', batch 1 .* a 3-tuple, but its first batch"):
        list(source.chunks(2))


# -- split of a dict of per-task datasets ----------------------------------------------------


def task_rows(n, sparse=False, offset=0):
    """Per-task data whose input and target are the row's id; every third row unlabelled."""
    x = (np.arange(n, dtype=np.float32) + offset)[:, None]
    mask = np.arange(n) % 3 != 0
    return TaskData(
        sp.csr_matrix(np.hstack([x, np.ones_like(x)])) if sparse else x, x[:, 0], mask=mask
    )


def row_ids(data):
    x = data.x.toarray() if data.sparse else data.x.numpy()
    assert (x[:, 0] == data.y.numpy()).all() and (data.mask == (x[:, 0] % 3 != 0)).all()
    return x[:, 0].astype(int).tolist()


def test_split_of_a_dict_cuts_each_task_consecutively():
    data = {"a": task_rows(200), "b": task_rows(40, sparse=True)}
    train, stop, test = pt.split(data)
    assert all(set(part) == {"a", "b"} for part in (train, stop, test))
    assert [len(p["a"]) for p in (train, stop, test)] == [10, 90, 100]
    assert [len(p["b"]) for p in (train, stop, test)] == [2, 18, 20]
    for task, n in (("a", 200), ("b", 40)):
        assert row_ids(train[task]) + row_ids(stop[task]) + row_ids(test[task]) == list(range(n))
    assert train["b"].sparse and train["b"].n_features == 2


@settings(max_examples=30, deadline=None)
@given(
    sizes=st.lists(st.integers(20, 120), min_size=1, max_size=3),
    first=st.floats(0.1, 0.4),
    second=st.floats(0.1, 0.4),
    seed=st.one_of(st.none(), st.integers(0, 10_000)),
    sparse=st.booleans(),
)
def test_split_of_a_dict_keeps_every_row_exactly_once_per_task(sizes, first, second, seed, sparse):
    data = {f"t{i}": task_rows(n, sparse) for i, n in enumerate(sizes)}
    parts = pt.split(data, (first, second, 1 - first - second), shuffle_seed=seed)
    for task, n in zip(data, sizes, strict=True):
        pieces = [row_ids(part[task]) for part in parts]
        assert all(p == sorted(p) and p for p in pieces)  # non-empty, original order kept
        assert sorted(i for p in pieces for i in p) == list(range(n))
        assert len(pieces[0]) == round(n * first)


def test_shuffled_split_is_seeded_per_task():
    data = {"a": task_rows(50), "b": task_rows(30)}
    train, _, _ = pt.split(data, (0.4, 0.3, 0.3), shuffle_seed=1)
    assert row_ids(train["a"]) != list(range(20))  # not the first rows
    again, _, _ = pt.split(data, (0.4, 0.3, 0.3), shuffle_seed=1)
    alone, _, _ = pt.split({"a": data["a"]}, (0.4, 0.3, 0.3), shuffle_seed=1)
    other, _, _ = pt.split(data, (0.4, 0.3, 0.3), shuffle_seed=2)
    assert row_ids(again["a"]) == row_ids(alone["a"]) == row_ids(train["a"])
    assert row_ids(other["a"]) != row_ids(train["a"])
    assert row_ids(train["a"])[:12] != row_ids(train["b"])[:12]  # tasks draw apart


def test_shuffled_split_of_multitarget_data():
    data = pt.MultiTargetData(np.arange(100.0), {"a": np.arange(100.0)})
    parts = pt.split(data, (0.2, 0.3, 0.5), shuffle_seed=0)
    ids_ = [part.x[:, 0].long().tolist() for part in parts]
    assert [len(i) for i in ids_] == [20, 30, 50] and ids_[0] != list(range(20))
    assert sorted(i for part in ids_ for i in part) == list(range(100))
    assert all((part.x[:, 0] == part.targets["a"]).all() for part in parts)


def test_split_of_a_dict_names_the_task_with_an_empty_part():
    data = {"big": task_rows(200), "small": task_rows(5)}
    with pytest.raises(ValueError, match=r"task 'small': the train split is empty: 5 rows"):
        pt.split(data)
    with pytest.raises(ValueError, match=r"task 'big': the stop split is empty: 200 rows"):
        pt.split({"big": task_rows(200)}, (0.5, 0.0, 0.5))
    with pytest.raises(TypeError, match=r"task 'b': split takes a mapping task -> TaskData"):
        pt.split({"a": task_rows(50), "b": np.zeros((50, 2))})
    with pytest.raises(ValueError, match="empty mapping"):
        pt.split({})


def test_a_distributed_sampler_is_refused_in_a_data_parallel_fit():
    """polytask slices every batch between processes itself; a DistributedSampler would make
    each process see 1/W of the rows twice over."""
    from torch.utils.data import DataLoader, TensorDataset
    from torch.utils.data.distributed import DistributedSampler

    from polytask.training._loader_source import _refuse_distributed_samplers

    data = TensorDataset(torch.zeros(8, 2), torch.zeros(8))
    sampler = DistributedSampler(data, num_replicas=2, rank=0)
    with pytest.raises(ValueError, match="task 'b': its DataLoader has a DistributedSampler"):
        _refuse_distributed_samplers(
            {"a": DataLoader(data), "b": DataLoader(data, sampler=sampler)}
        )
    _refuse_distributed_samplers({"a": DataLoader(data, shuffle=True)})  # a plain one is fine
    # the trainer asks the source before a data-parallel fit starts
    loaders = {"a": DataLoader(data), "b": DataLoader(data, sampler=sampler)}
    source = LoaderSource(loaders, "train", [pt.Task("a"), pt.Task("b")], torch.device("cpu"))
    with pytest.raises(ValueError, match="DistributedSampler"):
        source.check_shardable()
