"""DeepCTR-Torch's ESMM trained for one epoch with its own ``fit`` (child of bench_train.py).

``SparseFeat`` per field (embedding dim 16), ``deepctr_torch.models.ESMM`` with
``tower_dnn_hidden_units=(256, 128)`` and task names ctr / ctcvr, compiled with
``torch.optim.Adam(lr=1e-3)`` and binary cross-entropy on both outputs, then
``fit(epochs=1, shuffle=True, verbose=0)`` without per-batch training metrics.
Deviation from the library defaults, for parity with the other implementations:
``l2_reg_embedding=0`` and ``l2_reg_linear=0`` (defaults 1e-5; with them every
step adds an L2 term over every row of every embedding table).

Timed: from ``on_epoch_begin`` to ``on_epoch_end`` of a callback, i.e. ``fit``'s
own epoch loop over its DataLoader; ``fit``'s one-off concatenation of the
inputs into one tensor before the loop is outside it.
"""

from __future__ import annotations

import time
from importlib.metadata import version

import numpy as np
import torch

import common


def main() -> None:
    args = common.parse_args(__doc__.splitlines()[0])
    common.setup(args)
    data = common.Data(args.data)

    # deepctr_torch's __init__ starts a thread that asks PyPI for its latest version
    # (requests.get, no timeout); keep the benchmark off the network
    import requests

    def _no_network(*a, **k):
        raise requests.ConnectionError("bench_train: version check disabled")

    requests.get = _no_network
    from deepctr_torch.callbacks import Callback
    from deepctr_torch.inputs import SparseFeat
    from deepctr_torch.models import ESMM

    columns = [SparseFeat(f["name"], vocabulary_size=f["vocab_size"], embedding_dim=args.embedding_dim)
               for f in data.fields]
    model = ESMM(columns, tower_dnn_hidden_units=tuple(args.tower), l2_reg_linear=0.0,
                 l2_reg_embedding=0.0, task_types=("binary", "binary"),
                 task_names=("ctr", "ctcvr"), device="cpu", seed=args.seed)
    model.compile(torch.optim.Adam(model.parameters(), lr=args.lr),
                  loss=["binary_crossentropy", "binary_crossentropy"])

    class EpochTimer(Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds = time.perf_counter() - self.start
            self.logs = dict(logs or {})

    timer = EpochTimer()
    y_train = np.stack([data.train["click"], data.train["conversion"]], axis=1)
    model.fit(data.x(data.train), y_train, batch_size=args.batch_size, epochs=1, verbose=0,
              shuffle=True, callbacks=[timer])

    start = time.perf_counter()
    preds = model.predict(data.x(data.test), batch_size=common.EVAL_BATCH)  # [n, 2]: ctr, ctcvr
    p_ctr, p_ctcvr = preds[:, 0], preds[:, 1]
    # the model exposes no pCVR; recover it from the two outputs for the clicked-only CVR AUC
    p_cvr = p_ctcvr / np.maximum(p_ctr, 1e-12)
    test = common.aucs(data.test["click"], data.test["conversion"], p_ctr=p_ctr, p_cvr=p_cvr,
                       p_ctcvr=p_ctcvr)
    eval_seconds = time.perf_counter() - start

    common.write_result(args, "deepctr", "deepctr-torch", version("deepctr-torch"), data,
                        timer.seconds, test, eval_seconds=eval_seconds,
                        n_params=sum(p.numel() for p in model.parameters()),
                        extra={"train_loss": timer.logs.get("loss"),
                               "timed": "fit epoch (Callback.on_epoch_begin -> on_epoch_end)"})


if __name__ == "__main__":
    main()
