#!/usr/bin/env python
"""Train the five cross-validation folds of a bundle, keep each fold's best model and summarise the folds.

Usage::

    python scripts/train_folds.py --bundle ph2_melanoma --dataset_dir data/prepared/ph2          # folds 0..4
    python scripts/train_folds.py --bundle ph2_melanoma --fold 2 --dataset_dir data/prepared/ph2 # one fold
    python scripts/train_folds.py --bundle brain_tumor --max_epochs 30 --network segresnet ...   # any train.json key

Fold ``k`` runs ``python -m monai.bundle run --config_file configs/train.json --fold k --ckpt_dir
<bundle>/models/fold<k> ...`` and keeps ``model.pt``, ``model.json`` and ``history.json`` there; the summary of
every fold found goes to ``<bundle>/models/folds_summary.json`` and is printed. Ensembles of the fold models:
``configs/ensemble_evaluate.json`` / ``configs/ensemble_inference.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import fire

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lesiondata.crossval import train_folds  # noqa: E402


def main(
    bundle: str, fold: int | list[int] | None = None, models_dir: str | None = None, quiet: bool = False, **overrides
) -> None:
    """CLI over :func:`lesiondata.crossval.train_folds`; extra ``--key value`` pairs override ``train.json`` keys."""
    summary = train_folds(bundle, fold=fold, models_dir=models_dir, quiet=quiet, **overrides)
    print(json.dumps({"n_folds": summary["n_folds"], "mean": summary["mean"], "std": summary["std"]}, indent=2))


if __name__ == "__main__":
    fire.Fire(main)
