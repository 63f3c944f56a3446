from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import roc_auc_score

from esmm.metrics import (
    METRIC_ORDER,
    auc,
    calibration,
    evaluate_predictions,
    format_metrics_table,
    gauc,
    higher_is_better,
    log_loss,
    soft_auc,
)


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _gauc_reference(labels, scores, groups) -> float:
    """Slow, obviously-correct GAUC: loop over groups, sklearn per group."""
    total, weight = 0.0, 0.0
    for g in np.unique(groups):
        m = groups == g
        if labels[m].min() == labels[m].max():
            continue
        total += m.sum() * roc_auc_score(labels[m], scores[m])
        weight += m.sum()
    return total / weight if weight else float("nan")


# ----------------------------------------------------------------------------- auc
@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_sklearn_with_ties(seed: int) -> None:
    rng = _rng(seed)
    n = 2000
    y = (rng.random(n) < 0.3).astype(int)
    s = np.round(rng.normal(size=n) + y, 1)  # heavy ties
    assert auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-9)


# float32 scores take the packed-integer sort path, float64 ones np.argsort.
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("seed", range(4))
def test_auc_weighted_matches_sklearn(seed: int, dtype: type) -> None:
    rng = _rng(seed)
    n = 1500
    y = (rng.random(n) < 0.2).astype(float)
    s = np.round(rng.random(n) + 0.3 * y, 2).astype(dtype)
    w = rng.exponential(size=n)
    w[rng.random(n) < 0.1] = 0.0
    assert auc(y, s, w) == pytest.approx(
        roc_auc_score(y, s, sample_weight=w), abs=1e-9
    )


def test_auc_simple_cases() -> None:
    assert auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert auc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == 0.0
    assert auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert auc(np.array([False, True]), [0.2, 0.1]) == 0.0


def test_auc_nan_for_single_class() -> None:
    assert math.isnan(auc([1, 1, 1], [0.1, 0.2, 0.3]))
    assert math.isnan(auc([0, 0], [0.1, 0.2]))
    assert math.isnan(auc([], []))
    # A class present but with zero total weight is as good as absent.
    assert math.isnan(auc([0, 1, 1], [0.1, 0.2, 0.3], weights=[0.0, 1.0, 1.0]))


@pytest.mark.parametrize(
    "labels, scores, weights",
    [
        ([0, 2, 1], [0.1, 0.2, 0.3], None),
        ([0, 0.5, 1], [0.1, 0.2, 0.3], None),
        ([0, np.nan, 1], [0.1, 0.2, 0.3], None),
        ([0, 1, 1], [0.1, np.nan, 0.3], None),
        ([0, 1, 1], [0.1, 0.2], None),
        ([0, 1, 1], [0.1, 0.2, 0.3], [1.0, -1.0, 1.0]),
        ([0, 1, 1], [0.1, 0.2, 0.3], [1.0, 1.0]),
        (np.zeros((2, 2)), np.zeros((2, 2)), None),
    ],
)
def test_auc_rejects_bad_input(labels, scores, weights) -> None:
    with pytest.raises(ValueError):
        auc(labels, scores, weights)


# ----------------------------------------------------------------------------- soft_auc
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("seed", range(3))
def test_soft_auc_matches_sklearn_on_doubled_arrays(seed: int, dtype: type) -> None:
    rng = _rng(seed)
    n = 1000
    p = rng.beta(0.5, 2.0, size=n)
    p[:20] = 0.0
    p[20:40] = 1.0
    s = np.round(p + rng.normal(scale=0.2, size=n), 1).astype(dtype)
    s[40:60] = -s[40:60]  # negative scores exercise the sign handling
    y2 = np.r_[np.ones(n), np.zeros(n)]
    expected = roc_auc_score(y2, np.r_[s, s], sample_weight=np.r_[p, 1 - p])
    assert soft_auc(p, s) == pytest.approx(expected, abs=1e-9)


def test_soft_auc_with_hard_probs_equals_auc() -> None:
    rng = _rng(1)
    y = (rng.random(500) < 0.4).astype(float)
    s = np.round(rng.random(500), 1)
    # With 0/1 probs no example ties with itself, so it is plain AUC.
    assert soft_auc(y, s) == pytest.approx(auc(y, s), abs=1e-12)


