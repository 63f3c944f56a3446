"""Each baseline of the paper's Table 2 checked on its defining mechanism."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from esmm.baselines import (DivisionLoss, DivisionTowers, InversePropensityLoss,
                            NegativeSamplingLoss, OversampledClickedLoss, aman_mask,
                            division_probabilities, oversampling_weights, unbias_weights)
from esmm.data import Batch, load_split
from esmm.losses import ClickedOnlyLoss
from esmm.model import SeparateTowers
from esmm.registry import (AMAN_RATES_PERCENT, OVERSAMPLING_COPIES, get_model_spec)

from conftest import TINY_MODEL


def _batch(click: list[float], conversion: list[float]) -> Batch:
    n = len(click)
    return Batch(cat=torch.zeros(n, 0, dtype=torch.int64), bag_ids=torch.zeros(0, dtype=torch.int64),
                 bag_offsets=torch.zeros(0, dtype=torch.int64), bag_weights=torch.zeros(0),
                 dense=torch.zeros(n, 0), click=torch.tensor(click, dtype=torch.float32),
                 conversion=torch.tensor(conversion, dtype=torch.float32))


def _cvr_grad(objective, batch: Batch, ctr: torch.Tensor | None = None) -> torch.Tensor:
    n = len(batch)
    cvr = torch.linspace(-2, 2, n).requires_grad_(True)
    loss, _ = objective({"ctr": torch.zeros(n) if ctr is None else ctr, "cvr": cvr}, batch)
    loss.backward()
    return cvr.grad


# --------------------------------------------------------------------------- AMAN


@pytest.mark.parametrize("rate", [0.1, 0.2, 0.5])
def test_aman_sees_unclicked_impressions_as_negatives_at_the_chosen_rate(rate: float) -> None:
    torch.manual_seed(0)
    n = 4000
    click = (torch.arange(n) % 10 == 0).float()  # 10% clicked
    batch = _batch(click.tolist(), (click * (torch.arange(n) % 20 == 0).float()).tolist())
    seen, draws = 0, 50
    for _ in range(draws):
        grad = _cvr_grad(NegativeSamplingLoss(rate), batch)
        used = grad != 0
        assert used[click == 1].all(), "every clicked row stays in the CVR loss"
        seen += int(used[click == 0].sum())
    frac = seen / (draws * int((click == 0).sum()))
    assert frac == pytest.approx(rate, abs=0.01)


def test_aman_at_100_percent_is_bce_over_every_impression_and_is_reproducible() -> None:
    batch = _batch([1, 0, 1, 0, 0], [1, 0, 0, 0, 0])
    cvr = torch.tensor([0.5, 2.0, -1.0, 0.3, -3.0])
    loss, parts = NegativeSamplingLoss(1.0)({"ctr": torch.zeros(5), "cvr": cvr}, batch)
    expected = F.binary_cross_entropy_with_logits(cvr, batch.conversion)
    assert parts["cvr"] == pytest.approx(float(expected), rel=1e-6)
    torch.manual_seed(3)
    a = aman_mask(torch.zeros(1000), 0.2)
    torch.manual_seed(3)
    assert torch.equal(a, aman_mask(torch.zeros(1000), 0.2))
    with pytest.raises(ValueError):
        NegativeSamplingLoss(0.0)


# --------------------------------------------------------------------------- OVERSAMPLING


@pytest.mark.parametrize("k", OVERSAMPLING_COPIES)
def test_oversampling_equals_the_clicked_only_loss_on_positives_copied_k_times(k: int) -> None:
    click, conv = [1, 1, 0, 1, 0, 1], [1, 0, 0, 0, 0, 1]
    batch = _batch(click, conv)
    cvr = torch.tensor([0.5, -1.0, 4.0, 0.2, -4.0, 1.5])
    _, parts = OversampledClickedLoss(k)({"ctr": torch.zeros(6), "cvr": cvr}, batch)
    # the data set BASE would see with each converted click copied k times
    rows = [i for i, c in enumerate(click) if c for _ in range(k if conv[i] else 1)]
    copied = F.binary_cross_entropy_with_logits(cvr[rows], torch.tensor(conv, dtype=torch.float32)[rows])
    assert parts["cvr"] == pytest.approx(float(copied), rel=1e-6)
    w = oversampling_weights(batch.click, batch.conversion, k)
    assert w.tolist() == [k, 1, 0, 1, 0, k]
    grad = _cvr_grad(OversampledClickedLoss(k), batch)
    assert grad[2] == 0 and grad[4] == 0  # unclicked rows take no part


def test_oversampling_with_one_copy_is_base() -> None:
    batch = _batch([1, 0, 1, 1], [1, 0, 0, 1])
    out = {"ctr": torch.tensor([0.1, -0.2, 0.3, 0.0]), "cvr": torch.tensor([1.0, 2.0, -1.0, 0.5])}
    assert OversampledClickedLoss(1)(out, batch)[0].item() == pytest.approx(
        ClickedOnlyLoss()(out, batch)[0].item(), rel=1e-6)


# --------------------------------------------------------------------------- UNBIAS


def test_unbias_weights_follow_one_over_pctr_and_leave_the_ctr_network_alone() -> None:
    p_ctr = torch.tensor([0.5, 0.1, 0.02, 0.001, 0.3])
    logit = torch.logit(p_ctr)
    click = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0])
    w = unbias_weights(logit, click, min_ctr=0.01)
    np.testing.assert_allclose(w.numpy(), [2.0, 10.0, 50.0, 100.0, 0.0], rtol=1e-5)  # 0.001 -> 0.01
    # the CVR gradient of each clicked row is proportional to its weight
    batch = _batch(click.tolist(), [1, 0, 1, 0, 0])
    ctr = logit.clone().requires_grad_(True)
    cvr = torch.zeros(5, requires_grad=True)
    loss, _ = InversePropensityLoss(0.01)({"ctr": ctr, "cvr": cvr}, batch)
    loss.backward()
    per_row = (torch.sigmoid(cvr) - batch.conversion).detach()  # d BCE / d logit
    np.testing.assert_allclose(cvr.grad.numpy(), (w * per_row / w.sum()).numpy(), rtol=1e-5)
    # pCTR is detached: the CTR logit's gradient is the CTR term's alone
    expected_ctr_grad = (torch.sigmoid(logit) - click) / 5
    np.testing.assert_allclose(ctr.grad.numpy(), expected_ctr_grad.numpy(), rtol=1e-5, atol=1e-7)


def test_unbias_with_constant_pctr_is_base() -> None:
    batch = _batch([1, 0, 1, 1], [1, 0, 0, 1])
    out = {"ctr": torch.full((4,), -2.0), "cvr": torch.tensor([1.0, 2.0, -1.0, 0.5])}
    assert InversePropensityLoss()(out, batch)[0].item() == pytest.approx(
        ClickedOnlyLoss()(out, batch)[0].item(), rel=1e-6)


# --------------------------------------------------------------------------- DIVISION


def test_division_pcvr_is_pctcvr_over_pctr_clipped_to_one() -> None:
    ctr = torch.tensor([0.0, -2.0, 1.0, -3.0, -120.0, 3.0])
    ctcvr = torch.tensor([-2.0, -4.0, 2.0, -3.0, -110.0, -200.0])
    p = division_probabilities({"ctr": ctr, "ctcvr": ctcvr})
    p_ctr, p_ctcvr = torch.sigmoid(ctr.double()), torch.sigmoid(ctcvr.double())
    ratio = p_ctcvr / p_ctr
    assert ((p["p_cvr"] >= 0) & (p["p_cvr"] <= 1)).all() and torch.isfinite(p["p_cvr"]).all()
    below = ratio < 1
    np.testing.assert_allclose(p["p_cvr"][below].double().numpy(), ratio[below].numpy(), rtol=1e-5,
                               atol=1e-30)  # e^-200 underflows float32 to 0
    assert (p["p_cvr"][~below] == 1).all()  # pCTCVR >= pCTR: clipped
    torch.testing.assert_close(p["p_ctcvr"], p["p_ctr"] * p["p_cvr"])


def test_division_trains_ctr_and_ctcvr_networks_independently(tiny_world) -> None:
    split = load_split(tiny_world, "train")
    torch.manual_seed(0)
    model = DivisionTowers(split.schema, TINY_MODEL)
    batch = split.batch(slice(0, 256))
    out = model(batch)
    assert set(out) == {"ctr", "ctcvr"}
    loss, parts = DivisionLoss()(out, batch)
    expected = (F.binary_cross_entropy_with_logits(out["ctr"], batch.click)
                + F.binary_cross_entropy_with_logits(out["ctcvr"], batch.conversion))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6) and set(parts) == {"ctr", "ctcvr"}
    model.zero_grad()
    F.binary_cross_entropy_with_logits(out["ctcvr"], batch.conversion).backward()
    assert all(p.grad is None or not p.grad.to_dense().any()
               for p in [*model.ctr_tower.parameters(), *model.ctr_embedding.parameters()])


# --------------------------------------------------------------------------- registry


@pytest.mark.parametrize("name", ["aman", "oversampling", "unbias", "division",
                                  *(f"aman-r{r}" for r in AMAN_RATES_PERCENT),
                                  *(f"oversampling-k{k}" for k in OVERSAMPLING_COPIES)])
def test_every_baseline_is_a_registered_model_with_valid_probabilities(tiny_world, name) -> None:
    spec = get_model_spec(name)
    split = load_split(tiny_world, "valid")
    torch.manual_seed(0)
    model = spec.build(split.schema, TINY_MODEL)
    if name != "division":  # the same CTR network beside a CVR network, as BASE
        assert isinstance(model, SeparateTowers)
    batch = split.batch(slice(0, 128))
    out = model(batch)
    p = spec.probabilities(out)
    for k in ("p_ctr", "p_cvr", "p_ctcvr"):
        assert p[k].shape == (128,) and ((p[k] >= 0) & (p[k] <= 1)).all()
    torch.testing.assert_close(p["p_ctcvr"], p["p_ctr"] * p["p_cvr"])
    loss, _ = spec.objective(out, batch)
    loss.backward()
    assert torch.isfinite(loss)


def test_search_candidates_carry_their_setting() -> None:
    assert get_model_spec("aman-r20").objective == NegativeSamplingLoss(0.2)
    assert get_model_spec("oversampling-k5").objective == OversampledClickedLoss(5)
