"""Evaluation report: true per-image and pooled Dice/Jaccard, curves, confusion matrix and overlays (PNG)."""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from .handlers import atomic_write_json  # noqa: E402


def _stats(values: list[float]) -> dict[str, float]:
    a = np.asarray([v for v in values if np.isfinite(v)])
    if a.size == 0:
        return {"n": 0}
    return {"n": int(a.size), "mean": float(a.mean()), "median": float(np.median(a)), "worst": float(a.min())}


def plot_curves(history: list[dict], path: Path) -> None:
    """Training loss and validation metrics against epochs."""
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [h["loss"] for h in history], label="train loss")
    ax1.set_xlabel("epoch"), ax1.set_title("training loss"), ax1.legend()
    for key in ("val_mean_dice", "val_mean_iou"):
        if any(key in h for h in history):
            ax2.plot([h["epoch"] for h in history if key in h], [h[key] for h in history if key in h], label=key)
    ax2.set_xlabel("epoch"), ax2.set_title("validation (resized grid)"), ax2.set_ylim(0, 1), ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(matrix: list[list[int]], labels: Mapping[str, int], path: Path) -> None:
    """Row-normalised pixel confusion matrix with the raw counts in each cell."""
    m = np.asarray(matrix, dtype=np.float64)
    norm = m / np.maximum(m.sum(1, keepdims=True), 1)
    names = [n for n, _ in sorted(labels.items(), key=lambda kv: kv[1])]
    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 2, 1.6 * len(names) + 1.5))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, f"{norm[i, j]:.3f}\n({int(m[i, j])})", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(names)), names), ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("prediction"), ax.set_ylabel("truth"), ax.set_title("pixel confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def overlay(image_path: str, label_path: str | None, pred_path: Path) -> np.ndarray:
    """RGB picture of the image with the ground truth outline in green and the prediction filled in red."""
    img = np.asarray(Image.open(image_path).convert("RGB"), dtype=np.float32) / 255
    pred = np.asarray(Image.open(pred_path)) > 0
    out = img.copy()
    out[pred] = 0.55 * out[pred] + 0.45 * np.array([1.0, 0.0, 0.0])
    if label_path:
        from scipy import ndimage

        truth = np.asarray(Image.open(label_path)) > 0
        edge = truth & ~ndimage.binary_erosion(truth, iterations=2)
        out[edge] = [0.0, 1.0, 0.0]
    return out


def plot_cases(cases: list[tuple[str, float]], items: dict[str, dict], pred_dir: Path, path: Path, title: str) -> None:
    """A row of overlays for the given (image, score) pairs."""
    if not cases:
        return
    fig, axes = plt.subplots(1, len(cases), figsize=(3.2 * len(cases), 3.4), squeeze=False)
    for ax, (name, score) in zip(axes[0], cases, strict=True):
        stem = Path(name).name.split(".")[0]
        pred = pred_dir / f"{stem}_seg.png"
        if pred.is_file():
            ax.imshow(overlay(name, items.get(name, {}).get("label"), pred))
        ax.set_title(f"{stem}\nDice {score:.3f}", fontsize=8)
        ax.axis("off")
    fig.suptitle(title + " (red: prediction, green: truth outline)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def image_scores(truth: np.ndarray, pred: np.ndarray, num_classes: int) -> dict[str, dict]:
    """True per-class Dice and Jaccard of one image; an image whose truth and prediction are both empty scores 1."""
    out = {}
    for c in range(1, num_classes):
        t, p = truth == c, pred == c
        tp, fp, fn = int((t & p).sum()), int((~t & p).sum()), int((t & ~p).sum())
        denom = 2 * tp + fp + fn
        out[str(c)] = {
            "dice": 2 * tp / denom if denom else 1.0,
            "jaccard": tp / (tp + fp + fn) if denom else 1.0,
            "truth_empty": not t.any(),
            "pred_empty": not p.any(),
            "tp": tp,
            "fp": fp,
            "fn": fn,
        }
    return out


def summarise_scores(per_image: dict[str, dict[str, dict]], num_classes: int) -> dict:
    """Per-image statistics over cases with a non-empty truth and over all cases, pooled scores, empty cases."""
    summary: dict = {"n_images": len(per_image), "classes": {}}
    for c in map(str, range(1, num_classes)):
        rows = [s[c] for s in per_image.values()]
        nonempty = [r for r in rows if not r["truth_empty"]]
        empty = [r for r in rows if r["truth_empty"]]
        tp, fp, fn = (sum(r[k] for r in rows) for k in ("tp", "fp", "fn"))
        denom = 2 * tp + fp + fn
        summary["classes"][c] = {
            "dice_nonempty": _stats([r["dice"] for r in nonempty]),
            "jaccard_nonempty": _stats([r["jaccard"] for r in nonempty]),
            "dice_all": _stats([r["dice"] for r in rows]),
            "pooled_dice": 2 * tp / denom if denom else 1.0,
            "pooled_jaccard": tp / (tp + fp + fn) if denom else 1.0,
            # which way the errors lean: pixels predicted outside the truth, and truth pixels missed, each as a
            # fraction of the truth's area over the split (a model that over-segments has the first larger)
            "false_positive_fraction": fp / (tp + fn) if tp + fn else float(fp > 0),
            "false_negative_fraction": fn / (tp + fn) if tp + fn else 0.0,
            "empty_truth_cases": len(empty),
            "empty_predicted_empty": sum(r["pred_empty"] for r in empty),
        }
    return summary


def write_report(
    output_dir: str, history_path: str, labels: Mapping[str, int], items: list[dict], n_cases: int = 4
) -> dict:
    """Score an ``evaluate`` run from the saved masks and write ``metrics_summary.json``, ``per_image.csv`` and PNGs.

    Scores are computed at each image's original size from ``<output_dir>/predictions/<stem>_seg.png`` and the
    label files of ``items``: true Dice and Jaccard per image (mean, median, worst over cases whose truth is not
    empty, and over all cases), pooled over the split, and how many empty-truth cases were predicted empty.
    """
    out = Path(output_dir)
    pred_dir = out / "predictions"
    num_classes = max(int(v) for v in labels.values()) + 1
    per_image: dict[str, dict] = {}
    by_name = {}
    for item in items:
        stem = Path(item["image"]).name.split(".")[0]
        pred_path = pred_dir / f"{stem}_seg.png"
        if "label" not in item or not pred_path.is_file():
            continue
        truth = np.asarray(Image.open(item["label"]))
        pred = np.asarray(Image.open(pred_path))
        if truth.shape != pred.shape:
            raise ValueError(f"{pred_path}: prediction {pred.shape} and label {truth.shape} differ in size.")
        per_image[item["image"]] = image_scores(truth, pred, num_classes)
        by_name[item["image"]] = item
    summary = summarise_scores(per_image, num_classes)
    with (out / "per_image.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "class", "dice", "jaccard", "truth_empty", "pred_empty", "tp", "fp", "fn"])
        for name, scores in per_image.items():
            for c, r in scores.items():
                writer.writerow(
                    [name, c, f"{r['dice']:.6f}", f"{r['jaccard']:.6f}", r["truth_empty"], r["pred_empty"]]
                    + [r["tp"], r["fp"], r["fn"]]
                )
    cm_path = out / "confusion_matrix.json"
    if cm_path.is_file():
        plot_confusion(json.loads(cm_path.read_text())["matrix"], labels, out / "confusion_matrix.png")
    hist = Path(history_path)
    if hist.is_file() and (history := json.loads(hist.read_text())):
        plot_curves(history, out / "curves.png")
    first = [(n, s["1"]["dice"]) for n, s in per_image.items() if "1" in s and not s["1"]["truth_empty"]]
    if first:
        ranked = sorted(first, key=lambda kv: kv[1])
        plot_cases(ranked[:n_cases], by_name, pred_dir, out / "worst_cases.png", "worst cases")
        plot_cases(ranked[::-1][:n_cases], by_name, pred_dir, out / "best_cases.png", "best cases")
        plot_histogram([d for _, d in first], out / "dice_histogram.png")
    atomic_write_json(out / "metrics_summary.json", summary)
    print(json.dumps(summary, indent=2))
    return summary


def plot_histogram(values: list[float], path: Path) -> None:
    """Histogram of per-image Dice."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.hist(values, bins=20, range=(0, 1))
    ax.set_xlabel("per-image Dice (label 1)"), ax.set_ylabel("images"), ax.set_title(f"n = {len(values)}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
