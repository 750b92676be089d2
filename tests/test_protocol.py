"""The model protocol and the gradient engine: a user's own module (dict outputs or routed by
task) through as_multitask and GradientEngine gives the same update as a MultiTaskModel with the
same weights, on every path; what cannot work is refused before a step, with the reason."""

import copy
import warnings

import pytest
import torch
from torch import nn
from torchjd import aggregation

import polytask as pt
from polytask.engine import LearnedWeightsWarning

NAMES = ("a", "b", "c")


class Routed(nn.Module):
    """Hand-written multi-task code: forward(x, task_id) with an integer id."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Linear(4, 6)  # runs before the trunk, on every call
        self.trunk = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.ReLU())
        self.heads = nn.ModuleList([nn.Linear(8, 1) for _ in NAMES])

    def forward(self, x, task_id):
        return self.heads[task_id](self.trunk(self.embed(x)))


class DictOut(nn.Module):
    """A module whose forward returns every task's output."""

    def __init__(self, routed: Routed) -> None:
        super().__init__()
        self.embed, self.trunk, self.heads = routed.embed, routed.trunk, routed.heads

    def forward(self, x):
        z = self.trunk(self.embed(x))
        return {name: head(z) for name, head in zip(NAMES, self.heads, strict=True)}


def reference(routed: Routed) -> pt.MultiTaskModel:
    """The same weights as a MultiTaskModel (its trunk includes the embedding)."""
    trunk = nn.Sequential(routed.embed, *routed.trunk)
    return pt.MultiTaskModel(trunk, dict(zip(NAMES, routed.heads, strict=True)))


def batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(24, 4, generator=g), torch.randn(24, 3, generator=g)
    y[:, 1] = -2 * y[:, 0]  # conflicting tasks, so methods differ from equal weighting
    return x, y


def losses_of(outputs, y):
    return {t: ((outputs[t][:, 0] - y[:, i]) ** 2).mean() for i, t in enumerate(NAMES)}


def gradients(model: nn.Module):
    return [
        p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()
    ]


METHODS = ["sum", "uw", "upgrad", "upgrad@repr", "mgda@repr", "mgda@naive", "gradnorm", "dbmtl"]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", ["routed", "dict", "routed, inferred", "plain module"])
def test_a_users_module_gets_the_update_of_a_multitask_model(method, kind):
    x, y = batch()
    ours = Routed()
    ref_model = reference(copy.deepcopy(ours))
    if kind == "routed":
        model = pt.as_multitask(ours, NAMES, shared="trunk", route="task_id", keys=range(3))
    elif kind == "routed, inferred":  # shared part read off the graph: embed + trunk
        model = pt.as_multitask(ours, NAMES, route="task_id", keys=range(3))
    elif kind == "dict":
        model = pt.as_multitask(DictOut(ours), NAMES, shared="trunk")
    else:  # no protocol at all: the engine reads the shared parameters off the losses
        model = DictOut(ours)
    engine_kwargs = {"tasks": NAMES} if kind == "plain module" else {}
    engine = pt.GradientEngine(model, method, **engine_kwargs)
    if kind in ("plain module", "routed, inferred") and "@repr" in method:
        # no single submodule gives the representation: refused, with what to pass
        with pytest.raises(ValueError, match="needs the shared"):
            engine.backward(losses_of(engine.forward(x), y))
        return
    step = engine.backward(losses_of(engine.forward(x), y))
    reference_engine = pt.GradientEngine(ref_model, method)
    ref_step = reference_engine.backward(losses_of(reference_engine.forward(x), y))
    torch.testing.assert_close(step.weights, ref_step.weights, rtol=1e-4, atol=1e-6)
    for g, ref in zip(gradients(ours), gradients(ref_model), strict=True):
        torch.testing.assert_close(g, ref, rtol=1e-4, atol=1e-6)
    if method == "mgda@repr":  # a real method, not equal weighting in disguise
        assert not torch.allclose(step.weights, step.weights.mean().expand(3), atol=1e-3)


