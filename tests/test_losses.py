from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from esmm.losses import ClickedOnlyLoss, EntireSpaceLoss, ctcvr_bce, log_ctcvr


def _reference_bce(a: torch.Tensor, b: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # float64 closed form, only trustworthy where the product is not saturated
    p = torch.sigmoid(a.double()) * torch.sigmoid(b.double())
    return -(y * torch.log(p) + (1 - y) * torch.log1p(-p))


def test_ctcvr_bce_matches_closed_form_in_the_normal_range() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(1000, generator=g) * 4, torch.randn(1000, generator=g) * 4
    y = (torch.rand(1000, generator=g) < 0.3).float()
    got = ctcvr_bce(a, b, y, reduction="none").double()
    torch.testing.assert_close(got, _reference_bce(a, b, y), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("a,b", [(50, 50), (-50, -50), (50, -50), (-50, 50), (100, 100), (-100, 0)])
@pytest.mark.parametrize("y", [0.0, 1.0])
def test_loss_finite_with_finite_gradient_at_extreme_logits(a: float, b: float, y: float) -> None:
    ta = torch.tensor([float(a)], requires_grad=True)
    tb = torch.tensor([float(b)], requires_grad=True)
    loss = ctcvr_bce(ta, tb, torch.tensor([y]))
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(ta.grad).all() and torch.isfinite(tb.grad).all()


def test_extreme_logits_give_the_right_loss_values() -> None:
    # both towers certain of a conversion that happened: loss ~ 0
    assert float(ctcvr_bce(torch.tensor([50.0]), torch.tensor([50.0]), torch.tensor([1.0]))) < 1e-15
    # certain of a conversion that did not happen: loss ~ -log(1 - p) with 1 - p ~ 2e-22
    v = float(ctcvr_bce(torch.tensor([50.0]), torch.tensor([50.0]), torch.tensor([0.0])))
    assert v == pytest.approx(-np.log(2 * np.exp(-50.0)), rel=1e-5)
    # certain of no click, label 1: loss ~ 50 (not clipped at -log(eps) like epsilon hacks)
    v = float(ctcvr_bce(torch.tensor([-50.0]), torch.tensor([0.0]), torch.tensor([1.0])))
    assert v == pytest.approx(50.0 + np.log(2.0), rel=1e-5)


def test_log_probabilities_are_consistent() -> None:
    a, b = torch.linspace(-30, 30, 61), torch.linspace(30, -30, 61)
    log_p, log_not_p = log_ctcvr(a, b)
    total = torch.exp(log_p.double()) + torch.exp(log_not_p.double())
    torch.testing.assert_close(total, torch.ones_like(total), rtol=1e-6, atol=1e-6)


def _batch(click: list[float], conversion: list[float]):  # noqa: ANN202
    from esmm.data import Batch

    n = len(click)
    return Batch(cat=torch.zeros(n, 0, dtype=torch.long), bag_ids=torch.zeros(0, dtype=torch.long),
                 bag_offsets=torch.zeros(0, dtype=torch.long), bag_weights=torch.zeros(0),
                 dense=torch.zeros(n, 0), click=torch.tensor(click, dtype=torch.float32),
                 conversion=torch.tensor(conversion, dtype=torch.float32))


def test_entire_space_loss_is_ctr_bce_plus_ctcvr_bce() -> None:
    batch = _batch([1, 0, 1, 0], [1, 0, 0, 0])
    ctr, cvr = torch.tensor([0.3, -1.0, 2.0, 0.1]), torch.tensor([1.0, 0.5, -2.0, 3.0])
    loss, parts = EntireSpaceLoss()({"ctr": ctr, "cvr": cvr}, batch)
    expected = F.binary_cross_entropy_with_logits(ctr, batch.click) + \
        _reference_bce(ctr, cvr, batch.conversion).mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    assert set(parts) == {"ctr", "ctcvr"}


def test_clicked_only_loss_ignores_unclicked_rows_for_cvr() -> None:
    batch = _batch([1, 0, 1, 0], [1, 0, 0, 0])
    ctr = torch.zeros(4)
    cvr = torch.tensor([1.0, 9.0, -2.0, -9.0], requires_grad=True)
    loss, _ = ClickedOnlyLoss()({"ctr": ctr, "cvr": cvr}, batch)
    loss.backward()
    assert cvr.grad[1] == 0 and cvr.grad[3] == 0
    clicked = F.binary_cross_entropy_with_logits(cvr[[0, 2]].detach(), torch.tensor([1.0, 0.0]))
    ctr_part = F.binary_cross_entropy_with_logits(ctr, batch.click)
    assert loss.item() == pytest.approx(float(clicked + ctr_part), rel=1e-6)
