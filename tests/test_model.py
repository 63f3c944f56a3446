from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pytest
import torch
from torch.nn import functional as F

from esmm.config import ModelConfig
from esmm.data import encode_table, load_split
from esmm.losses import EntireSpaceLoss
from esmm.model import EmbeddingTable, FeatureEmbedding, dense_parameters, row_sparse_tables
from esmm.optim import RowWiseAdam
from esmm.registry import MODELS, get_model_spec
from esmm.schema import Feature, Schema

from conftest import TINY_MODEL


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_returns_named_logits_and_product_probabilities(tiny_world, name: str) -> None:
    split = load_split(tiny_world, "valid")
    spec = get_model_spec(name)
    torch.manual_seed(0)
    model = spec.build(split.schema, TINY_MODEL)
    out = model(split.batch(slice(0, 64)))
    assert isinstance(out, dict) and "ctr" in out  # named logits, never a positional tensor
    assert all(v.shape == (64,) for v in out.values())
    p = spec.probabilities(out)
    assert tuple(p) == spec.outputs
    if "p_ctcvr" in p:
        torch.testing.assert_close(p["p_ctcvr"], p["p_ctr"] * p["p_cvr"])
    else:  # the CTR network alone
        assert spec.outputs == ("p_ctr",) and set(out) == {"ctr"}


def test_esmm_cvr_tower_learns_only_through_the_ctcvr_term(tiny_world) -> None:
    split = load_split(tiny_world, "train")
    spec = get_model_spec("esmm")
    model = spec.build(split.schema, TINY_MODEL)
    batch = split.batch(slice(0, 512))
    out = model(batch)
    # the CTR term alone must leave the CVR tower untouched ...
    ctr_only = torch.nn.functional.binary_cross_entropy_with_logits(out["ctr"], batch.click)
    ctr_only.backward(retain_graph=True)
    assert all(p.grad is None or not p.grad.any() for p in model.cvr_tower.parameters())
    # ... and the full loss must reach it (through pCTCVR only: the loss has no CVR term)
    model.zero_grad()
    loss, parts = EntireSpaceLoss()(out, batch)
    assert set(parts) == {"ctr", "ctcvr"}
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.cvr_tower.parameters())


def test_esmm_shares_one_embedding_and_esmm_ns_does_not(tiny_world) -> None:
    schema = load_split(tiny_world, "valid").schema
    shared = get_model_spec("esmm").build(schema, TINY_MODEL)
    separate = get_model_spec("esmm-ns").build(schema, TINY_MODEL)
    n_tables = lambda m: sum(isinstance(x, FeatureEmbedding) for x in m.modules())  # noqa: E731
    assert n_tables(shared) == 1 and n_tables(separate) == 2


def _bag_schema() -> Schema:
    return Schema(features=(Feature("c", "categorical", 5),
                            Feature("h", "multi_categorical", 6, weight_column="hw"),
                            Feature("g", "multi_categorical", 4)))


def _bag_table() -> pa.Table:
    return pa.table({
        "c": [1, 2, 0],
        "h": [[1, 2, 3], [], [5, 5]],
        "hw": [[1.0, 2.0, 0.5], [], [1.0, 3.0]],
        "g": [[3], [1, 2], []],
        "click": [1, 0, 0], "conversion": [0, 0, 0],
    })


@pytest.mark.parametrize("pooling", ["mean", "sum"])
def test_weighted_bag_pooling_matches_a_hand_computation(pooling: str) -> None:
    schema = _bag_schema()
    emb = FeatureEmbedding(schema, ModelConfig(embedding_dim=3, pooling=pooling))
    split = encode_table(_bag_table(), schema)
    x = emb(split.batch(slice(0, 3))).detach()
    w_h = emb.bag_table.weight.detach()[:6]  # field h occupies rows 0..5 of the bag table
    w_g = emb.bag_table.weight.detach()[6:]

    def pool(table: torch.Tensor, ids: list[int], weights: list[float]) -> torch.Tensor:
        if not ids:
            return torch.zeros(3)
        v = sum(wt * table[i] for i, wt in zip(ids, weights))
        return v / sum(weights) if pooling == "mean" else v

    expected_h = [pool(w_h, [1, 2, 3], [1, 2, .5]), pool(w_h, [], []), pool(w_h, [5, 5], [1, 3])]
    expected_g = [pool(w_g, [3], [1]), pool(w_g, [1, 2], [1, 1]), pool(w_g, [], [])]
    for row in range(3):
        torch.testing.assert_close(x[row, 3:6], expected_h[row])
        torch.testing.assert_close(x[row, 6:9], expected_g[row])
    # every id of a bag counts: no truncation, no last-value-wins
    assert not torch.allclose(x[0, 3:6], pool(w_h, [3], [1]))