def test_the_representation_path_takes_the_features_the_user_passes():
    x, y = batch()
    net = DictOut(Routed())
    z = net.trunk(net.embed(x))
    outputs = {t: head(z) for t, head in zip(NAMES, net.heads, strict=True)}
    losses = losses_of(outputs, y)
    rows = [
        torch.autograd.grad(loss, z, retain_graph=True)[0].flatten() for loss in losses.values()
    ]
    jz = torch.stack(rows)
    engine = pt.GradientEngine(net, "mgda@repr", tasks=NAMES)
    step = engine.backward(losses, z)
    torch.testing.assert_close(
        step.weights, aggregation.MGDAWeighting()(jz @ jz.T), rtol=1e-4, atol=1e-6
    )
    with pytest.raises(ValueError, match="needs the shared features"):
        engine.backward(losses_of(net(x), y))


def test_per_task_batches_on_the_representation_path_have_a_block_diagonal_gramian():
    """Tasks that read disjoint rows have orthogonal feature gradients: MGDA then weights each
    task by 1 / |dL_t/dz_t|^2 (normalised), the min-norm point of orthogonal vectors."""
    model = reference(Routed())
    engine = pt.GradientEngine(model, "mgda@repr")
    losses, norms = {}, []
    for i, name in enumerate(NAMES):
        x, y = batch(seed=10 + i)
        out = engine.forward(x, task=name)
        losses[name] = ((out[:, 0] - y[:, i]) ** 2).mean()
    features = engine._pending
    for name in NAMES:
        (g,) = torch.autograd.grad(losses[name], features[name], retain_graph=True)
        norms.append(g.pow(2).sum())
    step = engine.backward(losses)
    expected = aggregation.MGDAWeighting()(torch.diag(torch.stack(norms)))
    torch.testing.assert_close(step.weights, expected, rtol=1e-4, atol=1e-6)


def test_routing_and_unknown_tasks():
    ours = Routed()
    model = pt.as_multitask(ours, NAMES, route="task_id", keys={"a": 0, "b": 1, "c": 2})
    x, _ = batch()
    torch.testing.assert_close(model(x, task="b"), ours(x, 1))
    assert list(model(x)) == list(NAMES)
    with pytest.raises(KeyError, match="unknown task 'd'"):
        model(x, task="d")
    with pytest.raises(ValueError, match="no routing key for tasks"):
        pt.as_multitask(ours, NAMES, route="task_id", keys={"a": 0})
    with pytest.raises(ValueError, match="no submodule 'body'"):
        pt.as_multitask(ours, NAMES, shared="body", route="task_id", keys=range(3))
    with pytest.raises(ValueError, match="unique"):
        pt.as_multitask(ours, ["a", "a"], route="task_id")


