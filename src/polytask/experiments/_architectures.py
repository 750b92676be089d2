"""The experiments that compare sharing architectures (``--models``): census and relatedness."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ._census import CensusExperiment
from ._relatedness import RelatednessExperiment

ARCHITECTURE_EXPERIMENTS: Mapping[str, Callable[..., Any]] = {
    "census": CensusExperiment,
    "relatedness": RelatednessExperiment,
}
"""Experiment name -> its class; each compares ``model/method`` labels (``--models``)."""

ARCHITECTURE_DESCRIPTIONS: Mapping[str, str] = {
    "census": "Adult census: income > 50K and never married (marital status removed); "
    "shared-bottom, MMoE, CGC, PLE, cross-stitch, DSelect-k vs single-task networks, logistic "
    "regression and gradient boosting; test AUC (--data-dir adult/)",
    "relatedness": "MMoE paper's synthetic two-task regression at task correlations 1, 0.9, "
    "0.5: shared-bottom vs MMoE vs CGC; test MSE vs the noiseless targets",
}