@pytest.mark.parametrize("pooling", ["mean", "sum"])
def test_bag_gradients_match_torch_embedding_bag(pooling: str) -> None:
    # the row-sparse training path has its own backward (a sparse product, not torch's
    # sorting one): its gradients must equal those of a plain dense F.embedding_bag
    schema = _bag_schema()
    emb = FeatureEmbedding(schema, ModelConfig(embedding_dim=3, pooling=pooling)).train()
    split = encode_table(_bag_table(), schema)
    batch = split.batch(slice(0, 3))
    upstream = torch.randn(3, emb.out_dim, generator=torch.Generator().manual_seed(0))
    (emb(batch) * upstream).sum().backward()
    (uniq, rows), = emb.bag_table.pop_touched()
    got = torch.zeros_like(emb.bag_table.weight).index_add_(0, uniq, rows.grad)

    weight = emb.bag_table.weight.detach().clone().requires_grad_()
    n_bags = 3 * emb.n_bag
    nnz = batch.bag_ids.shape[0]
    lens = torch.diff(batch.bag_offsets, append=torch.tensor([nnz]))
    bag = torch.repeat_interleave(torch.arange(n_bags), lens)
    ids = batch.bag_ids + emb.bag_field_offsets[bag % emb.n_bag]
    w = batch.bag_weights.clone()
    if pooling == "mean":
        w = w / torch.zeros(n_bags).index_add_(0, bag, w).clamp_min(1e-12)[bag]
    pooled = F.embedding_bag(ids, weight, batch.bag_offsets, mode="sum", per_sample_weights=w)
    (pooled.reshape(3, -1) * upstream[:, emb.n_cat * 3:]).sum().backward()
    torch.testing.assert_close(got, weight.grad)
    assert got.abs().sum() > 0


def test_training_lookups_touch_only_the_batch_rows(tiny_world) -> None:
    split = load_split(tiny_world, "train")
    model = get_model_spec("esmm").build(split.schema, TINY_MODEL)
    batch = split.batch(slice(0, 32))
    loss, _ = EntireSpaceLoss()(model(batch), batch)
    loss.backward()
    tables = row_sparse_tables(model)
    assert len(tables) == 2
    assert all(not t.weight.requires_grad for t in tables)  # no dense gradient, ever
    (uniq, rows), = tables[0].pop_touched()
    expected = torch.unique(batch.cat + model.embedding.cat_offsets)
    torch.testing.assert_close(uniq, expected)
    assert rows.grad.shape == (len(uniq), TINY_MODEL.embedding_dim)
    assert all(p.requires_grad for p in dense_parameters(model))


