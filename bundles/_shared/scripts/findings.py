"""Plain-language findings per predicted mask, for readers who cannot read a segmentation.

Computed from the prediction only (no language model): for each label, whether it was found, its area as a
fraction of the image (and in mm^2 where the pixel spacing is known), its bounding box and the model's mean
confidence inside it.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from .handlers import atomic_write_json
from .transforms import plain_tensor


def summarise(
    mask: np.ndarray,
    prob: np.ndarray | None,
    labels: Mapping[str, int],
    spacing_mm: tuple[float, float] | None = None,
    min_pixels: int = 1,
) -> dict:
    """Findings for one 2D label map.

    Args:
        mask: (X, Y) integer label map, MONAI's reverse-indexed order: axis 0 is x (columns), axis 1 is y (rows).
        prob: (C, X, Y) class probabilities, or None.
        labels: name -> value, including ``background: 0``.
        spacing_mm: pixel size (x, y) in mm, or None where unknown (PNG/JPG without calibration).
        min_pixels: a label with fewer pixels is reported as not found.

    Returns:
        ``{"image_size": [w, h], "findings": [...], "summary": "<sentence>"}``.
    """
    width, height = int(mask.shape[0]), int(mask.shape[1])
    findings, sentences = [], []
    for name, value in labels.items():
        if int(value) == 0:
            continue
        where = mask == int(value)
        n = int(where.sum())
        item: dict = {"label": name, "value": int(value), "found": n >= min_pixels, "pixels": n}
        item["area_fraction"] = n / float(width * height)
        if spacing_mm is not None:
            item["area_mm2"] = n * float(spacing_mm[0]) * float(spacing_mm[1])
        if n >= min_pixels:
            xs, ys = np.flatnonzero(where.any(axis=1)), np.flatnonzero(where.any(axis=0))  # occupied columns, rows
            item["bbox_xyxy"] = [int(xs[0]), int(ys[0]), int(xs[-1]), int(ys[-1])]
            if prob is not None:
                item["mean_confidence"] = float(prob[int(value)][where].mean())
            text = f"{name} found: it covers {100 * item['area_fraction']:.1f}% of the image ({n} pixels"
            text += f", {item['area_mm2']:.1f} mm²)" if "area_mm2" in item else ")"
            x0, y0, x1, y1 = item["bbox_xyxy"]
            text += f", within columns {x0}-{x1} and rows {y0}-{y1}"
            if "mean_confidence" in item:
                text += f"; the model's mean confidence there is {item['mean_confidence']:.2f}"
            sentences.append(text + ".")
        else:
            if prob is not None:
                item["max_probability"] = float(prob[int(value)].max())
            sentences.append(f"No {name} found.")
        findings.append(item)
    summary = " ".join(sentences) + " This is an automatic measurement, not a diagnosis."
    return {"image_size": [width, height], "findings": findings, "summary": summary}


class Findingsd(MapTransform):
    """Write ``<output_dir>/<image stem>_findings.json`` with :func:`summarise`'s result, and keep it in the data.

    Args:
        keys: the label-map key (after inversion to the original size and argmax).
        prob_key: key of the softmax probabilities at the original size (optional).
        labels: name -> value (the bundle's ``labels``).
        output_dir: folder for the JSON files; None keeps the result in memory only.
        pixel_spacing_mm: pixel size in mm when known for every image (PNG/JPG carry none); None falls back to
            the image's own spacing for NIfTI inputs and omits mm^2 otherwise.
    """

    def __init__(
        self,
        keys: KeysCollection,
        labels: Mapping[str, int],
        prob_key: str | None = None,
        output_dir: str | None = None,
        pixel_spacing_mm: float | list[float] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.labels, self.prob_key, self.output_dir = dict(labels), prob_key, output_dir
        if pixel_spacing_mm is not None and not isinstance(pixel_spacing_mm, (list, tuple)):
            pixel_spacing_mm = [pixel_spacing_mm, pixel_spacing_mm]
        self.pixel_spacing_mm = pixel_spacing_mm

    def _spacing(self, img) -> tuple[float, float] | None:
        if self.pixel_spacing_mm is not None:
            return float(self.pixel_spacing_mm[0]), float(self.pixel_spacing_mm[1])
        meta = getattr(img, "meta", {})
        name = str(meta.get("filename_or_obj", ""))
        if name.endswith((".nii", ".nii.gz")) and "pixdim" in meta:
            pixdim = meta["pixdim"]
            return float(pixdim[1]), float(pixdim[2])
        return None

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            mask = plain_tensor(img).detach().cpu().numpy()[0]
            prob = None
            if self.prob_key and self.prob_key in d:
                prob = plain_tensor(d[self.prob_key]).detach().float().cpu().numpy()
            result = summarise(mask, prob, self.labels, self._spacing(img))
            source = str(getattr(img, "meta", {}).get("filename_or_obj", ""))
            result["image"] = source
            d[f"{key}_findings"] = result
            if self.output_dir and source:
                stem = Path(source).name.split(".")[0]
                atomic_write_json(os.path.join(self.output_dir, f"{stem}_findings.json"), result)
        return d
