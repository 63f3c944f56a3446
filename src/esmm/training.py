"""The training loop, readable top to bottom.

The trainer knows nothing of particular models: it calls the model for named
logits, the spec's objective for the loss, and the spec's probability function
for predictions. Behaviour is extended through :class:`Callback` hooks, not
``isinstance`` branches.
"""

from __future__ import annotations

import copy
import functools
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from esmm.config import EVAL_BATCH_SIZE, TrainConfig
from esmm.cpu import free_threads
from esmm.data import EncodedSplit
from esmm.metrics import evaluate_predictions, higher_is_better
from esmm.malloc import keep_freed_memory
from esmm.model import (dense_parameters, row_sparse_tables, scoring_precision,
                        training_precision)
from esmm.optim import RowWiseAdam
from esmm.registry import ModelSpec


class Callback:
    """No-op hooks; override the ones you need."""

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None: ...

    def on_batch_end(self, trainer: Trainer, step: int, loss: float) -> None: ...

    def on_epoch_end(self, trainer: Trainer, epoch: int, record: dict[str, Any]) -> None: ...


#: Largest per-step buffer served from the heap (see esmm/malloc.py).
REUSED_BYTES = 64 << 20


def set_seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def configure_threads(threads: int) -> None:
    """``threads`` torch threads; 0: as many as there are idle cores now (at least one).

    With another process busy on a core, fewer threads train faster than
    threads that wait for a descheduled peer (esmm/cpu.py has the figures).
    """
    torch.set_num_threads(threads or free_threads())


def make_optimizers(model: nn.Module, cfg: TrainConfig) -> list[Any]:
    """Row-wise Adam for row-sparse embedding tables, fused Adam for the rest.

    The row-wise update keeps a step's cost independent of the vocabulary
    size; dense Adam would rewrite every row of every table (and its two
    moment buffers) on each step.
    """
    opts: list[Any] = []
    tables = row_sparse_tables(model)
    if tables:
        opts.append(RowWiseAdam(tables, lr=cfg.embedding_lr or cfg.lr))
    dense = dense_parameters(model)
    if dense:
        # fused: one kernel over all tensors instead of ~10 small ops per tensor
        opts.append(torch.optim.Adam(dense, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True))
    return opts


@torch.inference_mode()
def predict_split(model: nn.Module, spec: ModelSpec, split: EncodedSplit,
                  batch_size: int = EVAL_BATCH_SIZE, precision: str = "fp32"
                  ) -> dict[str, np.ndarray]:
    """The spec's scores (p_ctr, p_cvr, p_ctcvr) for every row of ``split``, in row order.

    ``precision="bf16"`` runs the towers' hidden layers in bfloat16 (output
    layer and probabilities in float32): about twice the rows per second on a
    CPU with native bf16 (AVX512-BF16, AMX), scores within ~1e-3 of fp32
    (docs/performance.md); slower than fp32 where bf16 is emulated.
    """
    was_training = model.training
    model.eval()
    n = len(split)
    out = {k: np.empty(n, dtype=np.float32) for k in spec.outputs}
    with scoring_precision(model, precision):
        for s in range(0, n, batch_size):
            probs = spec.probabilities(model(split.batch(slice(s, min(n, s + batch_size)))))
            for k in out:
                out[k][s:s + batch_size] = probs[k].numpy()
    model.train(was_training)
    return out


def evaluate_split(model: nn.Module, spec: ModelSpec, split: EncodedSplit,
                   batch_size: int = EVAL_BATCH_SIZE, precision: str = "fp32"
                   ) -> dict[str, float]:
    """The paper's metrics (``esmm.metrics.evaluate_predictions``) on one split."""
    p = predict_split(model, spec, split, batch_size, precision)
    return evaluate_predictions(p["p_ctr"], p.get("p_cvr"), split.click, split.conversion,
                                group=split.group, true_ctr=split.true_ctr,
                                true_cvr=split.true_cvr)


@dataclass
class FitResult:
    history: list[dict[str, Any]] = field(default_factory=list)
    #: the epoch of the kept weights; with several validations per epoch the position in
    #: epochs (1.5: half-way through the second), a whole number at an epoch's end
    best_epoch: float | None = None
    best_valid: dict[str, float] | None = None
    stopped_early: bool = False


class _EarlyStopping:
    """The best valid score so far, its weights, and whether patience has run out."""

    def __init__(self, metric: str, patience: int) -> None:
        self.metric, self.patience = metric, patience
        self.sign = 1.0 if higher_is_better(metric) else -1.0
        self.best_score, self.best_state, self.bad = -math.inf, None, 0
        self.best_position: float | None = None
        self.best_valid: dict[str, float] | None = None

    def update(self, model: nn.Module, vm: dict[str, float], position: float) -> bool:
        """Record one validation; True when training should stop."""
        if self.metric not in vm:
            raise KeyError(f"early-stop metric {self.metric!r} is not reported; "
                           f"choose one of {sorted(vm)}")
        score = self.sign * vm[self.metric]
        if score > self.best_score:
            self.best_score, self.bad = score, 0
            self.best_state = copy.deepcopy(model.state_dict())
            self.best_position, self.best_valid = position, vm
        else:
            self.bad += 1
        return self.bad > self.patience


