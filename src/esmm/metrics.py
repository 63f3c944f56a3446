"""Evaluation metrics for CTR / CVR / CTCVR models, following the ESMM protocol.

ESMM (Ma et al., SIGIR 2018) argues that conventional CVR models are trained on
clicked impressions but served on the *entire* impression space.  The paper
nevertheless reports CVR AUC on clicked impressions only (the only place where
conversion labels exist), and CTCVR AUC over all impressions.  With simulated
data we also know the true conversion propensity of every impression, so we can
additionally score pCVR over the entire space against that ground truth; that is
what the ``*_entire_truth`` metrics (AUC against soft labels) are for.

Everything here is numpy only and vectorised: each metric is one or two sorts
plus linear passes, so ten million rows take a few seconds at most.  AUCs are
exact and tie-aware (a tied positive/negative pair counts 1/2), matching
``sklearn.metrics.roc_auc_score``; a quantised model output with many ties must
not be rewarded or penalised by an arbitrary tie order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "METRIC_ORDER",
    "auc",
    "calibration",
    "evaluate_predictions",
    "format_metrics_table",
    "gauc",
    "higher_is_better",
    "log_loss",
    "soft_auc",
]

#: Canonical row order for reports: the order in which ``evaluate_predictions``
#: defines its keys, so tables from different runs line up row for row.
METRIC_ORDER: tuple[str, ...] = (
    "ctr_auc",
    "cvr_auc",
    "ctcvr_auc",
    "ctr_logloss",
    "cvr_logloss",
    "ctcvr_logloss",
    "calibration_ctr",
    "calibration_cvr",
    "calibration_ctcvr",
    "ctr_gauc",
    "cvr_auc_entire_truth",
    "oracle_cvr_auc_entire_truth",
    "ctr_auc_entire_truth",
    "oracle_ctr_auc_entire_truth",
    "oracle_ctr_auc",
    "oracle_cvr_auc",
    "oracle_ctcvr_auc",
    "n_impressions",
    "n_clicks",
    "n_conversions",
)

_NAN = float("nan")


# --------------------------------------------------------------------------- #
# Input validation
# --------------------------------------------------------------------------- #
def _as_1d(x: ArrayLike, name: str) -> NDArray[np.float64]:
    """Convert to a 1-D float64 array; other shapes are rejected rather than
    flattened, because silently flattening an (n, k) output usually hides a
    caller bug."""
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    try:
        return arr.astype(np.float64, copy=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric: {exc}") from exc


def _binary(x: ArrayLike, name: str) -> NDArray[np.float64]:
    """0/1 labels. Anything else (2, 0.5, nan) is an error, not thresholded:
    a label of 2 usually means counts or class ids were passed by mistake."""
    arr = _as_1d(x, name)
    if not np.all((arr == 0.0) | (arr == 1.0)):
        raise ValueError(f"{name} must contain only 0 and 1")
    return arr


def _finite(x: ArrayLike, name: str) -> NDArray[np.float64]:
    arr = _as_1d(x, name)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite (found nan or inf)")
    return arr


def _probability(x: ArrayLike, name: str) -> NDArray[np.float64]:
    arr = _finite(x, name)
    if arr.size and (arr.min() < 0.0 or arr.max() > 1.0):
        raise ValueError(f"{name} must lie in [0, 1]")
    return arr


def _same_length(**arrays: NDArray | None) -> None:
    """Raise naming the first array whose length differs from the first one,
    so the error points at the offending argument."""
    items = [(k, v) for k, v in arrays.items() if v is not None]
    if not items:
        return
    ref_name, ref = items[0]
    for name, arr in items[1:]:
        if len(arr) != len(ref):
            raise ValueError(
                f"{name} has length {len(arr)}, expected {len(ref)} "
                f"(the length of {ref_name})"
            )


# --------------------------------------------------------------------------- #
# Sorting helpers
# --------------------------------------------------------------------------- #
# np.sort on integers is SIMD-accelerated on common CPUs while np.argsort and
# np.lexsort often are not (measured ~5x slower at 10M rows on an AVX2 box).  So wherever possible we
# sort one packed uint64 key carrying everything needed afterwards (score
# order, group, label or original index) instead of computing a permutation.
_U32 = np.uint64(32)
_LOW32 = np.uint64(0xFFFFFFFF)


def _float32_codes(x: NDArray[np.float64]) -> NDArray[np.uint64] | None:
    """Order-preserving 32-bit integer codes, or None if some value is not
    exactly a float32.

    Model outputs are usually float32, so their float64 copies round-trip
    exactly and fit in 32 bits, leaving the other 32 bits of a uint64 key free.
    Equal values get equal codes, which keeps ties intact.
    """
    with np.errstate(over="ignore"):  # out-of-range values become inf: not exact
        f = x.astype(np.float32)
    if not np.array_equal(f, x):
        return None
    f += np.float32(0.0)  # -0.0 -> +0.0: equal scores must share a code
    bits = f.view(np.uint32)
    # Flip all bits of negatives and the sign bit of non-negatives, the
    # standard map that makes IEEE order agree with unsigned integer order.
    codes = np.where(bits >> np.uint32(31), ~bits, bits | np.uint32(0x80000000))
    return codes.astype(np.uint64)


def _dense_codes(x: NDArray) -> tuple[NDArray[np.uint64], int]:
    """Dense rank codes (equal values share a code) and their bit width.

    Falls back to np.unique, i.e. an argsort, so only used when the cheaper
    encodings do not apply.
    """
    _, inverse = np.unique(x, return_inverse=True)
    codes = inverse.reshape(-1).astype(np.uint64)
    bits = max(1, int(codes.max()).bit_length()) if codes.size else 1
    return codes, bits


def _score_codes(x: NDArray[np.float64]) -> tuple[NDArray[np.uint64], int]:
    codes = _float32_codes(x)
    if codes is not None:
        return codes, 32
    return _dense_codes(x)


def _group_codes(g: NDArray) -> tuple[NDArray[np.uint64], int]:
    """Order-preserving group codes: an offset when the id range is narrow
    (no sort needed), dense ranks otherwise (e.g. 64-bit hashed user ids)."""
    if g.size == 0:
        return np.zeros(0, dtype=np.uint64), 1
    g_min = int(g.min())
    span = int(g.max()) - g_min
    if span < 2**31:
        # Widen before subtracting: in a narrow dtype (int8) the difference
        # itself can overflow; in 64 bits it cannot once the span is small.
        if g.dtype.kind == "u":
            offset = g.astype(np.uint64) - np.uint64(g_min)
        else:
            offset = (g.astype(np.int64) - np.int64(g_min)).astype(np.uint64)
        return offset, max(1, span.bit_length())
    return _dense_codes(g)


def _argsort(x: NDArray[np.float64]) -> NDArray[np.intp]:
    """argsort (ties in arbitrary order) via one packed integer sort when the
    values are float32-exact, else plain np.argsort."""
    codes = _float32_codes(x)
    if codes is None or x.size >= 2**32:
        return np.argsort(x)
    packed = np.sort((codes << _U32) | np.arange(x.size, dtype=np.uint64))
    return (packed & _LOW32).astype(np.intp)


def _starts(flags_differ: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """Prepend True to an ``a[1:] != a[:-1]`` vector: 'a new run starts here'."""
    return np.concatenate(([True], flags_differ))


# --------------------------------------------------------------------------- #
# AUC family
# --------------------------------------------------------------------------- #
def _weighted_auc(
    scores: NDArray[np.float64],
    w_pos: NDArray[np.float64],
    w_all: NDArray[np.float64] | None,
) -> float:
    """AUC where every example carries a positive mass and a negative mass.

    ``w_all`` is each example's total mass (negative mass = w_all - w_pos);
    None means 1 per example, which lets soft labels skip a gather.

    Sorting once and collapsing equal scores into tie blocks gives, per block,
    its positive mass P_k and negative mass N_k.  Each positive in block k
    beats all negative mass in lower blocks and half of the negative mass in its
    own block, so AUC = sum_k P_k (N_below_k + N_k / 2) / (P_tot N_tot).
    Hard weighted labels and soft labels are both special cases, which is why
    they share this kernel.
    """
    n = scores.size
    if n == 0:
        return _NAN
    order = _argsort(scores)
    s = scores[order]
    starts = np.flatnonzero(_starts(s[1:] != s[:-1]))
    pos = np.add.reduceat(w_pos[order], starts)
    if w_all is None:
        tot = np.diff(np.append(starts, n)).astype(np.float64)
    else:
        tot = np.add.reduceat(w_all[order], starts)
    neg = tot - pos
    p_tot = pos.sum()
    n_tot = neg.sum()
    if not (p_tot > 0.0 and n_tot > 0.0):
        return _NAN
    # Exclusive prefix sum built directly (not cumsum - neg) to avoid the
    # cancellation error that subtraction would add for large totals.
    neg_below = np.empty_like(neg)
    neg_below[0] = 0.0
    np.cumsum(neg[:-1], out=neg_below[1:])
    return float(np.dot(pos, neg_below + 0.5 * neg) / (p_tot * n_tot))


def _count_auc(y: NDArray[np.float64], s: NDArray[np.float64]) -> float:
    """Unweighted AUC from two plain sorts and exact integer pair counts.

    For each positive, ``searchsorted`` on the sorted negatives gives how many
    negatives score strictly below it (left) and at most equal (right); the
    mean of the two is the tie-aware count.  Queries are sorted too, so the
    binary searches stay cache-friendly; no argsort is needed at all.
    """
    is_pos = y == 1.0
    pos = np.sort(s[is_pos])
    neg = np.sort(s[~is_pos])
    if pos.size == 0 or neg.size == 0:
        return _NAN
    below = np.searchsorted(neg, pos, side="left").sum(dtype=np.int64)
    at_most = np.searchsorted(neg, pos, side="right").sum(dtype=np.int64)
    return float(below + at_most) / (2.0 * pos.size * neg.size)


def auc(
    labels: ArrayLike,
    scores: ArrayLike,
    weights: ArrayLike | None = None,
) -> float:
    """Exact, tie-aware ROC AUC, optionally with per-example weights.

    Equals ``sklearn.metrics.roc_auc_score(labels, scores, sample_weight=weights)``
    but runs in O(n log n) and returns ``nan`` instead of raising when a class
    has zero total weight: an evaluation slice that happens to have no
    positives should show up as a missing value in a report, not abort it.
    """
    y = _binary(labels, "labels")
    s = _finite(scores, "scores")
    if weights is None:
        _same_length(labels=y, scores=s)
        return _count_auc(y, s)
    w = _finite(weights, "weights")
    _same_length(labels=y, scores=s, weights=w)
    if w.size and w.min() < 0.0:
        raise ValueError("weights must be non-negative")
    return _weighted_auc(s, w * y, w)


def soft_auc(probs: ArrayLike, scores: ArrayLike) -> float:
    """AUC against soft labels: example i is a positive with weight ``probs[i]``
    and a negative with weight ``1 - probs[i]``.

    This is the expected AUC over label draws, measured against the true
    propensity instead of one noisy 0/1 realisation.  It lets us score pCVR on
    *all* impressions, including unclicked ones where no conversion label
    exists, which is exactly the sample-selection-bias gap ESMM targets.
    Identical to ``auc`` on the doubled arrays ``([1]*n + [0]*n, [s, s],
    weights=[p, 1-p])``, including the half-credit self-tie of each example's
    two copies, but computed without doubling memory.  Note that even the
    oracle (``scores == probs``) stays well below 1 because the labels are
    intrinsically uncertain; compare models against that oracle value.
    """
    p = _probability(probs, "probs")
    s = _finite(scores, "scores")
    _same_length(probs=p, scores=s)
    return _weighted_auc(s, p, None)


def gauc(labels: ArrayLike, scores: ArrayLike, groups: ArrayLike) -> float:
    """Group AUC: per-group tie-aware AUC, averaged with weights equal to the
    number of impressions in each group, over groups that contain both classes.

    Global AUC mixes between-user and within-user ranking; GAUC isolates the
    within-user part that matters when ranking items for one user.  Groups with
    one class have no defined AUC and are skipped (not counted as 0.5), as in
    the usual industry definition.

    Vectorised: (group, score, label) are packed into one uint64 key and sorted
    once; tie blocks are runs of equal (group, score).  Counts are int64 and
    each group's numerator is kept doubled (2 * P * N_below + P * N) so that
    everything stays an exact integer until the final division.  Returns
    ``nan`` if no group qualifies.
    """
    y = _binary(labels, "labels")
    s = _finite(scores, "scores")
    g = np.asarray(groups)
    if g.ndim != 1:
        raise ValueError(f"groups must be 1-D, got shape {g.shape}")
    if not (np.issubdtype(g.dtype, np.integer) or g.dtype == np.bool_):
        raise ValueError(f"groups must be an integer array, got dtype {g.dtype}")
    if g.dtype == np.bool_:
        g = g.astype(np.int64)
    _same_length(labels=y, scores=s, groups=g)
    n = y.size
    if n == 0:
        return _NAN

    # Widths: groups <= 31 bits (offset) or <= log2(n) (dense), scores 32 or
    # <= log2(n), label 1, so the key always fits in 64 bits.
    s_codes, s_bits = _score_codes(s)
    g_codes, g_bits = _group_codes(g)
    shift = np.uint64(s_bits + 1)
    key = (g_codes << shift) | (s_codes << np.uint64(1)) | y.astype(np.uint64)
    key.sort()

    ys = (key & np.uint64(1)).astype(np.int64)
    block_key = key >> np.uint64(1)
    group_key = key >> shift
    new_group = _starts(group_key[1:] != group_key[:-1])
    new_block = _starts(block_key[1:] != block_key[:-1])

    block_starts = np.flatnonzero(new_block)
    pos_b = np.add.reduceat(ys, block_starts)
    size_b = np.diff(np.append(block_starts, n))
    neg_b = size_b - pos_b

    # Negatives strictly below each block *within its group* = global exclusive
    # prefix minus the prefix at the group's first block.
    cum_neg_excl = np.cumsum(neg_b) - neg_b
    block_is_group_start = new_group[block_starts]
    group_first_block = np.flatnonzero(block_is_group_start)
    block_group = np.cumsum(block_is_group_start) - 1
    neg_below = cum_neg_excl - cum_neg_excl[group_first_block][block_group]

    num2_b = pos_b * (2 * neg_below + neg_b)
    num2_g = np.add.reduceat(num2_b, group_first_block)
    pos_g = np.add.reduceat(pos_b, group_first_block)
    neg_g = np.add.reduceat(neg_b, group_first_block)

    valid = (pos_g > 0) & (neg_g > 0)
    if not valid.any():
        return _NAN
    auc_g = num2_g[valid] / (2.0 * pos_g[valid].astype(np.float64) * neg_g[valid])
    size_g = (pos_g[valid] + neg_g[valid]).astype(np.float64)
    return float(np.dot(size_g, auc_g) / size_g.sum())


# --------------------------------------------------------------------------- #
# Probability-quality metrics
# --------------------------------------------------------------------------- #
def log_loss(labels: ArrayLike, probs: ArrayLike, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy with ``probs`` clipped to ``[eps, 1 - eps]``.

    Clipping keeps one confidently wrong prediction from turning the mean into
    ``inf``; 1e-7 is safely representable in float32 model outputs as well.
    Returns ``nan`` on empty input so that an empty slice (e.g. no clicks) is
    reported as missing instead of raising.
    """
    if not 0.0 <= eps < 0.5:
        raise ValueError("eps must lie in [0, 0.5)")
    y = _binary(labels, "labels")
    p = _probability(probs, "probs")
    _same_length(labels=y, probs=p)
    if y.size == 0:
        return _NAN
    p = np.clip(p, eps, 1.0 - eps)
    # One log per example (of the probability given to the observed label)
    # instead of two; 1 - p is exact for p >= 0.5, so no precision is lost.
    return float(-np.mean(np.log(np.where(y == 1.0, p, 1.0 - p))))


