"""Compare folders of predicted masks: pixel agreement between two runs, Dice against the reference labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["dice", "mask_agreement", "mean_dice"]


def _masks(folder: str | Path, suffix: str) -> dict[str, np.ndarray]:
    files = sorted(Path(folder).glob(f"*{suffix}"))
    if not files:
        raise FileNotFoundError(f"no *{suffix} masks in {folder}.")
    return {f.name.removesuffix(suffix): np.asarray(Image.open(f)) for f in files}


def mask_agreement(reference_dir: str | Path, other_dir: str | Path, suffix: str = "_seg.png") -> dict[str, float]:
    """Fraction of pixels with the same label in two folders of masks (same names), pooled over all images.

    Returns:
        ``{"agreement": pooled fraction, "worst_image": lowest per-image fraction, "n_images": n}``.

    Raises:
        ValueError: the folders hold different image names or a mask differs in size.
    """
    ref, other = _masks(reference_dir, suffix), _masks(other_dir, suffix)
    if set(ref) != set(other):
        raise ValueError(f"{reference_dir} and {other_dir} hold different masks: {sorted(set(ref) ^ set(other))[:5]}.")
    same = total = 0
    worst = 1.0
    for name, a in ref.items():
        b = other[name]
        if a.shape != b.shape:
            raise ValueError(f"{name}: mask sizes differ ({a.shape} vs {b.shape}).")
        equal = int((a == b).sum())
        same, total, worst = same + equal, total + a.size, min(worst, equal / a.size)
    return {"agreement": same / total, "worst_image": worst, "n_images": len(ref)}


def dice(pred: np.ndarray, truth: np.ndarray, label: int = 1) -> float:
    """Dice of one label; 1.0 when both are empty."""
    p, t = pred == label, truth == label
    denominator = int(p.sum() + t.sum())
    return 1.0 if denominator == 0 else 2.0 * int((p & t).sum()) / denominator


def mean_dice(pred_dir: str | Path, labels_dir: str | Path, suffix: str = "_seg.png", label: int = 1) -> float:
    """Mean over images of the Dice of ``label`` between ``<pred_dir>/<case><suffix>`` and ``<labels_dir>/<case>.png``."""
    preds = _masks(pred_dir, suffix)
    scores = [
        dice(mask, np.asarray(Image.open(Path(labels_dir) / f"{name}.png")), label) for name, mask in preds.items()
    ]
    return float(np.mean(scores))
