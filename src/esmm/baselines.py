"""The ESMM paper's other baselines (Table 2): AMAN, OVERSAMPLING, UNBIAS, DIVISION.

Each is an objective (and, for DIVISION, a network) with the same embedding and
tower sizes as ESMM; ``esmm.registry`` pairs them into named models. As in the
paper's protocol, every non-ESMM model gets pCTCVR = pCTR x pCVR from its own,
independently trained CTR network of the same structure: AMAN, OVERSAMPLING and
UNBIAS use :class:`esmm.model.SeparateTowers` (own embeddings and tower per
task; the CTR half sees only ``BCE(pCTR, click)`` over all impressions, so it
is the same CTR network BASE trains) and differ from BASE only in the CVR term.

How each CVR term reads the paper (see docs/baselines.md):

* AMAN (all missing as negative, Pan et al. 2008): unclicked impressions join
  the CVR loss as non-conversions, each kept with probability ``rate`` (a fresh
  Bernoulli draw per row per step from torch's global RNG, which
  ``esmm.training.set_seed`` seeds, so a run is reproducible).
* OVERSAMPLING: converted clicked rows count ``copies`` times in the
  clicked-only CVR loss, normalised by the weighted count. In expectation this
  is the clicked-only loss over a data set with every positive copied ``copies``
  times; the copies just share a mini-batch instead of being scattered.
* UNBIAS (Zadrozny 2004, which the paper follows): the clicked sample is
  reweighted to the entire space with importance weight 1 / pCTR (pCTR from the
  model's own CTR network, detached, floored at ``min_ctr``), self-normalised
  within the batch. Rejection sampling with acceptance ``min_ctr / pCTR`` has
  the same expected loss; weighting keeps every click's gradient and adds no
  sampling noise.
* DIVISION: a CTR network and a CTCVR network, each trained by BCE over all
  impressions; pCVR = pCTCVR / pCTR clipped to [0, 1] (computed in log space).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from esmm.config import ModelConfig
from esmm.data import Batch, EncodedSplit
from esmm.losses import Outputs
from esmm.model import FeatureEmbedding, Tower, fit_model_inputs
from esmm.schema import Schema

__all__ = ["NegativeSamplingLoss", "OversampledClickedLoss", "InversePropensityLoss",
           "DivisionTowers", "DivisionLoss", "division_probabilities", "aman_mask",
           "oversampling_weights", "unbias_weights"]


def _ctr_term(outputs: Outputs, batch: Batch) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(outputs["ctr"], batch.click)


def _weighted_cvr_term(outputs: Outputs, batch: Batch, weights: torch.Tensor) -> torch.Tensor:
    """sum(w * BCE(pCVR, conversion)) / sum(w); 0 for a batch whose weights are all 0."""
    per_row = F.binary_cross_entropy_with_logits(outputs["cvr"], batch.conversion,
                                                 reduction="none")
    return (per_row * weights).sum() / weights.sum().clamp_min(1e-12)


# --------------------------------------------------------------------------- AMAN


def aman_mask(click: torch.Tensor, rate: float,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """1 for every clicked row and for each unclicked row kept with probability ``rate``.

    [B] float32. Draws from ``generator`` (torch's global RNG when None).
    """
    if rate >= 1.0:
        return torch.ones_like(click)
    keep = torch.rand(click.shape, generator=generator) < rate
    return torch.where(click > 0, torch.ones_like(click), keep.to(click.dtype))


@dataclass(frozen=True)
class NegativeSamplingLoss:
    """AMAN: BCE(pCTR, click) + BCE(pCVR, conversion) on clicked rows plus sampled unclicked rows.

    Unclicked rows carry conversion 0, so each sampled one is a CVR negative.
    """

    rate: float

    def __post_init__(self) -> None:
        if not 0.0 < self.rate <= 1.0:
            raise ValueError("AMAN sampling rate must be in (0, 1]")

    def __call__(self, outputs: Outputs, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        ctr = _ctr_term(outputs, batch)
        cvr = _weighted_cvr_term(outputs, batch, aman_mask(batch.click, self.rate))
        return ctr + cvr, {"ctr": float(ctr.detach()), "cvr": float(cvr.detach())}


# --------------------------------------------------------------------------- OVERSAMPLING


def oversampling_weights(click: torch.Tensor, conversion: torch.Tensor,
                         copies: int) -> torch.Tensor:
    """Per-row CVR weight: ``copies`` for a converted click, 1 for another click, 0 unclicked."""
    return click * (1.0 + (copies - 1) * conversion)


@dataclass(frozen=True)
class OversampledClickedLoss:
    """OVERSAMPLING: BASE's clicked-only CVR loss with each positive counted ``copies`` times."""

    copies: int

    def __post_init__(self) -> None:
        if self.copies < 1:
            raise ValueError("OVERSAMPLING copies must be >= 1")

    def __call__(self, outputs: Outputs, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        ctr = _ctr_term(outputs, batch)
        w = oversampling_weights(batch.click, batch.conversion, self.copies)
        cvr = _weighted_cvr_term(outputs, batch, w)
        return ctr + cvr, {"ctr": float(ctr.detach()), "cvr": float(cvr.detach())}


# --------------------------------------------------------------------------- UNBIAS


def unbias_weights(ctr_logit: torch.Tensor, click: torch.Tensor,
                   min_ctr: float = 0.01) -> torch.Tensor:
    """Importance weight of each clicked row, ``1 / max(pCTR, min_ctr)``; 0 unclicked.

    pCTR is detached: the weights steer the CVR network, not the CTR one.
    """
    p_ctr = torch.sigmoid(ctr_logit.detach()).clamp_min(min_ctr)
    return click / p_ctr


@dataclass(frozen=True)
class InversePropensityLoss:
    """UNBIAS: BCE(pCTR, click) + the clicked-only CVR loss reweighted by 1 / pCTR.

    A click seen with propensity pCTR stands for 1 / pCTR impressions of the
    entire space, so the weighted clicked sample fits the distribution pCVR is
    served on. ``min_ctr`` bounds the weights (at most 1 / min_ctr), the usual
    clipping that keeps a few near-zero propensities from dominating.
    """

    min_ctr: float = 0.01

    def __post_init__(self) -> None:
        if not 0.0 < self.min_ctr <= 1.0:
            raise ValueError("UNBIAS min_ctr must be in (0, 1]")

    def __call__(self, outputs: Outputs, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        ctr = _ctr_term(outputs, batch)
        w = unbias_weights(outputs["ctr"], batch.click, self.min_ctr)
        cvr = _weighted_cvr_term(outputs, batch, w)
        return ctr + cvr, {"ctr": float(ctr.detach()), "cvr": float(cvr.detach())}


# --------------------------------------------------------------------------- DIVISION


class DivisionTowers(nn.Module):
    """DIVISION: a CTR network and a CTCVR network, each with its own embedding tables.

    Output: ``{"ctr": [B], "ctcvr": [B]}`` logits. There is no CVR logit:
    pCVR exists only as the quotient, see :func:`division_probabilities`.
    """

    def __init__(self, schema: Schema, cfg: ModelConfig) -> None:
        super().__init__()
        self.ctr_embedding = FeatureEmbedding(schema, cfg)
        self.ctcvr_embedding = FeatureEmbedding(schema, cfg)
        self.ctr_tower = Tower(self.ctr_embedding.out_dim, cfg.tower, cfg.dropout)
        self.ctcvr_tower = Tower(self.ctcvr_embedding.out_dim, cfg.tower, cfg.dropout)
        self.output_bias_init = cfg.output_bias_init

    def fit_inputs(self, split: EncodedSplit) -> None:
        fit_model_inputs(self, [self.ctr_embedding, self.ctcvr_embedding], split,
                         self.output_bias_init)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        return {"ctr": self.ctr_tower(self.ctr_embedding(batch)),
                "ctcvr": self.ctcvr_tower(self.ctcvr_embedding(batch))}


@dataclass(frozen=True)
class DivisionLoss:
    """BCE(pCTR, click) + BCE(pCTCVR, click AND conversion), two independent networks."""

    def __call__(self, outputs: Outputs, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        ctr = _ctr_term(outputs, batch)
        # batch.conversion is 0 wherever click is 0: it is the click-and-conversion label
        ctcvr = F.binary_cross_entropy_with_logits(outputs["ctcvr"], batch.conversion)
        return ctr + ctcvr, {"ctr": float(ctr.detach()), "ctcvr": float(ctcvr.detach())}


def division_probabilities(outputs: Outputs) -> dict[str, torch.Tensor]:
    """pCVR = clip(pCTCVR / pCTR, 0, 1); the reported pCTCVR is pCTR x pCVR = min(pCTCVR, pCTR).

    The quotient is taken in log space (``logsigmoid(ctcvr) - logsigmoid(ctr)``),
    so a pCTR that underflows to 0 in float32 gives no 0/0.
    """
    log_cvr = (F.logsigmoid(outputs["ctcvr"]) - F.logsigmoid(outputs["ctr"])).clamp_max(0.0)
    p_ctr = torch.sigmoid(outputs["ctr"])
    p_cvr = torch.exp(log_cvr)
    return {"p_ctr": p_ctr, "p_cvr": p_cvr, "p_ctcvr": p_ctr * p_cvr}
