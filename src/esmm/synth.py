"""A simulated Ali-CCP-shaped world whose click and conversion propensities are known.

Real logs never reveal p(conversion | click, x) on impressions nobody clicked,
so a CVR model's quality over the *entire* impression space -- the thing ESMM
is about -- cannot be measured on them. Here it can: every impression stores
``true_ctr`` and ``true_cvr``, and labels are drawn from them.

The world (all vectorised NumPy, seeded):

- users with a latent taste vector, gender and age, sampled with Zipf-like activity;
- items with Zipf-like popularity, each in a category, shop and brand; an item's
  latent vector is its category's plus noise; a price (dense feature);
- a scenario/position field; a weighted multi-valued field ``user_hist_cats``
  (categories the user looked at before, weight = log1p(count)) drawn from the
  user's taste, like Ali-CCP's 109_14;
- click logit  = a_c + taste . item + appeal[item] + scenario + demographic effects
- CVR logit    = a_v + taste . M item + quality[item] - price effect + ...

``selection_bias`` (0..1) sets how differently the two depend on the features:
M rotates the taste space away from the one clicks follow, and an item's
appeal (what draws clicks) becomes anti-correlated with its quality (what
makes clicked users buy). At 0 the two propensities move together; towards 1
the clicked impressions are an increasingly unrepresentative sample of where
conversions would happen, which is the sample selection bias of the paper.
Intercepts are solved so the click rate and the conversion rate among clicks
hit the requested values.
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from esmm.data import write_dataset
from esmm.schema import Feature, Schema


@dataclass(frozen=True)
class WorldConfig:
    """Knobs of the simulated world (see module docstring)."""

    rows: int = 1_000_000
    seed: int = 0
    click_rate: float = 0.04
    conversion_rate: float = 0.12  # among clicked impressions
    selection_bias: float = 0.6
    # None: rows // 2000. Enough impressions per user (~2,000: ~80 clicks, ~10 conversions)
    # that clicks reveal a user's taste while conversions alone barely do -- the
    # data-sparsity regime of the paper, where a shared embedding pays (docs/synth.md).
    n_users: int | None = None
    n_items: int | None = None  # None: rows // 1000
    n_categories: int = 300
    latent_dim: int = 4
    valid_fraction: float = 0.10
    test_fraction: float = 0.25

    def __post_init__(self) -> None:
        if self.rows < 1000:
            raise ValueError("rows must be >= 1000")
        if not 0 < self.click_rate < 0.5:
            raise ValueError("click_rate must be in (0, 0.5)")
        if not 0 < self.conversion_rate < 0.9:
            raise ValueError("conversion_rate must be in (0, 0.9)")
        if not 0 <= self.selection_bias <= 1:
            raise ValueError("selection_bias must be in [0, 1]")
        if not (0 < self.test_fraction < 1 and 0 <= self.valid_fraction < 1
                and self.valid_fraction + self.test_fraction < 1):
            raise ValueError("valid_fraction + test_fraction must be below 1")


def _zipf_probs(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    p = 1.0 / np.arange(1, n + 1) ** exponent
    return rng.permutation(p / p.sum())


def _solve_intercept(logit: np.ndarray, target: float, weights: np.ndarray | None = None) -> float:
    """a with weighted-mean sigmoid(logit + a) == target (bisection; the mean is monotone in a)."""
    lo, hi = -30.0, 30.0
    w = np.ones_like(logit) if weights is None else weights
    wsum = w.sum()
    for _ in range(60):
        mid = (lo + hi) / 2
        m = float((w / (1 + np.exp(-(logit + mid)))).sum() / wsum)
        lo, hi = (mid, hi) if m < target else (lo, mid)
    return (lo + hi) / 2


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def make_world(cfg: WorldConfig) -> tuple[Schema, pa.Table]:
    """Generate the impressions of a world, in log order, as one encoded Arrow table."""
    rng = np.random.default_rng(cfg.seed)
    n = cfg.rows
    k = cfg.latent_dim
    n_users = cfg.n_users or max(200, n // 2000)
    n_items = cfg.n_items or max(200, n // 1000)
    n_cat = cfg.n_categories
    n_shops, n_brands, n_scen = max(50, n_items // 20), max(50, n_items // 15), 6

    # --- entities -------------------------------------------------------------
    # Most of each propensity comes from effects a model can learn from a few
    # hundred impressions per entity (item, category, user, scenario); the
    # user x category taste term is what the history bag reveals.
    taste = rng.normal(0, 1, (n_users, k)) / math.sqrt(k)
    gender = rng.integers(1, 3, n_users)
    age = rng.integers(1, 8, n_users)
    user_bias = rng.normal(0, 0.35, n_users)
    cat_vec = rng.normal(0, 1, (n_cat, k))
    item_cat = rng.choice(n_cat, n_items, p=_zipf_probs(n_cat, 0.8, rng))
    item_vec = cat_vec[item_cat] + 0.7 * rng.normal(0, 1, (n_items, k))
    item_shop = rng.integers(1, n_shops, n_items)
    item_brand = rng.integers(1, n_brands, n_items)
    log_price = rng.normal(3.0, 1.0, n_items) + 0.3 * rng.normal(0, 1, n_cat)[item_cat]
    rho = cfg.selection_bias
    # appeal draws clicks; quality makes clicked users buy. With selection bias
    # the most clickable items are not the ones that convert.
    appeal = rng.normal(0, 0.6, n_items) + rng.normal(0, 0.4, n_cat)[item_cat]
    quality = -rho * appeal + math.sqrt(1 - rho**2) * rng.normal(0, 0.3, n_items)
    shop_effect = rng.normal(0, 0.3, n_shops)
    theta = rho * math.pi / 3
    q, _ = np.linalg.qr(rng.normal(0, 1, (k, k)))
    mix = math.cos(theta) * np.eye(k) + math.sin(theta) * q  # CVR's view of taste
    # what the item's latent traits do to conversion: readable from the item
    # vector that the click data also shapes (the sharing ESMM exploits)
    item_cvr = 0.8 * item_vec @ rng.normal(0, 1, k) / math.sqrt(k)

    # --- impressions ----------------------------------------------------------
    user = rng.choice(n_users, n, p=_zipf_probs(n_users, 0.7, rng))
    item = rng.choice(n_items, n, p=_zipf_probs(n_items, 0.9, rng))
    scen = rng.integers(0, n_scen, n)
    tv = taste[user]
    iv = item_vec[item]
    price_z = (log_price[item] - 3.0)
    ctr_logit = (0.8 * np.einsum("ij,ij->i", tv, iv) + appeal[item] + user_bias[user]
                 + np.array([0.6, 0.3, 0.0, -0.2, -0.4, -0.6])[scen]
                 + 0.15 * (gender[user] == 2) - 0.05 * age[user] / 7 - 0.1 * price_z)
    cvr_logit = (0.5 * np.einsum("ij,ij->i", tv, iv @ mix.T) + item_cvr[item] + quality[item]
                 + shop_effect[item_shop[item]] + 0.5 * user_bias[user]
                 - 0.35 * price_z + 0.25 * (age[user] - 4) / 3
                 + np.array([0.0, 0.1, 0.2, 0.1, 0.0, -0.1])[scen])
    ctr_logit += _solve_intercept(ctr_logit, cfg.click_rate)
    true_ctr = _sigmoid(ctr_logit)
    cvr_logit += _solve_intercept(cvr_logit, cfg.conversion_rate, weights=true_ctr)
    true_cvr = _sigmoid(cvr_logit)
    click = rng.random(n) < true_ctr
    conversion = click & (rng.random(n) < true_cvr)

    # --- the weighted multi-valued history field --------------------------------
    hist_off, hist_ids, hist_w = _histories(taste, cat_vec, rng)
    lens = np.diff(hist_off)[user]
    row_off = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lens, out=row_off[1:])
    pos = np.repeat(hist_off[user] - row_off[:-1], lens) + np.arange(row_off[-1])
    offsets = pa.array(row_off.astype(np.int32) if row_off[-1] < 2**31 else row_off)
    list_type = pa.ListArray if row_off[-1] < 2**31 else pa.LargeListArray

    schema = Schema(
        features=(
            Feature("user_id", "categorical", n_users + 1, encoding="identity"),
            Feature("user_gender", "categorical", 3, encoding="identity"),
            Feature("user_age", "categorical", 8, encoding="identity"),
            Feature("item_id", "categorical", n_items + 1, encoding="identity"),
            Feature("item_category", "categorical", n_cat + 1, encoding="identity"),
            Feature("item_shop", "categorical", n_shops, encoding="identity"),
            Feature("item_brand", "categorical", n_brands, encoding="identity"),
            Feature("scenario", "categorical", n_scen + 1, encoding="identity"),
            Feature("user_hist_cats", "multi_categorical", n_cat + 1,
                    weight_column="user_hist_cats_weight", encoding="identity"),
            Feature("item_price", "dense"),
        ),
        group="user_group", true_ctr="true_ctr", true_cvr="true_cvr",
        description=f"esmm synth world: {asdict(cfg)}",
    )
    table = pa.table({
        "user_id": pa.array(user + 1, pa.int32()),
        "user_gender": pa.array(gender[user], pa.int32()),
        "user_age": pa.array(age[user], pa.int32()),
        "item_id": pa.array(item + 1, pa.int32()),
        "item_category": pa.array(item_cat[item] + 1, pa.int32()),
        "item_shop": pa.array(item_shop[item], pa.int32()),
        "item_brand": pa.array(item_brand[item], pa.int32()),
        "scenario": pa.array(scen + 1, pa.int32()),
        "user_hist_cats": list_type.from_arrays(offsets, pa.array(hist_ids[pos] + 1, pa.int32())),
        "user_hist_cats_weight": list_type.from_arrays(offsets, pa.array(hist_w[pos], pa.float32())),
        "item_price": pa.array(np.exp(log_price[item]).astype(np.float32)),
        "click": pa.array(click.astype(np.int8)),
        "conversion": pa.array(conversion.astype(np.int8)),
        "user_group": pa.array(user + 1, pa.int64()),
        "true_ctr": pa.array(true_ctr.astype(np.float32)),
        "true_cvr": pa.array(true_cvr.astype(np.float32)),
    })
    return schema, table


def _histories(taste: np.ndarray, cat_vec: np.ndarray, rng: np.random.Generator
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per user: categories looked at before (drawn from taste), weight log1p(count). CSR."""
    n_users, n_cat = taste.shape[0], cat_vec.shape[0]
    max_draws = 40
    logits = taste @ cat_vec.T * 1.5
    probs = np.exp(logits - logits.max(1, keepdims=True))
    cdf = np.cumsum(probs / probs.sum(1, keepdims=True), axis=1)
    cdf[:, -1] = 1.0
    draws_per_user = np.minimum(max_draws, 1 + rng.poisson(12, n_users))
    u = rng.random((n_users, max_draws))
    # vectorised inverse-CDF sampling: shift each user's CDF into its own interval
    flat_cdf = (cdf + np.arange(n_users)[:, None]).ravel()
    picks = np.searchsorted(flat_cdf, u + np.arange(n_users)[:, None]) - np.arange(n_users)[:, None] * n_cat
    picks = np.clip(picks, 0, n_cat - 1)
    valid = np.arange(max_draws)[None, :] < draws_per_user[:, None]
    pair = (np.repeat(np.arange(n_users), max_draws) * n_cat + picks.ravel())[valid.ravel()]
    uniq, counts = np.unique(pair, return_counts=True)
    users, cats = uniq // n_cat, uniq % n_cat
    off = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(users, minlength=n_users), out=off[1:])
    return off, cats, np.log1p(counts).astype(np.float32)