class Trainer:
    def __init__(self, model: nn.Module, spec: ModelSpec, cfg: TrainConfig,
                 callbacks: Iterable[Callback] = ()) -> None:
        self.model = model
        self.spec = spec
        self.cfg = cfg
        self.callbacks = list(callbacks)
        self.optimizers = make_optimizers(model, cfg)
        # every step allocates the same activations, gathers and gradients (a few MB
        # each): reuse them from the heap instead of mmap + page faults (esmm/malloc.py)
        keep_freed_memory(REUSED_BYTES)

    def train_step(self, batch: Any) -> float:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        loss, _ = self.spec.objective(self.model(batch), batch)
        loss.backward()
        for opt in self.optimizers:
            opt.step()
        return loss.item()

    def train_epoch(self, train: EncodedSplit, epoch: int, rng: np.random.Generator,
                    check: Callable[[int, int], bool] | None = None) -> dict[str, float]:
        """One pass over ``train``; ``check(step, n_batches)`` after every step, which
        ends the epoch early by returning True (early stopping within an epoch)."""
        self.model.train()
        n_batches = math.ceil(len(train) / self.cfg.batch_size)
        bar = _progress(n_batches, f"epoch {epoch}", self.cfg.progress)
        start = time.perf_counter()
        batches = train.iter_batches(self.cfg.batch_size, shuffle=True, rng=rng)
        with training_precision(self.model, self.cfg.precision):
            total, count = self._run_batches(batches, epoch, bar, start, n_batches, check)
        if bar is not None:
            bar.close()
        seconds = time.perf_counter() - start
        return {"train_loss": total / max(1, count), "seconds": seconds,
                "samples_per_s": count / max(1e-9, seconds)}

    def _run_batches(self, batches: Any, epoch: int, bar: Any, start: float, n_batches: int,
                     check: Callable[[int, int], bool] | None) -> tuple[float, int]:
        total, count = 0.0, 0
        for step, batch in enumerate(batches):
            loss = self.train_step(batch)
            if not math.isfinite(loss):
                raise FloatingPointError(f"epoch {epoch} step {step}: loss is {loss}")
            total += loss * len(batch)
            count += len(batch)
            for cb in self.callbacks:
                cb.on_batch_end(self, step, loss)
            if bar is not None:
                bar.update(1)
                if step % 20 == 0:
                    rate = count / max(1e-9, time.perf_counter() - start)
                    bar.set_postfix(loss=f"{total / count:.4f}", rows_s=f"{rate:,.0f}")
            if check is not None and check(step, n_batches):
                break
        return total, count

    def fit(self, train: EncodedSplit, valid: EncodedSplit | None = None) -> FitResult:
        """Train for ``cfg.epochs``, validating on ``valid`` ``cfg.validations_per_epoch``
        times per epoch (evenly spaced in its steps, the last at its end).

        With a valid split, training stops once ``early_stop_metric`` has not
        improved for ``patience`` validations, and the best validation's weights
        are restored. The test split never takes part in these choices.
        """
        cfg = self.cfg
        rng = np.random.default_rng(cfg.seed)
        k = cfg.validations_per_epoch
        stopping = _EarlyStopping(cfg.early_stop_metric, cfg.patience)
        result = FitResult()
        for epoch in range(1, cfg.epochs + 1):
            for cb in self.callbacks:
                cb.on_epoch_start(self, epoch)
            checks: list[dict[str, Any]] = []
            stop = False

            def check(step: int, n_batches: int) -> bool:
                """Validate after the steps that end each k-th of the epoch."""
                nonlocal stop
                done = step + 1
                if done not in _check_steps(n_batches, k):
                    return False
                vm = evaluate_split(self.model, self.spec, valid, cfg.eval_batch_size)
                position = epoch - 1 + round(done / n_batches, 6)
                checks.append({"position": position, "valid": vm})
                stop = stopping.update(self.model, vm, position)
                self.model.train()
                return stop

            # without a valid split there is nothing to check: every epoch runs to its end
            record: dict[str, Any] = {"epoch": epoch, **self.train_epoch(
                train, epoch, rng, check if valid is not None else None)}
            if checks:
                record["valid"] = checks[-1]["valid"]
                if k > 1:
                    record["validations"] = checks
            result.history.append(record)
            _log_epoch(record, cfg.early_stop_metric, cfg.progress)
            for cb in self.callbacks:
                cb.on_epoch_end(self, epoch, record)
            if stop:
                result.stopped_early = True
                break
        if stopping.best_state is not None:
            self.model.load_state_dict(stopping.best_state)
            best = stopping.best_position
            result.best_epoch = int(best) if float(best).is_integer() else best
            result.best_valid = stopping.best_valid
        else:
            result.best_epoch = len(result.history)
        return result


@functools.lru_cache(maxsize=16)
def _check_steps(n_batches: int, k: int) -> frozenset[int]:
    """The steps (counted from 1) after which an epoch of ``n_batches`` validates k times."""
    return frozenset(math.ceil(j * n_batches / k) for j in range(1, k + 1))


def _progress(total: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="batch", file=sys.stderr, leave=False,
                dynamic_ncols=True, mininterval=0.5)


def _log_epoch(record: dict[str, Any], metric: str, enabled: bool) -> None:
    if not enabled:
        return
    line = (f"epoch {record['epoch']}: loss {record['train_loss']:.5f}, "
            f"{record['samples_per_s']:,.0f} rows/s")
    if "valid" in record:
        line += f", valid {metric} {record['valid'][metric]:.5f}"
    print(line, file=sys.stderr, flush=True)
