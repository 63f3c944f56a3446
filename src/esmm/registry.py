"""The named models: each pairs a network with an objective.

A new model is one :class:`ModelSpec` here; the trainer, evaluator, predictor
and CLI look models up by name and never branch on their type.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from esmm.config import ConfigError, ModelConfig
from esmm.losses import ClickedOnlyLoss, EntireSpaceLoss, Objective, Outputs
from esmm.model import SeparateTowers, SharedTowers
from esmm.schema import Schema


def product_probabilities(outputs: Outputs) -> dict[str, torch.Tensor]:
    """pCTR, pCVR and pCTCVR = pCTR * pCVR from the two named logits."""
    p_ctr = torch.sigmoid(outputs["ctr"])
    p_cvr = torch.sigmoid(outputs["cvr"])
    return {"p_ctr": p_ctr, "p_cvr": p_cvr, "p_ctcvr": p_ctr * p_cvr}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    build: Callable[[Schema, ModelConfig], nn.Module]
    objective: Objective
    probabilities: Callable[[Outputs], dict[str, torch.Tensor]] = field(
        default=product_probabilities)


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("esmm", "ESMM: shared embeddings, CTR and CVR towers, loss on CTR and CTCVR "
                  "over all impressions", SharedTowers, EntireSpaceLoss()),
        ModelSpec("esmm-ns", "ESMM without sharing: each tower has its own embedding tables",
                  SeparateTowers, EntireSpaceLoss()),
        ModelSpec("base", "BASE: CVR network trained on clicked impressions only, plus its own "
                  "CTR network for pCTCVR", SeparateTowers, ClickedOnlyLoss()),
    )
}


def get_model_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; choose from {sorted(MODELS)}") from None
