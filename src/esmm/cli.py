"""The ``esmm`` command line: a thin layer over the Python API.

Each subcommand parses flags, calls one documented function, and prints. Any
:class:`ValueError`/``RuntimeError`` subclass raised for bad input becomes a
one-line ``esmm: error: ...`` message and exit status 2, not a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from esmm import __version__

Handler = Callable[[argparse.Namespace], int]


def _csv_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


# Training options shared by train, demo and compare: (flag, RunConfig.replace keyword, type, help).
TRAIN_OPTIONS: tuple[tuple[str, str, Callable[[str], Any], str], ...] = (
    ("--epochs", "epochs", int, "maximum epochs (default 4)"),
    ("--batch-size", "batch_size", int, "rows per training step (default 2048)"),
    ("--lr", "lr", float, "Adam learning rate (default 2e-3)"),
    ("--early-stop-metric", "early_stop_metric", str,
     "valid metric to early-stop on (default ctcvr_auc)"),
    ("--patience", "patience", int,
     "validations without improvement before stopping (default 1)"),
    ("--validations-per-epoch", "validations_per_epoch", int,
     "valid checks per epoch, evenly spaced; the best check's weights are kept (default 1)"),
    ("--threads", "threads", int, "torch threads (default: the cores idle at start)"),
    ("--precision", "precision", str,
     "fp32 (default) or bf16: the towers' hidden layers train in bfloat16 (mixed precision; "
     "fast only on CPUs with native bf16, e.g. AVX512_BF16/AMX)"),
)


def add_training_options(p: argparse.ArgumentParser) -> None:
    """``--config`` and the TRAIN_OPTIONS flags; read back by :func:`resolve_run_config`."""
    p.add_argument("--config", help="TOML file with [model_config] and [train] sections")
    for flag, _, typ, text in TRAIN_OPTIONS:
        p.add_argument(flag, type=typ, help=text)


def resolve_run_config(a: argparse.Namespace) -> Any:
    """The TOML config (or defaults) with every flag the user gave laid over it."""
    from esmm.config import RunConfig

    base = RunConfig.from_toml(a.config) if a.config else RunConfig()
    return base.replace(model=getattr(a, "model", None), seed=getattr(a, "seed", None),
                        progress=False if a.no_progress else None,
                        **{key: getattr(a, key) for _, key, _, _ in TRAIN_OPTIONS})


# --------------------------------------------------------------------------- synth


def _add_synth(sub: argparse._SubParsersAction) -> None:
    from esmm.synth import WorldConfig

    d = WorldConfig()
    p = sub.add_parser("synth", help="write a simulated Ali-CCP-shaped dataset with ground truth",
                       description="Write a simulated world whose click and conversion "
                       "propensities are known (true_ctr, true_cvr columns).")
    p.add_argument("--out", required=True, help="dataset directory to write")
    p.add_argument("--rows", type=int, default=d.rows, help=f"impressions (default {d.rows:,})")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--click-rate", type=float, default=d.click_rate)
    p.add_argument("--conversion-rate", type=float, default=d.conversion_rate,
                   help="conversion rate among clicked impressions")
    p.add_argument("--selection-bias", type=float, default=d.selection_bias,
                   help="0..1: how differently click and conversion depend on the features")
    p.add_argument("--n-users", type=int, default=None)
    p.add_argument("--n-items", type=int, default=None)
    p.set_defaults(handler=_run_synth)


def _run_synth(a: argparse.Namespace) -> int:
    from esmm.synth import WorldConfig, write_world

    cfg = WorldConfig(rows=a.rows, seed=a.seed, click_rate=a.click_rate,
                      conversion_rate=a.conversion_rate, selection_bias=a.selection_bias,
                      n_users=a.n_users, n_items=a.n_items)
    out = write_world(a.out, cfg)
    print(f"wrote {out}")
    return 0


# --------------------------------------------------------------------------- train


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model on a dataset directory")
    p.add_argument("--data", required=True, help="dataset directory (schema.json + splits)")
    # names are checked by esmm.registry.get_model_spec, which lists them on a typo; not
    # importing the registry here keeps torch out of every other command's start-up
    p.add_argument("--model", default=None,
                   help="esmm, esmm-ns, base, ... (default: from --config, else esmm)")
    p.add_argument("--out", required=True, help="run directory to write")
    add_training_options(p)
    p.add_argument("--seed", type=int, help="initialisation and batch-order seed (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--force", action="store_true", help="overwrite a non-empty run directory")
    p.set_defaults(handler=_run_train)


def _run_train(a: argparse.Namespace) -> int:
    from esmm.api import train
    from esmm.metrics import format_metrics_table

    cfg = resolve_run_config(a)
    metrics = train(a.data, a.out, cfg, force=a.force)
    cols = {f"{cfg.model} valid (epoch {metrics['best_epoch']})": metrics["valid"] or {}}
    if "test" in metrics:
        cols[f"{cfg.model} test"] = metrics["test"]
    print(format_metrics_table(cols))
    print(f"run saved to {a.out}")
    return 0


# --------------------------------------------------------------------------- evaluate


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="the paper's metrics for a run on a dataset split")
    p.add_argument("--run", required=True, help="run directory written by esmm train")
    p.add_argument("--data", required=True, help="dataset directory")
    p.add_argument("--split", default="test", choices=["train", "valid", "test"])
    p.add_argument("--json", help="also write the metrics to this JSON file")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="dtype of the towers' hidden layers when scoring (bf16: faster on CPUs "
                   "with native bfloat16; default fp32)")
    p.set_defaults(handler=_run_evaluate)


def _run_evaluate(a: argparse.Namespace) -> int:
    from esmm.api import evaluate
    from esmm.metrics import format_metrics_table

    metrics = evaluate(a.run, a.data, a.split, precision=a.precision)
    print(format_metrics_table({f"{Path(a.run).name} on {a.split}": metrics}))
    if a.json:
        Path(a.json).write_text(json.dumps(metrics, indent=2) + "\n")
    return 0


# --------------------------------------------------------------------------- import / predict


def _add_import(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import", help="encode your own raw logs (CSV/Parquet) into a dataset",
                       description="Fit vocabularies on train, encode train/valid/test, write a "
                       "dataset directory. The valid split is the tail of train (logs are in "
                       "time order), never taken from test.")
    p.add_argument("--train", required=True, help="raw training log (CSV or Parquet)")
    p.add_argument("--test", help="raw test log (CSV or Parquet)")
    p.add_argument("--valid-fraction", type=float, default=0.1,
                   help="tail fraction of train used as valid (default 0.1)")
    p.add_argument("--categorical", type=_csv_list, default=[], help="comma-separated columns")
    p.add_argument("--multi-categorical", type=_csv_list, default=[],
                   help="comma-separated columns holding 'a|b|c' or 'a:0.5|b:2' bags, or lists")
    p.add_argument("--dense", type=_csv_list, default=[], help="comma-separated numeric columns")
    p.add_argument("--click", default="click", help="click label column (default click)")
    p.add_argument("--conversion", default="conversion",
                   help="conversion label column (default conversion)")
    p.add_argument("--group", help="column identifying the user, for GAUC")
    p.add_argument("--out", required=True, help="dataset directory to write")
    p.add_argument("--min-count", type=int, default=1,
                   help="ids seen fewer times in train map to 0 (default 1)")
    p.add_argument("--on-orphan-conversion", choices=["zero", "drop", "error"], default="zero",
                   help="rows with conversion=1 and click=0: set conversion to 0 (default), "
                   "drop them, or stop")
    p.add_argument("--force", action="store_true", help="write into a non-empty directory")
    p.set_defaults(handler=_run_import)


def _run_import(a: argparse.Namespace) -> int:
    from esmm.importer import ImportSpec, import_logs

    spec = ImportSpec(categorical=tuple(a.categorical), multi_categorical=tuple(a.multi_categorical),
                      dense=tuple(a.dense), click=a.click, conversion=a.conversion, group=a.group,
                      min_count=a.min_count, valid_fraction=a.valid_fraction,
                      on_orphan_conversion=a.on_orphan_conversion)
    report = import_logs(a.train, a.test, a.out, spec, force=a.force)
    print(json.dumps(report, indent=2))
    return 0


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="score raw rows with a trained run (streams in chunks)")
    p.add_argument("--run", required=True, help="run directory written by esmm train")
    p.add_argument("--input", required=True, help="raw rows, CSV or Parquet, values as at import")
    p.add_argument("--output", required=True, help="Parquet file to write")
    p.add_argument("--id-column", help="column copied beside the scores (default: 'id' if the "
                   "input has one, else a 0-based row_id)")
    p.add_argument("--chunk-rows", type=int, default=262144, help="rows scored per chunk")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="dtype of the towers' hidden layers (bf16: about 2x faster on CPUs "
                   "with native bfloat16, scores within ~1e-3; default fp32)")
    p.set_defaults(handler=_run_predict)


def _run_predict(a: argparse.Namespace) -> int:
    from esmm.predict import predict_file

    stats = predict_file(a.run, a.input, a.output, id_column=a.id_column,
                         chunk_rows=a.chunk_rows, precision=a.precision)
    print(json.dumps(stats, indent=2))
    return 0


# --------------------------------------------------------------------------- demo


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="simulate a world, train base and esmm, compare them",
                       description="The main job on the built-in simulated world: synth, train "
                       "`base` and `esmm` with the same settings, print test metrics side by side.")
    p.add_argument("--out", default="demo", help="working directory (default ./demo)")
    p.add_argument("--rows", type=int, default=None, help="impressions in the world "
                   "(default 1,000,000)")
    p.add_argument("--seeds", type=int, default=1, help="repeat over seeds 0..N-1 (mean ± std)")
    p.add_argument("--models", type=_csv_list, default=["base", "esmm"])
    add_training_options(p)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--force", action="store_true",
                   help="retrain runs finished earlier (default: reuse them)")
    p.set_defaults(handler=_run_demo)


def _run_demo(a: argparse.Namespace) -> int:
    from esmm.demo import format_demo_table, run_demo
    from esmm.synth import WorldConfig

    world = WorldConfig(rows=a.rows) if a.rows else WorldConfig()
    results = run_demo(a.out, models=tuple(a.models), seeds=tuple(range(a.seeds)), world=world,
                       config=resolve_run_config(a), force=a.force)
    print(format_demo_table(results))
    print(f"\nruns and demo_results.json in {a.out}")
    return 0


# --------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="esmm", description="Entire Space Multi-task Model (ESMM) for post-click "
        "conversion rate estimation: simulate, import, train, evaluate, predict.")
    parser.add_argument("--version", action="version", version=f"esmm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_synth, _add_import, _add_train, _add_evaluate, _add_predict, _add_demo):
        add(sub)
    for extra in _EXTRA_COMMANDS:
        extra(sub)
    return parser


# Subcommands that live beside their own module (e.g. the Ali-CCP reader) register here.
_EXTRA_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = []


def _load_extra_commands() -> None:
    import importlib

    for module in ("esmm.aliccp.cli", "esmm.compare"):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name and module.startswith(e.name):
                continue  # that part is not installed in this build
            raise
        _EXTRA_COMMANDS.append(mod.add_parser)


def main(argv: Sequence[str] | None = None) -> int:
    if not _EXTRA_COMMANDS:
        _load_extra_commands()
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except (ValueError, RuntimeError, FileNotFoundError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"esmm: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("esmm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
