"""torch-rechub's ESMM trained for one epoch with its own MTLTrainer (child of bench_train.py).

Follows the library's multi-task examples: ``SparseFeature`` per field (split into
user and item features, as ``ESMM`` requires), ``DataGenerator`` -> DataLoader
(num_workers=0, shuffle), ``MTLTrainer`` with three classification tasks whose
labels are [cvr, ctr, ctcvr] (the trainer sums the ctr and ctcvr BCE losses for
an ``ESMM`` model). Deviations from the library defaults, for parity with the
other implementations: Adam ``weight_decay=0`` (MTLTrainer's default is 1e-5),
embedding dim 16 (not the automatic size), towers 256-128. The towers keep the
library's BatchNorm after each hidden layer (``MLP`` always has it).

Timed: ``MTLTrainer.train_one_epoch(train_dataloader)``, i.e. exactly the loop
``MTLTrainer.fit`` runs per epoch, without ``fit``'s validation pass and
checkpoint save.
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

    from torch_rechub.basic.features import SparseFeature
    from torch_rechub.models.multi_task import ESMM
    from torch_rechub.trainers import MTLTrainer
    from torch_rechub.utils.data import DataGenerator

    def features(side: str) -> list:
        return [SparseFeature(f["name"], vocab_size=f["vocab_size"], embed_dim=args.embedding_dim)
                for f in data.fields if f["side"] == side]

    tower = {"dims": args.tower}
    model = ESMM(features("user"), features("item"), cvr_params=dict(tower), ctr_params=dict(tower))

    def labels(split: dict[str, np.ndarray]) -> np.ndarray:
        # [cvr_label, ctr_label, ctcvr_label]; conversion is already 0 wherever click is 0
        return np.stack([split["conversion"], split["click"], split["conversion"]], axis=1)

    x_train, y_train = data.x(data.train), labels(data.train)
    x_test, y_test = data.x(data.test), labels(data.test)
    train_dl, _, _ = DataGenerator(x_train, y_train).generate_dataloader(
        x_val=x_test, y_val=y_test, x_test=x_test, y_test=y_test, batch_size=args.batch_size)
    trainer = MTLTrainer(model, task_types=["classification"] * 3,
                         optimizer_params={"lr": args.lr, "weight_decay": 0.0},
                         n_epoch=1, device="cpu", model_path=args.work)

    start = time.perf_counter()
    losses = trainer.train_one_epoch(train_dl)
    train_seconds = time.perf_counter() - start

    start = time.perf_counter()
    model.eval()
    n = len(y_test)
    preds = np.empty((n, 3), dtype=np.float64)
    with torch.no_grad():
        for s in range(0, n, common.EVAL_BATCH):
            xb = {k: torch.from_numpy(v[s:s + common.EVAL_BATCH]) for k, v in x_test.items()}
            preds[s:s + common.EVAL_BATCH] = model(xb).numpy()
    test = common.aucs(data.test["click"], data.test["conversion"],
                       p_ctr=preds[:, 1], p_cvr=preds[:, 0], p_ctcvr=preds[:, 2])
    eval_seconds = time.perf_counter() - start

    common.write_result(args, "torch-rechub", "torch-rechub", version("torch-rechub"), data,
                        train_seconds, test, eval_seconds=eval_seconds,
                        n_params=sum(p.numel() for p in model.parameters()),
                        extra={"train_loss": [float(v) for v in losses],
                               "timed": "MTLTrainer.train_one_epoch"})


if __name__ == "__main__":
    main()
