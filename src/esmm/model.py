"""Networks: shared feature embeddings, MLP towers, and the ESMM family.

Every model maps a :class:`esmm.data.Batch` to a dict of named logits
(``{"ctr": [B], "cvr": [B]}``) and computes no loss; objectives live in
``esmm.losses`` and the pairing of the two in ``esmm.models``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from esmm.config import ModelConfig
from esmm.data import Batch, EncodedSplit
from esmm.schema import Schema


class FeatureEmbedding(nn.Module):
    """All sparse fields of a schema looked up in two fused tables.

    Single-valued fields share one ``nn.Embedding`` (one lookup for all
    fields: each field's ids are shifted by its row offset in the table);
    multi-valued fields share one ``nn.EmbeddingBag`` that pools every bag of
    the batch in a single call with per-id weights. Both take ``sparse=True``
    so an optimiser can update only the rows a batch touched (dense Adam over a
    million-row table costs most of a step otherwise).

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
        self.cat_table = nn.Embedding(max(1, sum(cat_sizes)), d, sparse=cfg.sparse)
        self.bag_table = nn.EmbeddingBag(max(1, sum(bag_sizes)), d, mode="sum", sparse=cfg.sparse)
        for table in (self.cat_table, self.bag_table):
            nn.init.normal_(table.weight, std=0.01)
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
            ids = batch.cat + self.cat_offsets
            parts.append(self.cat_table(ids).reshape(b, self.n_cat * self.dim))
        if self.n_bag:
            parts.append(self._pool_bags(batch, b))
        if self.n_dense:
            parts.append((batch.dense - self.dense_mean) / self.dense_std)
        return torch.cat(parts, dim=1)

    def _pool_bags(self, batch: Batch, b: int) -> torch.Tensor:
        n_bags = b * self.n_bag
        nnz = batch.bag_ids.shape[0]
        lens = torch.diff(batch.bag_offsets, append=batch.bag_offsets.new_tensor([nnz]))
        bag_of_id = torch.repeat_interleave(torch.arange(n_bags), lens)
        ids = batch.bag_ids + self.bag_field_offsets[bag_of_id % self.n_bag]
        w = batch.bag_weights
        if self.pooling == "mean":
            # weighted mean: sum(w * e) / sum(w); an empty bag stays a zero vector
            wsum = torch.zeros(n_bags).index_add_(0, bag_of_id, w)
            w = w / wsum.clamp_min(1e-12)[bag_of_id]
        pooled = self.bag_table(ids, batch.bag_offsets, per_sample_weights=w)
        return pooled.reshape(b, self.n_bag * self.dim)


def _offsets(sizes: list[int]) -> torch.Tensor:
    return torch.tensor(np.concatenate([[0], np.cumsum(sizes)[:-1]]) if sizes else [],
                        dtype=torch.int64)


class Tower(nn.Module):
    """MLP with ReLU hidden layers and one output logit: [B, in] -> [B]."""

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


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

    def fit_inputs(self, split: EncodedSplit) -> None:
        self.embedding.fit_dense(split)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        x = self.embedding(batch)
        return {"ctr": self.ctr_tower(x), "cvr": self.cvr_tower(x)}


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

    def fit_inputs(self, split: EncodedSplit) -> None:
        self.ctr_embedding.fit_dense(split)
        self.cvr_embedding.fit_dense(split)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        return {"ctr": self.ctr_tower(self.ctr_embedding(batch)),
                "cvr": self.cvr_tower(self.cvr_embedding(batch))}


def split_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(sparse-gradient embedding weights, every other parameter)."""
    sparse_ids = set()
    sparse: list[nn.Parameter] = []
    for m in model.modules():
        if isinstance(m, (nn.Embedding, nn.EmbeddingBag)) and m.sparse:
            sparse.append(m.weight)
            sparse_ids.add(id(m.weight))
    dense = [p for p in model.parameters() if id(p) not in sparse_ids]
    return sparse, dense