def calibration(labels: ArrayLike, probs: ArrayLike) -> float:
    """Predicted / observed rate, ``mean(probs) / mean(labels)``.

    1.0 means the model's average prediction matches the empirical rate; this
    matters for CVR because bids multiply pCTR * pCVR, so a biased scale
    misprices every impression even when the ranking (AUC) is perfect.  It is
    a diagnostic with target 1, not a quantity to maximise or minimise.
    Returns ``nan`` if empty or there are no positives (ratio undefined).
    """
    y = _binary(labels, "labels")
    p = _probability(probs, "probs")
    _same_length(labels=y, probs=p)
    if y.size == 0:
        return _NAN
    observed = float(y.mean())
    if observed == 0.0:
        return _NAN
    return float(p.mean()) / observed


def higher_is_better(name: str) -> bool:
    """Optimisation direction of a metric name from ``evaluate_predictions``.

    Used by model selection / early stopping.  Calibration is refused outright
    because its optimum is 1, not an extreme: picking "max calibration" would
    silently select the most over-predicting checkpoint.
    """
    if name.startswith("calibration"):
        raise ValueError(
            f"calibration metric {name!r} is not a metric to optimise "
            "(its target is 1.0, not an extreme)"
        )
    return "logloss" not in name


# --------------------------------------------------------------------------- #
# Protocol
# --------------------------------------------------------------------------- #
def evaluate_predictions(
    p_ctr: ArrayLike,
    p_cvr: ArrayLike | None,
    click: ArrayLike,
    conversion: ArrayLike,
    *,
    group: ArrayLike | None = None,
    true_ctr: ArrayLike | None = None,
    true_cvr: ArrayLike | None = None,
) -> dict[str, float]:
    """Score one model's predictions with the ESMM paper's protocol.

    * CTR and CTCVR (``p_ctr * p_cvr``) are evaluated on all impressions.
    * CVR is evaluated on clicked impressions only, as in the paper: outside
      them no conversion label exists.  ``conversion`` is masked by ``click``
      first, because a conversion without a click is a logging artefact under
      ESMM's ``impression -> click -> conversion`` path.
    * With simulated ground truth, ``*_entire_truth`` metrics score predictions
      over the *entire* space against the true propensities (``soft_auc``),
      which is the quantity ESMM claims to improve; ``oracle_*`` metrics give
      the ceiling reachable by a perfect model on the same labels.

    * ``p_cvr=None`` (a CTR network alone) gives the CTR metrics only.

    Returns a flat ``{name: float}`` dict (counts included as floats) so that
    results can be logged, averaged over seeds and tabulated uniformly.
    """
    pc = _probability(p_ctr, "p_ctr")
    if p_cvr is None:
        return _ctr_metrics(pc, click, conversion, group, true_ctr)
    pv = _probability(p_cvr, "p_cvr")
    clk = _binary(click, "click")
    cv = _binary(conversion, "conversion")
    grp = None if group is None else np.asarray(group)
    tc = None if true_ctr is None else _probability(true_ctr, "true_ctr")
    tv = None if true_cvr is None else _probability(true_cvr, "true_cvr")
    _same_length(
        p_ctr=pc, p_cvr=pv, click=clk, conversion=cv,
        group=grp, true_ctr=tc, true_cvr=tv,
    )

    conv = cv * clk
    p_ctcvr = pc * pv
    clicked = clk == 1.0

    out: dict[str, float] = {
        "ctr_auc": auc(clk, pc),
        "cvr_auc": auc(conv[clicked], pv[clicked]),
        "ctcvr_auc": auc(conv, p_ctcvr),
        "ctr_logloss": log_loss(clk, pc),
        "cvr_logloss": log_loss(conv[clicked], pv[clicked]),
        "ctcvr_logloss": log_loss(conv, p_ctcvr),
        "calibration_ctr": calibration(clk, pc),
        "calibration_cvr": calibration(conv[clicked], pv[clicked]),
        "calibration_ctcvr": calibration(conv, p_ctcvr),
    }
    if grp is not None:
        out["ctr_gauc"] = gauc(clk, pc, grp)
    if tv is not None:
        out["cvr_auc_entire_truth"] = soft_auc(tv, pv)
        out["oracle_cvr_auc_entire_truth"] = soft_auc(tv, tv)
    if tc is not None:
        out["ctr_auc_entire_truth"] = soft_auc(tc, pc)
        out["oracle_ctr_auc_entire_truth"] = soft_auc(tc, tc)
        out["oracle_ctr_auc"] = auc(clk, tc)
    if tc is not None and tv is not None:
        out["oracle_cvr_auc"] = auc(conv[clicked], tv[clicked])
        out["oracle_ctcvr_auc"] = auc(conv, tc * tv)
    out["n_impressions"] = float(clk.size)
    out["n_clicks"] = float(clk.sum())
    out["n_conversions"] = float(conv.sum())
    return out


