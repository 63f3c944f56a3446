"""Networks: shared feature embeddings, MLP towers, and the ESMM family.

Every model maps a :class:`esmm.data.Batch` to a dict of named logits
(``{"ctr": [B], "cvr": [B]}``) and computes no loss; objectives live in
``esmm.losses`` and the pairing of the two in ``esmm.models``.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, ContextManager, Iterator

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from esmm.config import ModelConfig
from esmm.data import Batch, EncodedSplit
from esmm.schema import Schema


#: ``EmbeddingTable._unique`` sorts when ids x this < table rows, else marks.
SORT_UNIQUE_FACTOR = 32


class EmbeddingTable(nn.Module):
    """A [rows, dim] table whose training lookups are updated row by row.

    With ``row_sparse`` (the default), a training lookup gathers the batch's
    unique rows into a small dense leaf tensor and looks ids up in it; after
    ``backward`` that leaf holds exactly the touched rows' gradients, which
    :class:`esmm.optim.RowWiseAdam` applies. This avoids both dense Adam over
    the whole table (every row and both moment buffers rewritten each step)
    and torch's sparse-gradient path, whose ``coalesce`` (a sort of B*F*D
    values) dominated a profiled step. Without ``row_sparse`` the weight is
    an ordinary parameter for any torch optimiser.
    """

    def __init__(self, rows: int, dim: int, row_sparse: bool = True) -> None:
        super().__init__()
        self.row_sparse = row_sparse
        self.weight = nn.Parameter(torch.empty(rows, dim), requires_grad=not row_sparse)
        nn.init.normal_(self.weight, std=0.01)
        self._touched: list[tuple[torch.Tensor, torch.Tensor]] = []
        # scratch for a sort-free unique (torch.unique's sort dominated a step)
        self._seen = torch.zeros(0, dtype=torch.bool)
        self._slot = torch.zeros(0, dtype=torch.int64)

    def _unique(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sorted unique ids, inverse): a sort for few ids, a mark array for many.

        The mark array costs O(table rows) whatever the batch (a scan of the
        table-sized mask); the sort O(ids log ids). Measured on the 1.04M-row
        benchmark table, one thread: 17k ids 0.6 ms sorting vs 1.05 ms marking,
        70k ids 2.2 ms vs 1.25 ms; the switch sits between the two.
        """
        n = self.weight.shape[0]
        if ids.numel() * SORT_UNIQUE_FACTOR < n:
            return torch.unique(ids, return_inverse=True)
        if self._seen.shape[0] != n:
            self._seen = torch.zeros(n, dtype=torch.bool)
            self._slot = torch.zeros(n, dtype=torch.int64)
        # index_fill_/index_copy_/index_select: the dedicated kernels, several times
        # faster than advanced indexing (seen[ids] = True) on batches of ~10^5 ids
        flat = ids.reshape(-1)
        self._seen.index_fill_(0, flat, True)
        uniq = self._seen.nonzero().squeeze(1)
        self._seen.index_fill_(0, uniq, False)  # leave the scratch clean for the next call
        self._slot.index_copy_(0, uniq, torch.arange(len(uniq)))
        return uniq, self._slot.index_select(0, flat).reshape(ids.shape)

    def gather(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, index) such that ``rows[index]`` are the embeddings of ``ids``."""
        if self.row_sparse and self.training and torch.is_grad_enabled():
            uniq, inverse = self._unique(ids)
            rows = self.weight.detach().index_select(0, uniq).requires_grad_()
            self._touched.append((uniq, rows))
            return rows, inverse
        return self.weight, ids

    def pop_touched(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        touched, self._touched = self._touched, []
        return touched


class FeatureEmbedding(nn.Module):
    """All sparse fields of a schema looked up in two fused tables.

    Single-valued fields share one table (one lookup for all fields: each
    field's ids are shifted by its row offset in the table); multi-valued
    fields share another, pooled for every bag of the batch in a single
    ``embedding_bag`` call with per-id weights. Both are
    :class:`EmbeddingTable` s, updated row-wise when ``cfg.sparse``.

    Output: [B, (Fc + Fm) * D + Fd] -- field embeddings then normalised dense features.
    """

    def __init__(self, schema: Schema, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.embedding_dim
        self.dim = d
        self.pooling = cfg.pooling
        cat_sizes = [f.vocab_size for f in schema.categorical]
        bag_sizes = [f.vocab_size for f in schema.multi_categorical]
        self.n_cat, self.n_bag, self.n_dense = len(cat_sizes), len(bag_sizes), len(schema.dense)
        self.register_buffer("cat_offsets", _offsets(cat_sizes), persistent=False)
        self.register_buffer("bag_field_offsets", _offsets(bag_sizes), persistent=False)
        self.cat_table = EmbeddingTable(max(1, sum(cat_sizes)), d, cfg.sparse)
        self.bag_table = EmbeddingTable(max(1, sum(bag_sizes)), d, cfg.sparse)
        # Dense inputs are standardised with statistics of the training split,
        # kept as buffers so the saved weights score raw values the same way.
        self.register_buffer("dense_mean", torch.zeros(self.n_dense))
        self.register_buffer("dense_std", torch.ones(self.n_dense))

    @property
    def out_dim(self) -> int:
        return (self.n_cat + self.n_bag) * self.dim + self.n_dense

    def fit_dense(self, split: EncodedSplit) -> None:
        if self.n_dense:
            x = split.dense.astype(np.float64)
            self.dense_mean.copy_(torch.from_numpy(x.mean(0)).float())
            self.dense_std.copy_(torch.from_numpy(np.maximum(x.std(0), 1e-6)).float())

    def forward(self, batch: Batch) -> torch.Tensor:
        b = batch.click.shape[0]
        parts = []
        if self.n_cat:
            rows, idx = self.cat_table.gather(batch.cat + self.cat_offsets)
            looked_up = (_Lookup.apply(rows, idx.reshape(-1)) if rows.requires_grad
                         else F.embedding(idx, rows))
            parts.append(looked_up.reshape(b, self.n_cat * self.dim))
        if self.n_bag:
            parts.append(self._pool_bags(batch, b))
        if self.n_dense:
            parts.append((batch.dense - self.dense_mean) / self.dense_std)
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def _pool_bags(self, batch: Batch, b: int) -> torch.Tensor:
        n_bags = b * self.n_bag
        nnz = batch.bag_ids.shape[0]
        lens = torch.diff(batch.bag_offsets, append=batch.bag_offsets.new_tensor([nnz]))
        bag_of_id = torch.repeat_interleave(torch.arange(n_bags), lens)
        # each bag's field offset, spread over its ids (index_select: no advanced indexing)
        ids = batch.bag_ids + self.bag_field_offsets.repeat(b).index_select(0, bag_of_id)
        w = batch.bag_weights
        if self.pooling == "mean":
            # weighted mean: sum(w * e) / sum(w); an empty bag stays a zero vector
            wsum = torch.zeros(n_bags).index_add_(0, bag_of_id, w)
            w = w / wsum.clamp_min(1e-12).index_select(0, bag_of_id)
        rows, idx = self.bag_table.gather(ids)
        if rows.requires_grad:
            pooled = _WeightedBagSum.apply(rows, idx, batch.bag_offsets, w, bag_of_id)
        else:
            pooled = F.embedding_bag(idx, rows, batch.bag_offsets, mode="sum",
                                     per_sample_weights=w)
        return pooled.reshape(b, self.n_bag * self.dim)


class _Lookup(torch.autograd.Function):
    """``rows[idx]`` whose backward is one ``index_add_`` into the batch's rows.

    torch's ``embedding`` backward sorts the ids first; for the ~17 ids per
    impression of a training batch the plain scatter-add measured 4x faster
    (batch 4096: 0.8 ms against 3.6 ms).
    """

    @staticmethod
    def forward(ctx, rows: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(idx)
        ctx.n_rows = rows.shape[0]
        return rows.index_select(0, idx)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (idx,) = ctx.saved_tensors
        grad_rows = grad.new_zeros(ctx.n_rows, grad.shape[1]).index_add_(0, idx, grad)
        return grad_rows, None


class _WeightedBagSum(torch.autograd.Function):
    """``embedding_bag(idx, rows, offsets, mode="sum", per_sample_weights=w)`` with a
    sort-free backward for ``rows`` only (the weights are data, never trained).

    torch's dense ``embedding_bag`` backward sorts every id of the batch: with
    Ali-CCP's user histories (~600 ids per impression) that sort and its
    segment sums took over half of a training step. The gradient is
    ``S^T @ grad`` for the sparse bag matrix ``S[bag, id] = w``; as a COO
    product it is one pass over the ids (measured 2x faster than the sort, and
    than ``index_add_``, which serialises on CPU).
    """

    @staticmethod
    def forward(ctx, rows: torch.Tensor, idx: torch.Tensor, offsets: torch.Tensor,
                w: torch.Tensor, bag_of_id: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(idx, w, bag_of_id)
        ctx.n_rows = rows.shape[0]
        return F.embedding_bag(idx, rows, offsets, mode="sum", per_sample_weights=w)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        idx, w, bag_of_id = ctx.saved_tensors
        s_t = torch.sparse_coo_tensor(torch.stack([idx, bag_of_id]), w,
                                      (ctx.n_rows, grad.shape[0]), check_invariants=False)
        return torch.sparse.mm(s_t, grad.contiguous()), None, None, None, None


def _offsets(sizes: list[int]) -> torch.Tensor:
    return torch.tensor(np.concatenate([[0], np.cumsum(sizes)[:-1]]) if sizes else [],
                        dtype=torch.int64)


class Tower(nn.Module):
    """MLP with ReLU hidden layers and one output logit: [B, in] -> [B].

    ``hidden_dtype`` (set by :func:`scoring_precision`, never while training)
    runs the hidden layers' products in that dtype -- bfloat16: 3.5x the fp32
    matrix throughput on CPUs with native bf16 dot products -- while the output
    layer stays float32, so logits keep full resolution (no bf16 ties in AUCs).
    """

    def __init__(self, in_dim: int, hidden: tuple[int, ...], dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for h in hidden:
            layers += [nn.Linear(in_dim, h), nn.ReLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            in_dim = h
        layers.append(nn.Linear(in_dim, 1))
        self.net = nn.Sequential(*layers)
        self.hidden_dtype: torch.dtype | None = None
        self._hidden_weights: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.train_dtype: torch.dtype | None = None  # set by training_precision

    def set_output_bias(self, logit: float) -> None:
        with torch.no_grad():
            self.net[-1].bias.fill_(logit)

    def set_hidden_dtype(self, dtype: torch.dtype | None) -> None:
        """Score hidden layers in ``dtype`` (None: float32); weights are cast once, here."""
        self.hidden_dtype = dtype
        linears = [m for m in self.net if isinstance(m, nn.Linear)][:-1]
        self._hidden_weights = [] if dtype is None else [
            (lin.weight.detach().to(dtype), lin.bias.detach().to(dtype)) for lin in linears]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return self.net(x).squeeze(-1) if self.train_dtype is None else self._mixed(x)
        if self.hidden_dtype is None:
            return self.net(x).squeeze(-1)
        return self.score_from(x.to(self.hidden_dtype), 0)

    def _mixed(self, x: torch.Tensor) -> torch.Tensor:
        """Training in mixed precision: hidden layers in ``train_dtype`` on copies of the
        fp32 weights cast every step (their gradients come back in fp32 through the
        cast), the output layer and everything after it in fp32."""
        h = x.to(self.train_dtype)
        for m in self.net[:-1]:
            h = (F.linear(h, m.weight.to(h.dtype), m.bias.to(h.dtype))
                 if isinstance(m, nn.Linear) else m(h))
        out = self.net[-1]
        return F.linear(h.float(), out.weight, out.bias).squeeze(-1)

    def score_from(self, h: torch.Tensor, layer: int) -> torch.Tensor:
        """Scoring only: the logit from hidden layer ``layer``'s input ``h`` (hidden dtype)."""
        for w, b in self._hidden_weights[layer:]:  # dropout is the identity when scoring
            h = F.linear(h, w, b).relu_()
        out = self.net[-1]
        return F.linear(h.float(), out.weight, out.bias).squeeze(-1)


#: Scoring precisions: the dtype of the towers' hidden-layer products ("fp32" also takes
#: the scoring path: one product for both ESMM towers' first layers).
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": torch.float32, "bf16": torch.bfloat16}


@contextmanager
def _set_within(modules: list[nn.Module], get: Callable[[nn.Module], object],
                put: Callable[[nn.Module, object], None], value: object) -> Iterator[None]:
    """Within the block each module's setting is ``value``; its own value comes back after."""
    saved = [get(m) for m in modules]
    for m in modules:
        put(m, value)
    try:
        yield
    finally:
        for m, old in zip(modules, saved):
            put(m, old)


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")


def scoring_precision(model: nn.Module, precision: str = "fp32") -> ContextManager[None]:
    """Within the block, ``model``'s towers score with hidden layers in ``precision``."""
    _check_precision(precision)
    # every module with a set_hidden_dtype hook: the towers, and SharedTowers' fused first layer
    hooked = [m for m in model.modules() if hasattr(m, "set_hidden_dtype")]
    return _set_within(hooked, lambda m: m.hidden_dtype,
                       lambda m, d: m.set_hidden_dtype(d), PRECISIONS[precision])


def base_rate_logits(split: EncodedSplit) -> dict[str, float]:
    """Log-odds of each task's rate in ``split``, Laplace-smoothed (defined on any split):
    ``ctr`` clicks per impression, ``cvr`` conversions per click, ``ctcvr`` conversions
    per impression."""
    n, clicks = len(split), float(split.click.sum())
    conversions = float(split.conversion.sum())
    rates = {"ctr": (clicks + 1) / (n + 2), "cvr": (conversions + 1) / (clicks + 2),
             "ctcvr": (conversions + 1) / (n + 2)}
    return {task: float(np.log(r / (1 - r))) for task, r in rates.items()}


def init_output_biases(model: nn.Module, split: EncodedSplit) -> None:
    """Start every ``<task>_tower``'s output bias at the log-odds of that task's base rate."""
    for task, logit in base_rate_logits(split).items():
        tower = getattr(model, f"{task}_tower", None)
        if isinstance(tower, Tower):
            tower.set_output_bias(logit)


def fit_model_inputs(model: nn.Module, embeddings: list[FeatureEmbedding], split: EncodedSplit,
                     output_bias_init: str) -> None:
    """What every model's ``fit_inputs`` does: dense statistics of the train split for each
    embedding, and (``output_bias_init="base_rate"``) the towers' output biases."""
    for emb in embeddings:
        emb.fit_dense(split)
    if output_bias_init == "base_rate":
        init_output_biases(model, split)


def training_precision(model: nn.Module, precision: str = "fp32") -> ContextManager[None]:
    """Within the block, ``model``'s towers train with hidden layers in ``precision``."""
    _check_precision(precision)
    towers = [m for m in model.modules() if isinstance(m, Tower)]
    return _set_within(towers, lambda t: t.train_dtype, lambda t, d: setattr(t, "train_dtype", d),
                       None if precision == "fp32" else PRECISIONS[precision])


class SharedTowers(nn.Module):
    """ESMM: one embedding shared by a CTR tower and a CVR tower.

    The sharing is the point: the CVR tower's inputs are learnt from every
    impression's click signal, which relieves CVR's data sparsity.
    """

    def __init__(self, schema: Schema, cfg: ModelConfig) -> None:
        super().__init__()
        self.embedding = FeatureEmbedding(schema, cfg)
        self.ctr_tower = Tower(self.embedding.out_dim, cfg.tower, cfg.dropout)
        self.cvr_tower = Tower(self.embedding.out_dim, cfg.tower, cfg.dropout)
        self.hidden_dtype: torch.dtype | None = None
        self._first: tuple[torch.Tensor, torch.Tensor] | None = None
        self.output_bias_init = cfg.output_bias_init

    def fit_inputs(self, split: EncodedSplit) -> None:
        fit_model_inputs(self, [self.embedding], split, self.output_bias_init)

    def set_hidden_dtype(self, dtype: torch.dtype | None) -> None:
        """Scoring: both towers' first layers as one product (they read the same input).

        Training keeps two products: concatenating the weights every step measured
        slower (docs/performance.md); for scoring they are concatenated once, here.
        """
        self.hidden_dtype = dtype
        firsts = [t.net[0] for t in (self.ctr_tower, self.cvr_tower)]
        self._first = None if dtype is None else (
            torch.cat([f.weight.detach() for f in firsts]).to(dtype),
            torch.cat([f.bias.detach() for f in firsts]).to(dtype))

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        x = self.embedding(batch)
        if self._first is None or torch.is_grad_enabled():
            if torch.is_grad_enabled() and self.ctr_tower.train_dtype is not None:
                # mixed precision: cast the shared input once (and its gradient back once)
                x = x.to(self.ctr_tower.train_dtype)
            return {"ctr": self.ctr_tower(x), "cvr": self.cvr_tower(x)}
        h = F.linear(x.to(self.hidden_dtype), *self._first).relu_()
        h_ctr, h_cvr = h.split(self.ctr_tower.net[0].out_features, dim=1)
        return {"ctr": self.ctr_tower.score_from(h_ctr, 1),
                "cvr": self.cvr_tower.score_from(h_cvr, 1)}


class SeparateTowers(nn.Module):
    """Two independent networks, each with its own embedding tables.

    Used by ESMM-NS (entire-space loss, no sharing) and by BASE (the CVR
    network trained on clicked impressions, beside its own CTR network).
    """

    def __init__(self, schema: Schema, cfg: ModelConfig) -> None:
        super().__init__()
        self.ctr_embedding = FeatureEmbedding(schema, cfg)
        self.cvr_embedding = FeatureEmbedding(schema, cfg)
        self.ctr_tower = Tower(self.ctr_embedding.out_dim, cfg.tower, cfg.dropout)
        self.cvr_tower = Tower(self.cvr_embedding.out_dim, cfg.tower, cfg.dropout)
        self.output_bias_init = cfg.output_bias_init

    def fit_inputs(self, split: EncodedSplit) -> None:
        fit_model_inputs(self, [self.ctr_embedding, self.cvr_embedding], split,
                         self.output_bias_init)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        return {"ctr": self.ctr_tower(self.ctr_embedding(batch)),
                "cvr": self.cvr_tower(self.cvr_embedding(batch))}


class ClickNetwork(nn.Module):
    """A CTR network alone: its own embedding tables and one tower. Output ``{"ctr": [B]}``.

    The paper's protocol pairs every non-ESMM CVR model with one independently
    trained CTR network of ESMM's CTR structure, so that their CTCVR AUCs
    (pCTR x pCVR) differ only through pCVR; ``esmm compare`` trains this one.
    """

    def __init__(self, schema: Schema, cfg: ModelConfig) -> None:
        super().__init__()
        self.ctr_embedding = FeatureEmbedding(schema, cfg)
        self.ctr_tower = Tower(self.ctr_embedding.out_dim, cfg.tower, cfg.dropout)
        self.output_bias_init = cfg.output_bias_init

    def fit_inputs(self, split: EncodedSplit) -> None:
        fit_model_inputs(self, [self.ctr_embedding], split, self.output_bias_init)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        return {"ctr": self.ctr_tower(self.ctr_embedding(batch))}


def row_sparse_tables(model: nn.Module) -> list[EmbeddingTable]:
    return [m for m in model.modules() if isinstance(m, EmbeddingTable) and m.row_sparse]


def dense_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every parameter a standard optimiser should update (row-wise tables excluded)."""
    return [p for p in model.parameters() if p.requires_grad]