def test_soft_auc_oracle_below_one_and_nan_cases() -> None:
    p = np.linspace(0.05, 0.95, 50)
    assert 0.5 < soft_auc(p, p) < 1.0
    assert math.isnan(soft_auc(np.zeros(5), np.arange(5.0)))
    assert math.isnan(soft_auc(np.ones(5), np.arange(5.0)))


@pytest.mark.parametrize("probs", [[0.1, 1.5], [-0.1, 0.5], [np.nan, 0.5]])
def test_soft_auc_rejects_bad_probs(probs) -> None:
    with pytest.raises(ValueError):
        soft_auc(probs, [0.1, 0.2])


# ----------------------------------------------------------------------------- gauc
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("id_span", ["narrow", "hashed"])
@pytest.mark.parametrize("seed", range(2))
def test_gauc_matches_reference(seed: int, id_span: str, dtype: type) -> None:
    rng = _rng(seed)
    n = 2000
    # Non-contiguous, negative and unsorted ids; many tiny groups are single-class.
    ids = np.array([-7, 3, 10, 11, 500, 10**9, 42, 8])
    if id_span == "hashed":  # 64-bit ids force the dense-rank encoding
        ids = np.r_[ids, -(2**62), 2**62]
    groups = rng.choice(np.r_[ids, np.arange(100, 125)], size=n)
    y = (rng.random(n) < 0.25).astype(int)
    s = (np.round(rng.random(n) + 0.2 * y, 1) - 0.5).astype(dtype)
    assert gauc(y, s, groups) == pytest.approx(
        _gauc_reference(y, s, groups), abs=1e-12
    )


def test_gauc_single_group_equals_auc() -> None:
    rng = _rng(5)
    y = (rng.random(400) < 0.5).astype(int)
    s = np.round(rng.random(400), 1)
    assert gauc(y, s, np.zeros(400, dtype=int)) == pytest.approx(auc(y, s), abs=1e-12)


def test_gauc_skips_single_class_groups_and_weights_by_size() -> None:
    y = np.array([0, 1, 1, 1, 0, 0, 1, 0, 1])
    s = np.array([0.1, 0.9, 0.5, 0.5, 0.2, 0.3, 0.1, 0.4, 0.4])
    g = np.array([5, 5, 2, 2, 9, 9, 7, 7, 7])
    # group 5: auc 1 (n=2); group 7: pos {0.1, 0.4} vs neg {0.4} -> 0.25 (n=3)
    # groups 2 and 9 are single-class and skipped.
    assert gauc(y, s, g) == pytest.approx((2 * 1.0 + 3 * 0.25) / 5)


def test_ties_across_signed_zero() -> None:
    y = np.array([1, 0, 1, 0])
    s = np.array([0.0, -0.0, 0.5, -0.5], dtype=np.float32)
    assert auc(y, s) == pytest.approx(roc_auc_score(y, s))
    assert auc(y, s, np.ones(4)) == pytest.approx(roc_auc_score(y, s))
    assert gauc(y, s, np.zeros(4, dtype=int)) == pytest.approx(roc_auc_score(y, s))


def test_gauc_accepts_unsigned_and_bool_groups() -> None:
    y = np.array([0, 1, 1, 0, 1, 0])
    s = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    g = np.array([2**64 - 1, 2**64 - 1, 2**64 - 1, 5, 5, 5], dtype=np.uint64)
    expected = _gauc_reference(y, s, g)
    assert gauc(y, s, g) == pytest.approx(expected)
    assert gauc(y, s, g == 5) == pytest.approx(expected)
    # Extreme int8 ids: their difference does not fit in int8.
    g8 = np.array([-128, -128, -128, 127, 127, 127], dtype=np.int8)
    assert gauc(y, s, g8) == pytest.approx(expected)


def test_gauc_nan_and_bad_input() -> None:
    assert math.isnan(gauc([0, 1], [0.1, 0.2], [1, 2]))
    assert math.isnan(gauc([], [], np.array([], dtype=int)))
    with pytest.raises(ValueError):
        gauc([0, 1], [0.1, 0.2], [0.5, 1.5])
    with pytest.raises(ValueError):
        gauc([0, 1], [0.1, 0.2], [1])
    with pytest.raises(ValueError):
        gauc([0, 3], [0.1, 0.2], [1, 1])


