"""Images with RGB colour-coded masks (the IPMN seed's format) → common format.

Layout::

    <src>/images/<name>.<png|jpg|bmp|tif>
    <src>/masks/<name><suffix>.<png|jpg|bmp|tif>       suffix "" or e.g. "_mask"

A colour map gives each mask colour a label; its first entry must be ``background`` (label 0), the others get
1, 2, ... in the map's order. An unknown colour is an error; ``tolerance`` maps colours within that Euclidean RGB
distance of a map colour to the nearest one (for masks damaged by JPEG compression).
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np

from .common import DatasetInfo, SourceCase, limit_cases, list_images, read_image, safe_case_id, write_dataset
from .errors import DataError

__all__ = ["COLOUR_MAPS", "colours_to_labels", "convert_rgb_masks", "load_colour_map", "scan_rgb_masks"]

COLOUR_MAPS: dict[str, dict[str, tuple[int, int, int]]] = {
    "ipmn2": {"background": (0, 0, 0), "ipmn": (255, 255, 255)},
    "ipmn3": {"background": (0, 0, 0), "ipmn": (255, 255, 255), "other_tissue": (128, 128, 128)},
}
AUTO_SUFFIXES = ("", "_mask")
EXPECTED = "expected <src>/images/<name>.png|jpg|bmp|tif and <src>/masks/<name><suffix>.png|jpg|bmp|tif"


def convert_rgb_masks(
    src: str | Path,
    out: str | Path,
    colour_map: str | Path | dict = "ipmn3",
    tolerance: float = 0.0,
    mask_suffix: str | None = None,
    overwrite: bool = False,
    seed: int = 0,
    name: str | None = None,
    licence: str = "unknown",
    limit: int | None = None,
) -> dict:
    """Convert an images/ + masks/ folder pair with colour-coded masks into the common format.

    Args:
        src: folder holding ``images/`` and ``masks/``.
        out: output folder.
        colour_map: a preset name (``ipmn2``, ``ipmn3``), a JSON file ``{"background": [0,0,0], ...}`` or a dict.
        tolerance: map mask colours within this RGB distance to the nearest map colour (0 = exact colours only).
        mask_suffix: mask file stem = image stem + suffix; ``None`` tries ``""`` then ``"_mask"``.
        overwrite: replace an existing output folder.
        seed: fold seed.
        name: dataset name (default: the source folder's name).
        licence: licence to record.
        limit: convert only the first ``limit`` cases (for trials).

    Returns:
        Conversion statistics.
    """
    src = Path(src)
    cmap = load_colour_map(colour_map)
    cases = limit_cases(scan_rgb_masks(src, cmap, tolerance, mask_suffix), limit)
    preset = colour_map if isinstance(colour_map, str) and colour_map in COLOUR_MAPS else "custom"
    info = DatasetInfo(
        name=name or src.name,
        description=f"Images with RGB colour-coded masks ({len(cmap)} classes, colour map {preset}).",
        labels={label: i for i, label in enumerate(cmap)},
        source=str(src),
        licence=licence,
        converter=f"lesiondata.rgb_masks.convert_rgb_masks(colour_map={preset!r}, tolerance={tolerance}, seed={seed})",
        extra={"colour_map": {k: list(v) for k, v in cmap.items()}},
    )
    return write_dataset(cases, out, info, overwrite=overwrite, seed=seed)


def load_colour_map(colour_map: str | Path | dict) -> dict[str, tuple[int, int, int]]:
    """A colour map from a preset name, a JSON file or a dict; ``background`` first.

    Raises:
        DataError: unknown preset, unreadable file, bad colours, duplicate colours or no ``background``.
    """
    if isinstance(colour_map, dict):
        raw, where = colour_map, None
    elif str(colour_map) in COLOUR_MAPS:
        raw, where = COLOUR_MAPS[str(colour_map)], None
    else:
        where = Path(colour_map)
        if not where.is_file():
            raise DataError(where, "unknown colour map", f"use a preset {sorted(COLOUR_MAPS)} or a JSON file path")
        try:
            raw = json.loads(where.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(where, f"colour map is not valid JSON ({exc})") from exc
    return _validate_colour_map(raw, where)


def _validate_colour_map(raw: object, where: Path | None) -> dict[str, tuple[int, int, int]]:
    example = 'write {"background": [0, 0, 0], "lesion": [255, 255, 255]}'
    if not isinstance(raw, dict) or "background" not in raw:
        raise DataError(where, "colour map must be an object with a 'background' entry", example)
    cmap: dict[str, tuple[int, int, int]] = {}
    for label in ["background", *[k for k in raw if k != "background"]]:
        colour = raw[label]
        if not (isinstance(colour, (list, tuple)) and len(colour) == 3 and all(0 <= int(c) <= 255 for c in colour)):
            raise DataError(where, f"colour of {label!r} must be [R, G, B] in 0..255, got {colour!r}", example)
        cmap[str(label)] = tuple(int(c) for c in colour)
    if len(set(cmap.values())) != len(cmap):
        raise DataError(where, "two labels share a colour in the colour map", "give every label its own colour")
    return cmap


def scan_rgb_masks(
    src: Path, cmap: dict[str, tuple[int, int, int]], tolerance: float = 0.0, mask_suffix: str | None = None
) -> list[SourceCase]:
    """Pair images with masks by stem.

    Raises:
        DataError: missing folders, no images, an image without mask or a mask without image.
    """
    images_dir, masks_dir = src / "images", src / "masks"
    for folder in (images_dir, masks_dir):
        if not folder.is_dir():
            raise DataError(folder, "folder not found", EXPECTED)
    images = list_images(images_dir)
    if not images:
        raise DataError(images_dir, "no images found", EXPECTED)
    masks = {p.stem: p for p in list_images(masks_dir)}
    suffixes = AUTO_SUFFIXES if mask_suffix is None else (mask_suffix,)
    cases, used = [], set()
    for image in images:
        mask = next((masks[image.stem + s] for s in suffixes if image.stem + s in masks), None)
        if mask is None:
            raise DataError(image, f"no mask masks/{image.stem}{suffixes[-1]}.<ext> for this image", EXPECTED)
        used.add(mask.stem)
        label = partial(_label, mask, cmap, tolerance)
        cases.append(SourceCase(safe_case_id(image.stem), image, label, label_path=mask))
    orphans = sorted(set(masks) - used)
    if orphans:
        raise DataError(
            masks[orphans[0]],
            f"{len(orphans)} mask(s) have no image, e.g. this one",
            "remove them or fix the names (or set --mask_suffix)",
        )
    return cases


def _label(mask_path: Path, cmap: dict[str, tuple[int, int, int]], tolerance: float, image: np.ndarray) -> np.ndarray:
    mask = read_image(mask_path, what="mask")
    if mask.ndim == 2:
        mask = np.repeat(mask[..., None], 3, axis=2)
    return colours_to_labels(mask.astype(np.uint8), cmap, tolerance, mask_path)


def colours_to_labels(
    mask: np.ndarray, cmap: dict[str, tuple[int, int, int]], tolerance: float = 0.0, path: Path | None = None
) -> np.ndarray:
    """Map an RGB mask (H x W x 3) to consecutive labels.

    Args:
        mask: the RGB mask.
        cmap: label name → colour; labels are 0, 1, ... in the map's order.
        tolerance: maximum Euclidean RGB distance for a colour that is not in the map exactly.
        path: the mask file, for errors.

    Raises:
        DataError: a colour farther than ``tolerance`` from every map colour (the error names it).
    """
    packed = (mask[..., 0].astype(np.int32) << 16) | (mask[..., 1].astype(np.int32) << 8) | mask[..., 2]
    colours, inverse, counts = np.unique(packed.ravel(), return_inverse=True, return_counts=True)
    rgb = np.stack([(colours >> 16) & 255, (colours >> 8) & 255, colours & 255], axis=1).astype(np.float64)
    palette = np.asarray(list(cmap.values()), dtype=np.float64)
    dist = np.linalg.norm(rgb[:, None, :] - palette[None, :, :], axis=2)
    nearest = dist.argmin(axis=1)
    bad = dist[np.arange(len(colours)), nearest] > tolerance
    if bad.any():
        i = int(np.flatnonzero(bad)[np.argmax(counts[bad])])
        colour = tuple(int(c) for c in rgb[i])
        raise DataError(
            path,
            f"unknown mask colour RGB{colour} ({int(counts[i])} pixels; {int(bad.sum())} unknown colour(s) in all); "
            f"known: {', '.join(f'{k}={v}' for k, v in cmap.items())}",
            "add it to the colour map, or pass --tolerance N to snap near colours (e.g. JPEG-damaged masks)",
        )
    return nearest.astype(np.uint8)[inverse].reshape(mask.shape[:2])