def test_row_wise_adam_matches_torch_sparse_adam() -> None:
    # an independent reference: torch's own lazy Adam over sparse gradients
    torch.manual_seed(0)
    ours = EmbeddingTable(50, 4)
    ref = torch.nn.Embedding(50, 4, sparse=True)
    ref.weight.data.copy_(ours.weight.data)
    opt_ours, opt_ref = RowWiseAdam([ours], lr=0.01), torch.optim.SparseAdam(ref.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        ids = torch.randint(0, 50, (30,), generator=g)  # repeated ids: gradients must sum
        target = torch.randn(30, 4, generator=g)
        rows, idx = ours.gather(ids)
        ((F.embedding(idx, rows) - target) ** 2).sum().backward()
        opt_ours.step()
        opt_ref.zero_grad()
        ((ref(ids) - target) ** 2).sum().backward()
        opt_ref.step()
    torch.testing.assert_close(ours.weight.data, ref.weight.data, rtol=1e-5, atol=1e-6)


def test_dense_features_are_standardised_with_train_statistics(tiny_world) -> None:
    split = load_split(tiny_world, "train")
    emb = FeatureEmbedding(split.schema, TINY_MODEL)
    emb.fit_dense(split)
    np.testing.assert_allclose(emb.dense_mean.numpy(), split.dense.mean(0), rtol=1e-4)
    assert "dense_mean" in emb.state_dict()  # saved with the weights, so serving matches


@pytest.mark.parametrize("name", ["esmm", "base"])
def test_scoring_path_matches_the_training_forward(tiny_world, name: str) -> None:
    """fp32 scoring (ESMM: both first layers as one product) == the plain forward; bf16 close."""
    from esmm.model import scoring_precision

    split = load_split(tiny_world, "valid")
    spec = get_model_spec(name)
    torch.manual_seed(0)
    model = spec.build(split.schema, TINY_MODEL).eval()
    batch = split.batch(slice(0, 512))
    with torch.no_grad():
        plain = model(batch)
        with scoring_precision(model, "fp32"):
            fast = model(batch)
        with scoring_precision(model, "bf16"):
            low = model(batch)
        again = model(batch)  # the context restores the plain path
    for k in plain:
        torch.testing.assert_close(fast[k], plain[k], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(low[k], plain[k], rtol=2e-2, atol=2e-2)  # bf16: 8-bit mantissa
        assert fast[k].dtype == low[k].dtype == torch.float32
        assert torch.equal(again[k], plain[k])


def test_bf16_training_is_mixed_precision_and_close_to_fp32(tiny_world) -> None:
    """--precision bf16: hidden layers in bfloat16, fp32 master weights, fp32 logits and
    gradients; the loss and gradients stay close to the fp32 step's."""
    from esmm.model import training_precision

    split = load_split(tiny_world, "train")
    spec = get_model_spec("esmm")
    torch.manual_seed(0)
    model = spec.build(split.schema, TINY_MODEL).train()
    batch = split.batch(slice(0, 256))
    grads = {}
    for precision in ("fp32", "bf16"):
        model.zero_grad(set_to_none=True)
        with training_precision(model, precision):
            out = model(batch)
            loss, _ = spec.objective(out, batch)
            loss.backward()
        assert all(v.dtype == torch.float32 for v in out.values())
        grads[precision] = (loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()
                                          if p.grad is not None})
        row_sparse_tables(model)[0].pop_touched()
    (l32, g32), (l16, g16) = grads["fp32"], grads["bf16"]
    assert abs(l16 - l32) < 1e-2 * abs(l32)
    assert g16.keys() == g32.keys() and g16
    for name, g in g16.items():
        assert g.dtype == torch.float32 and model.get_parameter(name).dtype == torch.float32
        cos = F.cosine_similarity(g.flatten(), g32[name].flatten(), dim=0)
        assert cos > 0.98, (name, cos)
    assert all(t.train_dtype is None for t in model.modules() if hasattr(t, "train_dtype"))


def test_row_sparse_lookups_give_the_dense_tables_gradients(tiny_world) -> None:
    # the row-sparse path has its own backward for single- and multi-valued fields
    # (index_add_ and a sparse product instead of torch's sorting ones): scattered back
    # into full tables, its gradients must equal an ordinary dense embedding's
    split = load_split(tiny_world, "train")
    batch = split.batch(slice(0, 64))
    cfg = ModelConfig(embedding_dim=4)
    sparse = FeatureEmbedding(split.schema, cfg).train()
    dense = FeatureEmbedding(split.schema, dataclasses.replace(cfg, sparse=False)).train()
    dense.load_state_dict(sparse.state_dict())
    upstream = torch.randn(64, sparse.out_dim, generator=torch.Generator().manual_seed(1))
    (sparse(batch) * upstream).sum().backward()
    (dense(batch) * upstream).sum().backward()
    for name in ("cat_table", "bag_table"):
        (uniq, rows), = getattr(sparse, name).pop_touched()
        weight = getattr(sparse, name).weight
        got = torch.zeros_like(weight).index_add_(0, uniq, rows.grad)
        torch.testing.assert_close(got, getattr(dense, name).weight.grad)
        assert got.abs().sum() > 0


@pytest.mark.parametrize("name", ["esmm", "esmm-ns", "base", "division", "ctr"])
def test_output_biases_start_at_the_train_base_rates(tiny_world, name: str) -> None:
    from esmm.model import base_rate_logits

    split = load_split(tiny_world, "train")
    click, conv = split.click.astype(float), split.conversion.astype(float)
    expected = {"ctr": (click.sum() + 1) / (len(split) + 2),
                "cvr": (conv.sum() + 1) / (click.sum() + 2),
                "ctcvr": (conv.sum() + 1) / (len(split) + 2)}
    logits = base_rate_logits(split)
    for task, rate in expected.items():
        assert torch.sigmoid(torch.tensor(logits[task])).item() == pytest.approx(rate, rel=1e-6)

    spec = get_model_spec(name)
    model = spec.build(split.schema, TINY_MODEL)
    model.fit_inputs(split)
    towers = {t: getattr(model, f"{t}_tower") for t in expected if hasattr(model, f"{t}_tower")}
    assert towers
    for task, tower in towers.items():
        assert tower.net[-1].bias.item() == pytest.approx(logits[task], rel=1e-6)
    zero = spec.build(split.schema, dataclasses.replace(TINY_MODEL, output_bias_init="zero"))
    before = {t: getattr(zero, f"{t}_tower").net[-1].bias.clone() for t in towers}
    zero.fit_inputs(split)
    for task in towers:
        assert torch.equal(getattr(zero, f"{task}_tower").net[-1].bias, before[task])


@pytest.mark.parametrize("factor", [0, 10**9])  # 0: always the mark array; 10**9: always sort
def test_row_unique_by_mark_array_and_by_sort_agree(monkeypatch, factor: int) -> None:
    import esmm.model as model_module

    monkeypatch.setattr(model_module, "SORT_UNIQUE_FACTOR", factor)
    table = EmbeddingTable(1000, 4)
    ids = torch.tensor([[5, 999, 5, 0], [17, 0, 3, 999]])
    uniq, inverse = table._unique(ids)
    assert uniq.tolist() == [0, 3, 5, 17, 999]
    assert torch.equal(uniq[inverse], ids)
    assert not table._seen.any()  # the scratch is left clean
