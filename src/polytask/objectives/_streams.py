"""Random draws of a method from a generator of its own, never from the global RNG.

torchjd's random methods (PCGrad's and GradVac's shuffles, RLW's weights) draw from the
global CPU generator, which dropout draws from too. Here each such method owns a generator,
seeded once per fit and lent to torchjd for the call, so that

- the method neither reads nor advances the global RNG: two methods under one seed see the
  same dropout masks, and the caller's RNG is left as it was;
- in a data-parallel fit every process derives the same draws from the fit's seed, while each
  process's dropout draws from a stream of its own (see :meth:`polytask.Trainer.fit`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import torch

T = TypeVar("T")


def stream_seed(seed: int, stream: int) -> int:
    """The seed of stream ``stream`` derived from ``seed`` (independent of ``seed``'s own
    stream, which dropout draws from)."""
    sequence = np.random.SeedSequence(seed % 2**128, spawn_key=(stream,))
    return int(sequence.generate_state(1, np.uint64)[0] >> np.uint64(1))


class RandomStream:
    """Mixin of a method with random draws: :meth:`lend` runs a torchjd call on the method's
    own generator.

    The generator is seeded at the first draw of a fit from ``fit_seed`` (the Trainer sets it
    to its ``seed``) or, in a loop of your own, from ``torch.initial_seed()`` (the last
    ``torch.manual_seed``); :meth:`reset_stream` starts a fresh stream (at every bind).
    """

    stream_key: int = 0x5348_5546
    """Tells this kind of method's stream apart from the fit's own draws."""
    fit_seed: int | None = None
    generator: torch.Generator | None = None

    def reset_stream(self) -> None:
        self.generator = None

    def stream(self) -> torch.Generator:
        """The method's generator (seeded at the first call of a fit)."""
        if self.generator is None:
            base = self.fit_seed if self.fit_seed is not None else torch.initial_seed()
            self.generator = torch.Generator().manual_seed(stream_seed(base, self.stream_key))
        return self.generator

    def lend(self, call: Callable[..., T], *args: Any) -> T:
        """``call(*args)`` with the global CPU generator lent this method's state; the advanced
        state is taken back and the global RNG restored as it was."""
        generator = self.stream()
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.set_state(generator.get_state())
            result = call(*args)
            generator.set_state(torch.random.default_generator.get_state())
        return result


def seed_streams(module: torch.nn.Module, seed: int) -> None:
    """Seed every :class:`RandomStream` in ``module`` (an objective) from the fit's ``seed``."""
    for part in module.modules():
        if isinstance(part, RandomStream):
            part.fit_seed = seed
            part.reset_stream()
