"""A polytask gradient method inside a PyTorch Lightning ``LightningModule``.

Lightning's automatic optimization calls ``loss.backward()`` on one scalar; a gradient method
needs the per-task losses instead. So the module switches to manual optimization and lets a
:class:`polytask.GradientEngine` write the method's update into ``.grad``::

    opt.zero_grad()
    outputs = self.engine.forward(x)        # {task: output}, keeping the shared features
    self.engine.backward(per_task_losses)   # the method's update, in .grad
    opt.step()
    self.engine.after_step(recompute)       # FAMO, GradNorm: the step's losses again

Everything else (the loop, devices, callbacks, logging) stays Lightning's. The data are
polytask's heteroscedastic regression problem: the same curve under growing noise per task.

Needs the optional extra: ``pip install -c constraints.txt -e '.[lightning]'``. Run with::

    python examples/lightning_module.py                  # UPGrad, exact task Jacobian
    python examples/lightning_module.py --method uw      # learned uncertainty weights
    python examples/lightning_module.py --method mgda@repr --epochs 20

It prints and returns each task's mean squared error on held-out rows.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import polytask as pt


class MultiTaskRegressor(L.LightningModule):
    """A shared MLP trunk with one linear head per task, trained by a polytask method."""

    def __init__(
        self, tasks: Sequence[str], method: str = "upgrad", hidden: int = 32, lr: float = 0.01
    ) -> None:
        super().__init__()
        self.automatic_optimization = False  # the engine does the backward pass
        self.tasks, self.lr = tuple(tasks), lr
        self.model = pt.MultiTaskModel(
            pt.mlp(1, hidden, 2), {t: nn.Linear(hidden, 1) for t in self.tasks}
        )
        # a submodule, so that Lightning moves a learned weighting (uw) with the model
        self.method = pt.make_objective(method)
        self.engine = pt.GradientEngine(self.model, self.method)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # engine.parameters() holds a learned weighting's parameters (none for upgrad)
        return torch.optim.Adam([*self.model.parameters(), *self.engine.parameters()], self.lr)

    def task_losses(self, outputs: dict[str, Tensor], y: Tensor) -> dict[str, Tensor]:
        """Each task's mean squared error; column ``i`` of ``y`` is task ``i``'s target."""
        return {t: F.mse_loss(outputs[t][:, 0], y[:, i]) for i, t in enumerate(self.tasks)}

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        opt = self.optimizers()
        opt.zero_grad()
        outputs = self.engine.forward(x)
        losses = self.task_losses(outputs, y)
        # engine.backward calls autograd itself, in place of self.manual_backward(loss): keep
        # the default 32-bit precision (mixed precision's loss scaling would be skipped)
        step = self.engine.backward(losses)
        opt.step()
        # FAMO and GradNorm learn from the step (the others ignore it): the losses again
        self.engine.after_step(
            lambda: torch.stack(list(self.task_losses(self.model(x), y).values()))
        )
        self.log_dict({f"loss/{t}": loss.detach() for t, loss in losses.items()})
        self.log_dict({f"weight/{t}": w for t, w in zip(self.tasks, step.weights, strict=True)})

    def on_train_epoch_end(self) -> None:
        self.engine.end_epoch()  # DWA's per-epoch weights (the others ignore it)

    @torch.no_grad()
    def mse(self, x: Tensor, y: Tensor) -> dict[str, float]:
        """Each task's mean squared error on ``(x, y)``."""
        self.eval()
        return {t: float(loss) for t, loss in self.task_losses(self.model(x), y).items()}


def as_tensors(data: pt.MultiTargetData) -> tuple[Tensor, Tensor]:
    """Inputs and one target column per task, in task order."""
    return data.x, torch.stack([data.targets[t] for t in data.task_names], dim=1)


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--method", default="upgrad", help="sum, uw, upgrad, mgda@repr, ... (default: upgrad)"
    )
    parser.add_argument("--tasks", type=int, default=3, help="default: 3")
    parser.add_argument("--rows", type=int, default=1000, help="default: 1000")
    parser.add_argument("--epochs", type=int, default=10, help="default: 10")
    parser.add_argument("--batch-size", type=int, default=32, help="default: 32")
    parser.add_argument("--seed", type=int, default=0, help="default: 0")
    args = parser.parse_args(argv)
    L.seed_everything(args.seed, verbose=False)

    # the held-out rows are a fresh draw of the same problem
    train = pt.make_hetero(args.rows, args.tasks, seed=args.seed)
    test = pt.make_hetero(args.rows, args.tasks, seed=args.seed + 1)
    loader = DataLoader(TensorDataset(*as_tensors(train)), args.batch_size, shuffle=True)
    module = MultiTaskRegressor(train.task_names, args.method)
    trainer = L.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, loader)

    scores = module.mse(*as_tensors(test))
    print(f"{args.method}: held-out MSE " + ", ".join(f"{t} {v:.3f}" for t, v in scores.items()))
    return scores


if __name__ == "__main__":
    main()