# ----------------------------------------------------------------------------- log_loss / calibration
def test_log_loss_matches_sklearn() -> None:
    rng = _rng(2)
    y = (rng.random(1000) < 0.3).astype(int)
    p = rng.uniform(0.01, 0.99, size=1000)
    assert log_loss(y, p) == pytest.approx(sk_log_loss(y, p), abs=1e-9)


def test_log_loss_clips_and_handles_empty() -> None:
    value = log_loss([1, 0], [0.0, 1.0], eps=1e-7)
    assert value == pytest.approx(-math.log(1e-7), rel=1e-9)
    assert math.isfinite(value)
    assert math.isnan(log_loss([], []))
    with pytest.raises(ValueError):
        log_loss([0, 1], [0.5, 1.5])
    with pytest.raises(ValueError):
        log_loss([0, 2], [0.5, 0.5])


def test_calibration() -> None:
    assert calibration([0, 1, 0, 0], [0.5, 0.5, 0.5, 0.5]) == pytest.approx(2.0)
    assert calibration([1, 1], [0.5, 1.0]) == pytest.approx(0.75)
    assert math.isnan(calibration([0, 0], [0.1, 0.2]))
    assert math.isnan(calibration([], []))


def test_higher_is_better() -> None:
    assert higher_is_better("ctr_auc")
    assert higher_is_better("cvr_auc_entire_truth")
    assert higher_is_better("ctr_gauc")
    assert not higher_is_better("ctcvr_logloss")
    with pytest.raises(ValueError, match="not a metric to optimise"):
        higher_is_better("calibration_cvr")


# ----------------------------------------------------------------------------- evaluate_predictions
def test_cvr_auc_uses_clicked_rows_only() -> None:
    click = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    conversion = np.array([1, 0, 1, 0, 0, 0, 1, 0])  # row 6: conversion without click
    p_cvr = np.array([0.9, 0.2, 0.4, 0.6, 0.95, 0.85, 0.1, 0.05])
    p_ctr = np.full(8, 0.5)
    m = evaluate_predictions(p_ctr, p_cvr, click, conversion)

    clicked = click == 1
    expected = roc_auc_score(conversion[clicked], p_cvr[clicked])
    assert m["cvr_auc"] == pytest.approx(expected)  # 0.75
    # Scoring over all rows (with click-masked labels) would give a different value.
    assert roc_auc_score(conversion * click, p_cvr) != pytest.approx(expected)
    assert m["cvr_logloss"] == pytest.approx(
        sk_log_loss(conversion[clicked], p_cvr[clicked])
    )
    assert m["calibration_cvr"] == pytest.approx(p_cvr[clicked].mean() / 0.5)
    # The unclicked conversion is masked out everywhere.
    assert m["n_conversions"] == 2.0
    assert m["ctcvr_auc"] == pytest.approx(roc_auc_score(conversion * click, p_ctr * p_cvr))
    assert m["n_impressions"] == 8.0 and m["n_clicks"] == 4.0
    assert math.isnan(m["ctr_auc"]) is False and m["ctr_auc"] == 0.5


def test_evaluate_predictions_full_protocol_matches_sklearn() -> None:
    rng = _rng(3)
    n = 5000
    true_ctr = rng.beta(2, 8, size=n)
    true_cvr = rng.beta(1, 6, size=n)
    click = (rng.random(n) < true_ctr).astype(int)
    conversion = (rng.random(n) < true_cvr).astype(int)  # unmasked on purpose
    p_ctr = np.clip(true_ctr + rng.normal(scale=0.05, size=n), 0, 1)
    p_cvr = np.clip(true_cvr + rng.normal(scale=0.05, size=n), 0, 1)
    group = rng.integers(0, 40, size=n)

    m = evaluate_predictions(
        p_ctr, p_cvr, click, conversion,
        group=group, true_ctr=true_ctr, true_cvr=true_cvr,
    )
    assert list(m) == list(METRIC_ORDER)

    conv = conversion * click
    c = click == 1
    p_ctcvr = p_ctr * p_cvr
    assert m["ctr_auc"] == pytest.approx(roc_auc_score(click, p_ctr), abs=1e-9)
    assert m["cvr_auc"] == pytest.approx(roc_auc_score(conv[c], p_cvr[c]), abs=1e-9)
    assert m["ctcvr_auc"] == pytest.approx(roc_auc_score(conv, p_ctcvr), abs=1e-9)
    assert m["ctr_logloss"] == pytest.approx(sk_log_loss(click, np.clip(p_ctr, 1e-7, 1 - 1e-7)), abs=1e-9)
    assert m["ctcvr_logloss"] == pytest.approx(log_loss(conv, p_ctcvr))
    assert m["calibration_ctcvr"] == pytest.approx(p_ctcvr.mean() / conv.mean())
    assert m["ctr_gauc"] == pytest.approx(_gauc_reference(click, p_ctr, group), abs=1e-12)
    assert m["cvr_auc_entire_truth"] == pytest.approx(soft_auc(true_cvr, p_cvr))
    assert m["oracle_cvr_auc_entire_truth"] > m["cvr_auc_entire_truth"]
    assert m["oracle_ctr_auc_entire_truth"] > m["ctr_auc_entire_truth"]
    assert m["oracle_ctr_auc"] == pytest.approx(roc_auc_score(click, true_ctr), abs=1e-9)
    assert m["oracle_cvr_auc"] == pytest.approx(roc_auc_score(conv[c], true_cvr[c]), abs=1e-9)
    assert m["oracle_ctcvr_auc"] == pytest.approx(roc_auc_score(conv, true_ctr * true_cvr), abs=1e-9)
    assert m["n_conversions"] == float(conv.sum())
    assert all(isinstance(v, float) for v in m.values())


