"""Objectives: how a model's named logits and a batch become one loss.

The ESMM loss needs BCE on pCTCVR = sigmoid(a) * sigmoid(b). Computing the
product and feeding it to ``BCELoss`` (with an epsilon to dodge log(0)) is the
bug found elsewhere: it saturates, biases, and goes to inf/NaN at large
logits. Here both log-probabilities come straight from the logits:

    log p      = -softplus(-a) - softplus(-b)
    log (1-p)  = logsumexp(-a, -b, -a-b) - softplus(-a) - softplus(-b)

(because 1 - s(a)s(b) = (e^-a + e^-b + e^-a e^-b) / ((1+e^-a)(1+e^-b))),
exact and finite for every finite pair of logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch.nn import functional as F

from esmm.data import Batch

Outputs = dict[str, torch.Tensor]


def log_ctcvr(ctr_logit: torch.Tensor, cvr_logit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log pCTCVR, log(1 - pCTCVR)) from the two logits, stable for any magnitude."""
    na, nb = -ctr_logit, -cvr_logit
    log_p = -F.softplus(na) - F.softplus(nb)
    log_not_p = torch.logsumexp(torch.stack([na, nb, na + nb]), dim=0) - F.softplus(na) - F.softplus(nb)
    return log_p, log_not_p


def ctcvr_bce(ctr_logit: torch.Tensor, cvr_logit: torch.Tensor, target: torch.Tensor,
              reduction: str = "mean") -> torch.Tensor:
    """Binary cross-entropy of pCTCVR = sigmoid(ctr) * sigmoid(cvr) against ``target``."""
    log_p, log_not_p = log_ctcvr(ctr_logit, cvr_logit)
    loss = -(target * log_p + (1.0 - target) * log_not_p)
    return loss.mean() if reduction == "mean" else loss.sum() if reduction == "sum" else loss


class Objective(Protocol):
    """Turns named logits into (loss, named loss parts for logging)."""

    def __call__(self, outputs: Outputs, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]: ...


@dataclass(frozen=True)
class EntireSpaceLoss:
    """ESMM: BCE(pCTR, click) + BCE(pCTCVR, click AND conversion) over all impressions.

    pCVR gets no direct supervision; its gradient arrives only through pCTCVR.
    """

    ctcvr_weight: float = 1.0

    def __call__(self, outputs: Outputs, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        ctr = F.binary_cross_entropy_with_logits(outputs["ctr"], batch.click)
        # batch.conversion is already 0 wherever click is 0, so it *is* click AND conversion
        ctcvr = ctcvr_bce(outputs["ctr"], outputs["cvr"], batch.conversion)
        return ctr + self.ctcvr_weight * ctcvr, {"ctr": float(ctr.detach()), "ctcvr": float(ctcvr.detach())}


@dataclass(frozen=True)
class ClickedOnlyLoss:
    """BASE: CTR on all impressions, CVR on clicked impressions only.

    The CVR term is averaged over the clicked rows of the batch, exactly as a
    CVR model trained on a clicked-only data set would see them.
    """

    def __call__(self, outputs: Outputs, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        ctr = F.binary_cross_entropy_with_logits(outputs["ctr"], batch.click)
        per_row = F.binary_cross_entropy_with_logits(outputs["cvr"], batch.conversion,
                                                      reduction="none")
        n_clicked = batch.click.sum()
        cvr = (per_row * batch.click).sum() / n_clicked.clamp_min(1.0)
        return ctr + cvr, {"ctr": float(ctr.detach()), "cvr": float(cvr.detach())}


@dataclass(frozen=True)
class ClickLoss:
    """A CTR network alone: BCE(pCTR, click) over all impressions."""

    def __call__(self, outputs: Outputs, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        ctr = F.binary_cross_entropy_with_logits(outputs["ctr"], batch.click)
        return ctr, {"ctr": float(ctr.detach())}
