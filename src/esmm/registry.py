"""The named models: each pairs a network with an objective.

A new model is one :class:`ModelSpec` here; the trainer, evaluator, predictor
and CLI look models up by name and never branch on their type.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from esmm.baselines import (DivisionLoss, DivisionTowers, InversePropensityLoss,
                            NegativeSamplingLoss, OversampledClickedLoss, division_probabilities)
from esmm.config import ConfigError, ModelConfig
from esmm.losses import ClickedOnlyLoss, ClickLoss, EntireSpaceLoss, Objective, Outputs
from esmm.model import ClickNetwork, SeparateTowers, SharedTowers

#: What a model scores, in column order.
SCORE_COLUMNS = ("p_ctr", "p_cvr", "p_ctcvr")
from esmm.schema import Schema


def product_probabilities(outputs: Outputs) -> dict[str, torch.Tensor]:
    """pCTR, pCVR and pCTCVR = pCTR * pCVR from the two named logits."""
    p_ctr = torch.sigmoid(outputs["ctr"])
    p_cvr = torch.sigmoid(outputs["cvr"])
    return {"p_ctr": p_ctr, "p_cvr": p_cvr, "p_ctcvr": p_ctr * p_cvr}


def click_probabilities(outputs: Outputs) -> dict[str, torch.Tensor]:
    """pCTR alone (the CTR network of the paper's protocol has no pCVR)."""
    return {"p_ctr": torch.sigmoid(outputs["ctr"])}


@dataclass(frozen=True)
class ModelSpec:
    """A named model.

    ``reference_ctr``: in ``esmm compare``, this model's pCTCVR is taken as the
    pCTR of one independently trained CTR network (model ``ctr``, same seed)
    times its own pCVR, and it early-stops on valid ``cvr_auc`` -- the paper's
    protocol for non-ESMM models, which keeps their CTCVR AUCs comparable.
    ESMM and ESMM-NS learn pCTR as part of their own loss and keep it.
    """

    name: str
    description: str
    build: Callable[[Schema, ModelConfig], nn.Module]
    objective: Objective
    probabilities: Callable[[Outputs], dict[str, torch.Tensor]] = field(
        default=product_probabilities)
    outputs: tuple[str, ...] = SCORE_COLUMNS
    reference_ctr: bool = False


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("esmm", "ESMM: shared embeddings, CTR and CVR towers, loss on CTR and CTCVR "
                  "over all impressions", SharedTowers, EntireSpaceLoss()),
        ModelSpec("esmm-ns", "ESMM without sharing: each tower has its own embedding tables",
                  SeparateTowers, EntireSpaceLoss()),
        ModelSpec("base", "BASE: CVR network trained on clicked impressions only, plus its own "
                  "CTR network for pCTCVR", SeparateTowers, ClickedOnlyLoss(),
                  reference_ctr=True),
        ModelSpec("ctr", "a CTR network alone (own embeddings, one tower, BCE on clicks): the "
                  "independent pCTR that esmm compare pairs non-ESMM models with",
                  ClickNetwork, ClickLoss(), click_probabilities, outputs=("p_ctr",)),
    )
}


# --- the paper's other baselines (esmm.baselines, docs/baselines.md) -------------------------
# AMAN and OVERSAMPLING have a rate the paper searches on held-out data; each candidate is a
# model of its own name (``aman-r20``: 20% of unclicked impressions as CVR negatives;
# ``oversampling-k5``: positives counted 5 times), so a run directory reloads from its name
# alone. ``aman`` and ``oversampling`` are the defaults ``esmm train`` gets; ``esmm compare``
# searches the candidates (esmm.compare.SEARCH_SPACES) instead.

AMAN_RATES_PERCENT = (10, 20, 50, 100)
OVERSAMPLING_COPIES = (2, 3, 5, 10)
DEFAULT_AMAN_RATE_PERCENT = 10
DEFAULT_OVERSAMPLING_COPIES = 3


def make_aman_spec(rate_percent: int, name: str | None = None) -> ModelSpec:
    return ModelSpec(name or f"aman-r{rate_percent}",
                     f"AMAN: BASE plus unclicked impressions as CVR negatives, sampled at "
                     f"{rate_percent}%", SeparateTowers,
                     NegativeSamplingLoss(rate_percent / 100.0), reference_ctr=True)


def make_oversampling_spec(copies: int, name: str | None = None) -> ModelSpec:
    return ModelSpec(name or f"oversampling-k{copies}",
                     f"OVERSAMPLING: BASE with each converted click counted {copies} times",
                     SeparateTowers, OversampledClickedLoss(copies), reference_ctr=True)


MODELS.update({
    spec.name: spec
    for spec in (
        make_aman_spec(DEFAULT_AMAN_RATE_PERCENT, name="aman"),
        *(make_aman_spec(r) for r in AMAN_RATES_PERCENT),
        make_oversampling_spec(DEFAULT_OVERSAMPLING_COPIES, name="oversampling"),
        *(make_oversampling_spec(k) for k in OVERSAMPLING_COPIES),
        ModelSpec("unbias", "UNBIAS: BASE's clicked-only CVR loss reweighted by 1/pCTR (own CTR "
                  "network) to the entire space", SeparateTowers, InversePropensityLoss(),
                  reference_ctr=True),
        ModelSpec("division", "DIVISION: separate CTR and CTCVR networks; pCVR = pCTCVR / pCTR "
                  "clipped to [0, 1]", DivisionTowers, DivisionLoss(), division_probabilities,
                  reference_ctr=True),
    )
})


def get_model_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; choose from {sorted(MODELS)}") from None