def test_evaluate_predictions_optional_keys_absent() -> None:
    m = evaluate_predictions([0.1, 0.9], [0.5, 0.5], [0, 1], [0, 1])
    assert "ctr_gauc" not in m and "cvr_auc_entire_truth" not in m
    assert "oracle_ctr_auc" not in m and "oracle_cvr_auc" not in m
    # One click, one conversion: CVR slice is single-class -> nan, not an error.
    assert math.isnan(m["cvr_auc"])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(click=[0, 1, 1]), "click"),
        (dict(p_cvr=[0.1, 0.2]), "p_cvr"),
        (dict(true_cvr=[0.1, 0.2, 0.3, 0.4, 0.5]), "true_cvr"),
        (dict(group=[1, 2]), "group"),
        (dict(p_ctr=[0.1, 1.5, 0.2, 0.3]), "p_ctr"),
        (dict(p_cvr=[0.1, np.nan, 0.2, 0.3]), "p_cvr"),
        (dict(true_ctr=[0.1, -0.2, 0.2, 0.3]), "true_ctr"),
        (dict(click=[0, 2, 1, 1]), "click"),
        (dict(conversion=[0, 0.5, 1, 1]), "conversion"),
    ],
)
def test_evaluate_predictions_rejects_bad_input(kwargs, match) -> None:
    args = dict(
        p_ctr=[0.1, 0.2, 0.3, 0.4],
        p_cvr=[0.1, 0.2, 0.3, 0.4],
        click=[0, 1, 1, 0],
        conversion=[0, 1, 0, 0],
    )
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        evaluate_predictions(
            args.pop("p_ctr"), args.pop("p_cvr"), args.pop("click"),
            args.pop("conversion"), **args,
        )


# ----------------------------------------------------------------------------- table
def test_format_metrics_table() -> None:
    cols = {
        "base": {"ctr_auc": 0.712345, "cvr_auc": float("nan"), "n_clicks": 1234.0,
                 "zzz_extra": 1.0},
        "esmm": {"ctr_auc": 0.7, "cvr_auc": 0.65432, "n_clicks": 1234.0,
                 "ctr_logloss": 0.25},
    }
    text = format_metrics_table(cols)
    lines = text.splitlines()
    assert "base" in lines[0] and "esmm" in lines[0]
    assert "0.7123" in text and "0.7000" in text and "0.6543" in text
    assert "1234" in text and "1234.0" not in text
    rows = {ln.split()[0]: ln.split()[1:] for ln in lines[2:]}
    assert rows["cvr_auc"] == ["-", "0.6543"]
    assert rows["ctr_logloss"] == ["-", "0.2500"]  # missing key shown as "-"
    order = [ln.split()[0] for ln in lines[2:]]
    assert order == ["ctr_auc", "cvr_auc", "ctr_logloss", "n_clicks", "zzz_extra"]

    only = format_metrics_table(cols, names=["n_clicks"])
    assert len(only.splitlines()) == 3 and "ctr_auc" not in only
