"""K-fold cross-validation of a bundle: one training per fold, each fold's best model kept, a summary of all folds.

Fold ``k`` trains on the items of the datalist with ``fold != k`` and validates on ``fold == k`` (the bundle's
``fold`` key), into ``<models_dir>/fold<k>/`` (``model.pt``, ``model.json``, ``history.json``).
``configs/ensemble_evaluate.json`` and ``configs/ensemble_inference.json`` use these models as an ensemble.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .bundles import override_args, resolve_bundle, run_monai_bundle

__all__ = ["NUM_FOLDS", "summarise_folds", "train_fold", "train_folds"]

NUM_FOLDS = 5
SUMMARY_NAME = "folds_summary.json"
RESERVED = ("fold", "ckpt_dir", "config_file", "bundle_root")


def train_fold(
    bundle: str | Path, fold: int, models_dir: str | Path | None = None, quiet: bool = False, **overrides: Any
) -> Path:
    """Train one fold: ``python -m monai.bundle run --config_file configs/train.json --fold k --ckpt_dir ...``.

    Args:
        bundle: bundle name or folder.
        fold: the validation fold.
        models_dir: parent of the fold folders; default ``<bundle>/models``. TensorBoard logs go to
            ``<models_dir>/../eval/fold<k>`` unless ``output_dir`` is overridden.
        quiet: capture the training output (shown only on failure).
        overrides: config keys passed to ``monai.bundle run`` (``dataset_dir``, ``max_epochs``, ...).

    Returns:
        The fold's checkpoint folder.
    """
    bad = [k for k in RESERVED if k in overrides]
    if bad:
        raise ValueError(f"{', '.join(bad)} is set by train_folds itself; use --fold / --models_dir instead.")
    root = resolve_bundle(bundle)
    models = Path(models_dir).resolve() if models_dir else root / "models"
    ckpt_dir = models / f"fold{int(fold)}"
    values = {"output_dir": str(models.parent / "eval" / f"fold{int(fold)}"), **overrides}
    args = ["run", "--config_file", "configs/train.json", "--bundle_root", str(root), "--fold", str(int(fold))]
    args += ["--ckpt_dir", str(ckpt_dir), *override_args(values)]
    run_monai_bundle(root, args, quiet=quiet)
    if not (ckpt_dir / "model.pt").is_file():
        raise RuntimeError(f"fold {fold} finished without {ckpt_dir / 'model.pt'}: no validation epoch was run.")
    return ckpt_dir


def _fold_summary(ckpt_dir: Path) -> dict[str, Any]:
    best = json.loads((ckpt_dir / "model.json").read_text())
    history_path = ckpt_dir / "history.json"
    history = json.loads(history_path.read_text()) if history_path.is_file() else []
    epoch = int(best.get("epoch", 0))
    row = next((h for h in history if h.get("epoch") == epoch), {})
    metrics = {k: v for k, v in row.items() if k.startswith("val_")}
    metrics.update({k: v for k, v in best.items() if k != "epoch"})
    return {
        "fold": int(ckpt_dir.name.removeprefix("fold")),
        "checkpoint": str(ckpt_dir / "model.pt"),
        "best_epoch": epoch,
        "epochs_run": len(history),
        "train_seconds": round(sum(h.get("epoch_seconds", 0.0) for h in history), 1),
        "best": metrics,
    }


def summarise_folds(models_dir: str | Path) -> dict[str, Any]:
    """Per-fold best metrics (from each ``fold<k>/model.json`` and the matching ``history.json`` row) and their
    mean and standard deviation over the folds found.

    Raises:
        FileNotFoundError: no ``fold<k>/model.json`` under ``models_dir``.
    """
    dirs = sorted(
        (p.parent for p in Path(models_dir).glob("fold*/model.json") if re.fullmatch(r"fold\d+", p.parent.name)),
        key=lambda p: int(p.name.removeprefix("fold")),
    )
    if not dirs:
        raise FileNotFoundError(f"no fold<k>/model.json under {models_dir}: train folds first.")
    folds = [_fold_summary(d) for d in dirs]
    names = sorted(set.intersection(*(set(f["best"]) for f in folds)))
    mean, std = {}, {}
    for name in names:
        values = [float(f["best"][name]) for f in folds]
        mean[name] = sum(values) / len(values)
        std[name] = math.sqrt(sum((v - mean[name]) ** 2 for v in values) / len(values))
    return {"n_folds": len(folds), "folds": folds, "mean": mean, "std": std}


def train_folds(
    bundle: str | Path,
    fold: int | Sequence[int] | None = None,
    num_folds: int = NUM_FOLDS,
    models_dir: str | Path | None = None,
    quiet: bool = False,
    **overrides: Any,
) -> dict[str, Any]:
    """Train the folds of a bundle one after the other and write ``<models_dir>/folds_summary.json``.

    Args:
        bundle: bundle name or folder.
        fold: one fold or a list of folds; default every fold ``0 .. num_folds - 1``.
        num_folds: number of folds in the datalist (5 for the converters' output).
        models_dir: parent of the fold folders; default ``<bundle>/models``.
        quiet: capture each training's output (shown only on failure).
        overrides: config keys passed to every training (``dataset_dir``, ``max_epochs``, ``network``, ...).

    Returns:
        The summary (also written to disk), covering every fold found under ``models_dir``, including folds
        trained by earlier runs.
    """
    root = resolve_bundle(bundle)
    models = Path(models_dir).resolve() if models_dir else root / "models"
    folds = (
        list(range(int(num_folds))) if fold is None else [int(f) for f in ([fold] if isinstance(fold, int) else fold)]
    )
    bad = [f for f in folds if not 0 <= f < int(num_folds)]
    if bad:
        raise ValueError(f"fold must be in 0..{int(num_folds) - 1}; got {bad}.")
    for k in folds:
        start = time.perf_counter()
        print(f"fold {k}: training into {models / f'fold{k}'}", flush=True)
        train_fold(root, k, models_dir=models, quiet=quiet, **overrides)
        print(f"fold {k}: done in {time.perf_counter() - start:.0f} s", flush=True)
    summary = {"bundle": root.name, "overrides": {k: str(v) for k, v in overrides.items()}, **summarise_folds(models)}
    (models / SUMMARY_NAME).write_text(json.dumps(summary, indent=2) + "\n")
    return summary
