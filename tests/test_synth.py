from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from esmm.data import load_split
from esmm.metrics import auc
from esmm.synth import WorldConfig, make_world


def test_world_hits_its_rates_and_stores_consistent_truth() -> None:
    schema, t = make_world(WorldConfig(rows=200_000, seed=4, click_rate=0.05, conversion_rate=0.2))
    click, conv = t.column("click").to_numpy(), t.column("conversion").to_numpy()
    true_ctr, true_cvr = t.column("true_ctr").to_numpy(), t.column("true_cvr").to_numpy()
    assert click.mean() == pytest.approx(0.05, abs=0.003)
    assert conv[click == 1].mean() == pytest.approx(0.2, abs=0.015)
    assert not (conv & (1 - click)).any()
    # labels really are drawn from the stored propensities
    assert true_ctr.mean() == pytest.approx(click.mean(), rel=0.05)
    assert (true_ctr[click == 1] * 0 + true_cvr[click == 1]).mean() == pytest.approx(
        conv[click == 1].mean(), rel=0.08)
    assert auc(click, true_ctr) > 0.7
    assert schema.has_truth and schema.group == "user_group"


def test_selection_bias_knob_makes_clicked_impressions_unrepresentative() -> None:
    def corr(bias: float) -> float:
        _, t = make_world(WorldConfig(rows=50_000, seed=2, selection_bias=bias))
        return float(np.corrcoef(t.column("true_ctr").to_numpy(), t.column("true_cvr").to_numpy())[0, 1])

    assert corr(0.0) > corr(0.6) > corr(1.0)


def test_same_seed_same_world() -> None:
    a = make_world(WorldConfig(rows=5_000, seed=9))[1]
    b = make_world(WorldConfig(rows=5_000, seed=9))[1]
    assert a.equals(b)


def test_history_field_is_weighted_and_multi_valued(tiny_world) -> None:
    t = pq.read_table(tiny_world / "train.parquet", columns=["user_hist_cats",
                                                             "user_hist_cats_weight"])
    lens = [len(x) for x in t.column("user_hist_cats").to_pylist()[:500]]
    assert np.mean(lens) > 5
    w = np.concatenate([np.asarray(x) for x in t.column("user_hist_cats_weight").to_pylist()[:500]])
    assert (w > 0).all() and len(np.unique(w)) > 1
    split = load_split(tiny_world, "test")
    assert split.true_cvr is not None and split.group is not None
