"""Hand-made raw logs for the import and predict tests (not the project's synth)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

HEADER = ["id", "user", "item", "city", "tags", "price", "clicked", "purchase"]
CITIES = ["paris", "berlin", "007", "oslo", "7"]
TAGS = ["shoes", "bags", "hats", "a", "b", "c"]

def make_rows(n: int, seed: int = 0, prefix: str = "r") -> list[list[str]]:
    """Raw log rows as CSV cells: string users, int items, string cities (one is "007"),
    weighted / plain / empty tag bags, a price, and click/purchase labels that depend on
    the features (so a model has something to learn)."""
    rng = np.random.default_rng(seed)
    user = rng.integers(0, 40, n)
    item = rng.zipf(1.6, n) % 150 + 1
    city = rng.integers(0, len(CITIES), n)
    price = np.round(rng.lognormal(3, 0.5, n), 2)
    logit = -1.0 + 0.8 * (item % 3 == 0) + 0.5 * (user % 2) - 0.3 * (city == 1)
    click = rng.random(n) < 1 / (1 + np.exp(-logit))
    purchase = click & (rng.random(n) < 1 / (1 + np.exp(1.0 - 0.8 * (item % 5 == 0))))
    n_tags = rng.integers(0, 4, n)
    weighted = rng.random(n) < 0.5
    rows = []
    for i in range(n):
        toks = rng.choice(TAGS, n_tags[i], replace=False)
        bag = "|".join(f"{t}:{rng.integers(1, 4) / 2}" if weighted[i] else str(t) for t in toks)
        rows.append([f"{prefix}{i}", f"u{user[i]}", str(item[i]), CITIES[city[i]], bag,
                     f"{price[i]:.2f}", str(int(click[i])), str(int(purchase[i]))])
    return rows


def write_csv(path: Path, rows: list[list[str]], header: list[str] = HEADER) -> Path:
    path.write_text("\n".join(",".join(r) for r in [header, *rows]) + "\n")
    return path