def test_the_shared_part_is_inferred_or_asked_for_in_one_sentence():
    ours = Routed()
    model = pt.as_multitask(ours, NAMES, route="task_id", keys=range(3))
    with pytest.raises(RuntimeError, match="pass shared='<submodule>'"):
        model.shared_parameters()
    model(batch()[0])  # a forward pass with gradients reveals it
    expected = {id(p) for p in [*ours.embed.parameters(), *ours.trunk.parameters()]}
    assert {id(p) for p in model.shared_parameters()} == expected
    assert not pt.models.has_representation(model)  # two submodules: no single trunk output
    trunk_only = pt.as_multitask(DictOut(ours), NAMES)
    with torch.no_grad():
        ours.embed.weight.requires_grad_(False)
        ours.embed.bias.requires_grad_(False)
    trunk_only(batch()[0])
    assert pt.models.has_representation(trunk_only)  # the trunk alone holds them: adopted

    class Separate(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(2, 1), nn.Linear(2, 1)

        def forward(self, x):
            return {"a": self.a(x), "b": self.b(x)}

    with pytest.raises(ValueError, match="no parameter is reached by two tasks"):
        pt.as_multitask(Separate(), ["a", "b"])(torch.zeros(3, 2))


def test_impossible_combinations_are_refused_before_a_step():
    model = pt.as_multitask(Routed(), NAMES, route="task_id", keys=range(3))  # no single trunk
    with pytest.raises(ValueError, match=r"UPGrad@repr needs the shared representation"):
        pt.GradientEngine(model, "upgrad@repr").check()
    with pytest.raises(ValueError, match="needs every task in every step"):
        pt.GradientEngine(reference(Routed()), "dwa").check(complete=False)
    with pytest.raises(ValueError, match="loss-level method"):
        pt.GradientEngine(reference(Routed()), "uw", path="repr")
    with pytest.raises(ValueError, match="does not name its tasks"):
        pt.GradientEngine(Routed(), "upgrad")
    with pytest.raises(ValueError, match="unknown method 'upgradd'"):
        pt.GradientEngine(reference(Routed()), "upgradd")


def test_a_learned_weighting_warns_once_when_not_optimised():
    x, y = batch()

    def run(with_engine_parameters):
        model = reference(Routed())
        engine = pt.GradientEngine(model, "uw")
        params = [*model.parameters(), *(engine.parameters() if with_engine_parameters else [])]
        optimizer = torch.optim.SGD(params, lr=0.1)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(4):
                optimizer.zero_grad()
                engine.backward(losses_of(engine.forward(x), y))
                optimizer.step()
        return [w for w in caught if issubclass(w.category, LearnedWeightsWarning)]

    assert len(run(False)) == 1
    assert run(True) == []


def test_gradnorm_finds_the_last_shared_layer_by_the_graph_not_registration_order():
    class Backwards(nn.Module):  # registers its last layer first
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.last, self.first = nn.Linear(8, 8), nn.Linear(4, 8)

        def forward(self, x):
            return torch.tanh(self.last(torch.relu(self.first(x))))

    model = pt.MultiTaskModel(Backwards(), {t: nn.Linear(8, 1) for t in NAMES})
    x, y = batch()
    engine = pt.GradientEngine(model, "gradnorm")
    plain = losses_of(model(x), y)  # the heads read z itself here: the trunk is reachable
    norms = torch.stack(
        [
            torch.cat(
                [
                    g.flatten()
                    for g in torch.autograd.grad(
                        loss, list(model.trunk.last.parameters()), retain_graph=True
                    )
                ]
            ).norm()
            for loss in plain.values()
        ]
    )
    engine.backward(losses_of(engine.forward(x), y))
    torch.testing.assert_close(
        engine.method.task_weights.grad,
        torch.sign(norms - norms.mean()) * norms,
        rtol=1e-4,
        atol=1e-6,
    )


def test_head_owners_of_the_built_in_model():
    heads = pt.ColumnHeads(nn.Linear(4, 3), {"a": 1, "b": 2})
    owners = pt.MultiTaskModel(nn.Identity(), heads).parameter_owners()
    assert owners[id(heads.layer.weight)] == ["a", "b", "b"]
    shared_head = nn.Linear(4, 1)
    model = pt.MultiTaskModel(
        nn.Linear(4, 4), {"a": shared_head, "b": shared_head, "c": nn.Linear(4, 1)}
    )
    owners = model.parameter_owners()
    assert id(shared_head.weight) not in owners
    assert owners[id(model.heads["c"].weight)] == "c"


def test_reprs_show_every_hyperparameter():
    assert repr(pt.CAGrad(c=0.9)) == "CAGrad(path='exact', c=0.9)"
    assert repr(pt.Weighted([1, 2])) == "Weighted([1, 2])"
    assert repr(pt.make_objective("mgda@repr")) == "MGDA(path='representation')"
    assert "temperature=3.0" in repr(pt.DWA(temperature=3.0))
    assert "alpha=0.5" in repr(pt.GradNorm(alpha=0.5))


def test_layers_import_only_what_is_below_them():
    """Objectives never import models, the engine or the loop; models never import methods."""
    import ast
    from pathlib import Path

    root = Path(pt.__file__).parent
    forbidden = {
        "objectives": {"models", "engine", "training", "experiments", "cli"},
        "models": {"objectives", "engine", "training", "experiments", "cli"},
        "engine": {"training", "experiments", "cli"},
        "training": {"experiments", "cli"},
        # data sets describe data, tasks and a default model; the loop and experiments use them
        "datasets": {"objectives", "engine", "training", "experiments", "cli"},
        "evaluation": {"objectives", "engine", "experiments", "cli"},  # plots read histories
    }
    for layer, banned in forbidden.items():
        for path in (root / layer).glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.level >= 2 and node.module:
                    top = node.module.split(".")[0]
                    assert top not in banned, f"{path.name} imports ..{node.module}"
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    parts = node.module.split(".")
                    assert not (parts[0] == "polytask" and len(parts) > 1 and parts[1] in banned)