def write_world(out_dir: str | Path, cfg: WorldConfig, verbose: bool = True) -> Path:
    """Generate a world and write it as a dataset (train / valid / test in log order)."""
    schema, table = make_world(cfg)
    n = table.num_rows
    n_test = int(round(n * cfg.test_fraction))
    n_valid = int(round(n * cfg.valid_fraction))
    n_train = n - n_test - n_valid
    splits = {"train": table.slice(0, n_train), "valid": table.slice(n_train, n_valid),
              "test": table.slice(n_train + n_valid)}
    splits = {k: v for k, v in splits.items() if v.num_rows}
    summary = {name: _summary(t) for name, t in splits.items()}
    out = write_dataset(out_dir, schema, splits,
                        extra_files={"world.json": {"config": asdict(cfg), "splits": summary}})
    if verbose:
        for name, s in summary.items():
            print(f"{name}: {s['rows']:,} impressions, {s['clicks']:,} clicks, "
                  f"{s['conversions']:,} conversions", file=sys.stderr)
    return out


def _summary(t: pa.Table) -> dict[str, int | float]:
    click = t.column("click").to_numpy()
    conv = t.column("conversion").to_numpy()
    return {"rows": t.num_rows, "clicks": int(click.sum()), "conversions": int(conv.sum()),
            "ctr": float(click.mean()), "cvr_among_clicks": float(conv.sum() / max(1, click.sum()))}
