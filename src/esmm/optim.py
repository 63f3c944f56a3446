"""Row-wise (lazy) Adam for :class:`esmm.model.EmbeddingTable`.

Same arithmetic as ``torch.optim.SparseAdam``: the moments of a row change
only on steps where the batch touched it, and bias correction uses the
table's global step count. What differs is the plumbing: the gradient arrives
as a small dense [unique rows, dim] tensor (see ``EmbeddingTable.gather``),
so there is no sparse tensor to coalesce.
"""

from __future__ import annotations

import math

import torch

from esmm.model import EmbeddingTable


class RowWiseAdam:
    def __init__(self, tables: list[EmbeddingTable], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        if lr <= 0:
            raise ValueError("lr must be > 0")
        self.tables = tables
        self.lr, self.betas, self.eps = lr, betas, eps
        self.steps = 0
        self.exp_avg = [torch.zeros_like(t.weight) for t in tables]
        self.exp_avg_sq = [torch.zeros_like(t.weight) for t in tables]

    def zero_grad(self, set_to_none: bool = True) -> None:
        # pending lookups of an abandoned step must not leak into the next one
        for t in self.tables:
            t.pop_touched()

    @torch.no_grad()
    def step(self) -> None:
        self.steps += 1
        b1, b2 = self.betas
        step_size = self.lr * math.sqrt(1 - b2**self.steps) / (1 - b1**self.steps)
        for table, m_all, v_all in zip(self.tables, self.exp_avg, self.exp_avg_sq):
            touched = [(u, r.grad) for u, r in table.pop_touched() if r.grad is not None]
            if not touched:
                continue
            if len(touched) == 1:
                uniq, grad = touched[0]
            else:  # the table was looked up more than once this step: sum per row
                uniq, inverse = torch.unique(torch.cat([u for u, _ in touched]),
                                             return_inverse=True)
                grad = torch.zeros(len(uniq), table.weight.shape[1]).index_add_(
                    0, inverse, torch.cat([g for _, g in touched]))
            # index_select/index_copy_: the plain row gather/scatter kernels, several
            # times cheaper than advanced indexing (aten::index / index_put_)
            m = m_all.index_select(0, uniq).mul_(b1).add_(grad, alpha=1 - b1)
            v = v_all.index_select(0, uniq).mul_(b2).addcmul_(grad, grad, value=1 - b2)
            m_all.index_copy_(0, uniq, m)
            v_all.index_copy_(0, uniq, v)
            w = table.weight.index_select(0, uniq).addcdiv_(m, v.sqrt_().add_(self.eps),
                                                             value=-step_size)
            table.weight.index_copy_(0, uniq, w)