def _ctr_metrics(pc: np.ndarray, click: ArrayLike, conversion: ArrayLike,
                 group: ArrayLike | None, true_ctr: ArrayLike | None) -> dict[str, float]:
    clk = _binary(click, "click")
    cv = _binary(conversion, "conversion")
    grp = None if group is None else np.asarray(group)
    tc = None if true_ctr is None else _probability(true_ctr, "true_ctr")
    _same_length(p_ctr=pc, click=clk, conversion=cv, group=grp, true_ctr=tc)
    out = {"ctr_auc": auc(clk, pc), "ctr_logloss": log_loss(clk, pc),
           "calibration_ctr": calibration(clk, pc)}
    if grp is not None:
        out["ctr_gauc"] = gauc(clk, pc, grp)
    if tc is not None:
        out["ctr_auc_entire_truth"] = soft_auc(tc, pc)
        out["oracle_ctr_auc_entire_truth"] = soft_auc(tc, tc)
        out["oracle_ctr_auc"] = auc(clk, tc)
    out["n_impressions"] = float(clk.size)
    out["n_clicks"] = float(clk.sum())
    out["n_conversions"] = float((cv * clk).sum())
    return out


# --------------------------------------------------------------------------- #
# Reporting
# --------------------------------------------------------------------------- #
def _default_names(columns: Mapping[str, Mapping[str, float]]) -> list[str]:
    present: set[str] = set()
    for metrics in columns.values():
        present.update(metrics)
    known = [n for n in METRIC_ORDER if n in present]
    return known + sorted(present.difference(METRIC_ORDER))


def _format_cell(name: str, value: float | None) -> str:
    if value is None:
        return "-"
    v = float(value)
    if math.isnan(v):
        return "-"
    if name.startswith("n_") and math.isfinite(v):
        return str(int(round(v)))
    return f"{v:.4f}"


def format_metrics_table(
    columns: Mapping[str, Mapping[str, float]],
    names: Sequence[str] | None = None,
) -> str:
    """Plain-text table: one row per metric, one column per model/run.

    Meant for logs and terminal output when comparing e.g. a baseline with
    ESMM side by side.  Missing or ``nan`` values print as ``-`` so an absent
    metric (no ground truth, no clicks) is visibly distinct from a number;
    counts (``n_*``) print as integers.  Rows follow ``METRIC_ORDER`` then any
    extra names alphabetically, unless ``names`` fixes the order.
    """
    row_names = list(names) if names is not None else _default_names(columns)
    headers = ["metric", *columns.keys()]
    rows = [
        [name, *(_format_cell(name, m.get(name)) for m in columns.values())]
        for name in row_names
    ]
    widths = [
        max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))
    ]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
        return "  ".join([first, *rest]).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])
