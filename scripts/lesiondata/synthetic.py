"""Small synthetic datasets in each source's *raw* layout, so every converter and bundle can run end to end.

Kinds (the raw layout they imitate):

* ``ph2`` – dermoscopy-like RGB (skin tone, texture, darker irregular lesion), PH2 folder layout, ``.bmp`` (or
  ``.png``) and ``PH2_dataset.csv`` (or the '||' ``.txt``) with diagnoses.
* ``coco`` – MRI-like slices (grey stored as 3-channel JPEG, bright lesion) in a Roboflow COCO export with
  ``train/`` and ``valid/``; polygons (or RLE), some images with two lesions, some with none.
* ``trus_coco`` – the same Roboflow layout with ultrasound-like images (dark region in speckle).
* ``ctrus`` – ultrasound-like grey JPEGs with JPEG masks and a patient CSV (C-TRUS layout), some empty masks.
* ``ipmn`` – H&E-like RGB with colour-coded masks (white IPMN, grey other tissue, black background; 2- or 3-class).
* ``glas`` – H&E-like RGB with instance masks (GlaS layout) and ``Grade.csv``, with a ``testA`` split.

Everything is deterministic given ``seed`` (case ``i`` does not depend on ``n``). Images are non-square by default,
so that a swapped height and width shows up. Lesions differ clearly in intensity or colour from their surroundings.
"""

from __future__ import annotations

import csv
import hashlib
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy.ndimage import binary_dilation, gaussian_filter

from .coco import convert_coco
from .common import atomic_output
from .csv_folders import convert_csv_folders
from .errors import DataError
from .instance_masks import convert_instance_masks
from .ph2 import convert_ph2
from .rgb_masks import COLOUR_MAPS, convert_rgb_masks
from .rle import counts_to_string, mask_to_counts, polygon_to_mask

__all__ = ["ALIASES", "DESCRIPTIONS", "KINDS", "convert_raw", "ensure_raw", "make_demo_dataset", "make_raw"]

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_RAW_ROOT = REPO_ROOT / "data" / "raw"
MARKER = ".samples.json"
Size = tuple[int, int]  # (width, height)


# ------------------------------------------------------------------------------------------------- shape helpers
def _rng(seed: int, i: int, salt: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, i, salt])


def _texture(rng: np.random.Generator, h: int, w: int, sigma: float) -> np.ndarray:
    """Smooth noise with unit standard deviation."""
    noise = gaussian_filter(rng.standard_normal((h, w)), sigma)
    return noise / (noise.std() + 1e-8)


def _blob(rng: np.random.Generator, cx: float, cy: float, r: float, irregularity: float, aspect: float = 1.0):
    """An irregular closed polygon ``[x1, y1, ...]`` (32 points) around ``(cx, cy)``."""
    theta = np.linspace(0, 2 * np.pi, 32, endpoint=False)
    radius = np.ones_like(theta)
    for k in (2, 3, 4, 5):
        radius += irregularity * rng.uniform(-1, 1) / k * 2 * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    radius = r * np.clip(radius, 0.55, 1.6)
    xy = np.stack([cx + radius * np.cos(theta), cy + aspect * radius * np.sin(theta)], axis=1)
    return [round(float(v), 1) for v in xy.ravel()]


def _clip_polygon(poly: list[float], w: int, h: int) -> list[float]:
    xy = np.asarray(poly).reshape(-1, 2)
    xy[:, 0] = np.clip(xy[:, 0], 0, w)
    xy[:, 1] = np.clip(xy[:, 1], 0, h)
    return [round(float(v), 1) for v in xy.ravel()]


def _blend(base: np.ndarray, top: np.ndarray, mask: np.ndarray, soft: float = 1.0) -> np.ndarray:
    """``top`` over ``base`` where ``mask``, with a slightly blurred edge."""
    alpha = gaussian_filter(mask.astype(np.float64), soft) if soft > 0 else mask.astype(np.float64)
    if base.ndim == 3:
        alpha = alpha[..., None]
    return base * (1 - alpha) + top * alpha


def _u8(a: np.ndarray) -> np.ndarray:
    return np.clip(np.round(a), 0, 255).astype(np.uint8)


def _jpeg(array: np.ndarray, path: Path, quality: int = 92) -> None:
    Image.fromarray(array).save(path, format="JPEG", quality=quality)


def _roboflow_name(i: int, seed: int, copy: int = 0) -> str:
    digest = hashlib.md5(f"{seed}-{i}-{copy}".encode()).hexdigest()
    return f"{i}_jpg.rf.{digest}.jpg"


# ---------------------------------------------------------------------------------------------------------- PH2
def dermoscopy_case(rng: np.random.Generator, size: Size, diagnosis: int) -> tuple[np.ndarray, np.ndarray]:
    """A dermoscopy-like RGB image (skin with texture, darker irregular lesion) and its 0/1 lesion mask."""
    w, h = size
    skin = np.array([222, 172, 148]) + rng.uniform(-12, 12, 3)
    image = skin + 9 * _texture(rng, h, w, 6)[..., None] + 4 * rng.standard_normal((h, w, 3))
    yy, xx = np.mgrid[0:h, 0:w]
    vignette = 1 - 0.12 * ((((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2) / 2) ** 2
    image *= vignette[..., None]
    r = min(w, h) * rng.uniform(0.18, 0.3)
    cx, cy = w / 2 + rng.uniform(-0.1, 0.1) * w, h / 2 + rng.uniform(-0.1, 0.1) * h
    poly = _clip_polygon(_blob(rng, cx, cy, r, 0.12 + 0.08 * diagnosis, rng.uniform(0.75, 1.1)), w, h)
    mask = polygon_to_mask(poly, h, w)
    lesion = np.array([112, 72, 52]) - 14 * diagnosis + rng.uniform(-8, 8, 3)
    lesion = lesion + 10 * _texture(rng, h, w, 2)[..., None]
    return _u8(_blend(image, lesion, mask, 1.2)), mask


def make_ph2_raw(
    out: Path, n: int = 24, seed: int = 0, size: Size = (160, 128), ext: str = ".bmp", table: str = "csv"
) -> None:
    """PH2 layout: ``PH2 Dataset images/IMDnnn/...`` plus ``PH2_dataset.csv`` (or ``.txt`` with ``table="txt"``)."""
    root = out / "PH2 Dataset images"
    rows = []
    for i in range(1, n + 1):
        name, diagnosis = f"IMD{i:03d}", (0, 1, 0, 1, 2)[(i - 1) % 5]
        image, mask = dermoscopy_case(_rng(seed, i), size, diagnosis)
        for sub, stem, array in (("Dermoscopic_Image", name, image), ("lesion", f"{name}_lesion", mask * 255)):
            folder = root / name / f"{name}_{sub}"
            folder.mkdir(parents=True)
            Image.fromarray(array).save(folder / f"{stem}{ext}")
        rows.append((name, diagnosis, i % 3))
    _write_ph2_table(out, rows, table)


def _write_ph2_table(out: Path, rows: list[tuple[str, int, int]], table: str) -> None:
    if table == "txt":  # the published '||' table
        lines = ["||   Name   || Histological Diagnosis || Clinical Diagnosis || Asymmetry ||"]
        lines += [f"||  {n}  ||                        ||         {d}          ||     {a}     ||" for n, d, a in rows]
        lines += ["", "Legends for Clinical Diagnosis:", "0 - Common Nevus", "1 - Atypical Nevus", "2 - Melanoma"]
        (out / "PH2_dataset.txt").write_text("\r\n".join(lines) + "\r\n", encoding="utf-8")
        return
    with (out / "PH2_dataset.csv").open("w", newline="", encoding="utf-8-sig") as f:
        writer = csv.writer(f)
        writer.writerow(["Name", "Clinical Diagnosis", "Asymmetry"])
        writer.writerows(rows)
        writer.writerows([["", "", ""], ["Legends for Clinical Diagnosis", "", ""], ["0 - Common Nevus", "", ""]])


# ------------------------------------------------------------------------------------------------ MRI / ultrasound
def mri_case(rng: np.random.Generator, size: Size, lesions: list[list[float]]) -> np.ndarray:
    """An MRI-like grey slice (head, skull ring) with bright lesions at the given polygons, as H x W uint8."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    ell = ((xx - w / 2) / (0.44 * w)) ** 2 + ((yy - h / 2) / (0.46 * h)) ** 2
    image = 8 + 3 * rng.standard_normal((h, w))
    brain = 88 + 12 * _texture(rng, h, w, 3) + 4 * rng.standard_normal((h, w))
    image = np.where(ell < 1, brain, image)
    image = np.where((ell >= 0.86) & (ell < 1), 140 + 6 * rng.standard_normal((h, w)), image)
    for poly in lesions:
        bright = 215 + 10 * _texture(rng, h, w, 2)
        image = _blend(image, bright, polygon_to_mask(poly, h, w), 0.8)
    return _u8(image)


def ultrasound_case(rng: np.random.Generator, size: Size, regions: list[list[float]]) -> np.ndarray:
    """An ultrasound-like grey image (Rayleigh speckle, depth attenuation) with dark regions, H x W uint8."""
    w, h = size
    yy = np.mgrid[0:h, 0:w][0]
    tissue = (125 + 12 * _texture(rng, h, w, 10)) * (1 - 0.25 * yy / h)
    speckle = rng.rayleigh(1.0, (h, w)) / np.sqrt(np.pi / 2)
    image = tissue
    for poly in regions:
        image = _blend(image, np.full((h, w), 25.0), polygon_to_mask(poly, h, w), 1.0)
    image = gaussian_filter(image * speckle, 0.6)
    image[: max(2, h // 16)] = 0  # transducer band
    return _u8(image)


def _lesion_polygons(rng: np.random.Generator, size: Size, count: int, style: str) -> list[list[float]]:
    w, h = size
    polys: list[list[float]] = []
    for _ in range(count):
        r = min(w, h) * rng.uniform(0.09, 0.15) * (1.4 if style == "ultrasound" else 1)
        cx, cy = w / 2 + rng.uniform(-0.22, 0.22) * w, h / 2 + rng.uniform(-0.22, 0.22) * h
        aspect = rng.uniform(0.5, 0.8) if style == "ultrasound" else rng.uniform(0.8, 1.2)
        polys.append(_clip_polygon(_blob(rng, cx, cy, r, 0.15, aspect), w, h))
    return polys


def make_coco_raw(
    out: Path,
    n: int = 24,
    seed: int = 0,
    size: Size = (176, 144),
    style: str = "mri",
    categories: tuple[str, ...] = ("glioma", "meningioma"),
    seg_format: str = "polygon",
    valid_fraction: float = 0.25,
    test: int = 0,
    copies: int = 0,
) -> None:
    """Roboflow COCO export: ``train/``, ``valid/`` (and ``test/``) each with ``_annotations.coco.json``.

    Args:
        out: output folder.
        n: total number of train + valid images.
        seed: random seed.
        size: (width, height).
        style: ``"mri"`` (bright lesions) or ``"ultrasound"`` (dark regions).
        categories: lesion category names (ids 1..; id 0 is the project's supercategory, never annotated).
        seg_format: ``polygon``, ``rle`` (compressed string), ``rle_list`` (uncompressed runs) or ``mixed``.
        valid_fraction: share of the ``n`` images put in ``valid/``.
        test: number of extra images in ``test/``.
        copies: the first ``copies`` train images get a second, augmented-named copy (same origin name).
    """
    n_valid = int(round(n * valid_fraction))
    plan = {"train": range(n - n_valid), "valid": range(n - n_valid, n), "test": range(n, n + test)}
    for split, indices in plan.items():
        if len(indices):
            _write_coco_split(out / split, list(indices), seed, size, style, categories, seg_format, copies)


def _write_coco_split(
    folder: Path,
    indices: list[int],
    seed: int,
    size: Size,
    style: str,
    categories: tuple[str, ...],
    seg_format: str,
    copies: int,
) -> None:
    folder.mkdir(parents=True)
    project = "tumors" if style == "mri" else "trus"
    cats = [{"id": 0, "name": project, "supercategory": "none"}]
    cats += [{"id": k, "name": c, "supercategory": project} for k, c in enumerate(categories, start=1)]
    images, annotations = [], []
    for i in indices:
        for copy in range(2 if i < copies else 1):
            rng = _rng(seed, i, 1)
            count = int(rng.choice([1, 1, 1, 2])) if i % 7 else 0
            polys = _lesion_polygons(rng, size, count, style)
            pixels = mri_case(rng, size, polys) if style == "mri" else ultrasound_case(rng, size, polys)
            name = _roboflow_name(i, seed, copy)
            _jpeg(np.repeat(pixels[..., None], 3, axis=2), folder / name)
            image_id = len(images)
            images.append(
                {
                    "id": image_id,
                    "license": 1,
                    "file_name": name,
                    "height": size[1],
                    "width": size[0],
                    "date_captured": "2024-01-01T00:00:00+00:00",
                }
            )
            category = 1 + int(rng.integers(len(categories)))
            for poly in polys:
                ann = _annotation(len(annotations), image_id, category, poly, size, seg_format)
                annotations.append(ann)
    data = {
        "info": {"description": "synthetic, Roboflow layout", "url": "synthetic"},
        "licenses": [{"id": 1, "name": "CC0", "url": ""}],
        "categories": cats,
        "images": images,
        "annotations": annotations,
    }
    (folder / "_annotations.coco.json").write_text(json.dumps(data), encoding="utf-8")


def _annotation(ann_id: int, image_id: int, category: int, poly: list[float], size: Size, seg_format: str) -> dict:
    w, h = size
    mask = polygon_to_mask(poly, h, w)
    ys, xs = np.nonzero(mask)
    bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
    fmt = ("polygon", "rle", "rle_list")[ann_id % 3] if seg_format == "mixed" else seg_format
    segmentation: Any = [poly]
    if fmt == "rle":
        segmentation = {"size": [h, w], "counts": counts_to_string(mask_to_counts(mask))}
    elif fmt == "rle_list":
        segmentation = {"size": [h, w], "counts": mask_to_counts(mask)}
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category,
        "bbox": bbox,
        "area": int(mask.sum()),
        "segmentation": segmentation,
        "iscrowd": 1 if fmt == "rle_list" else 0,
    }


# ------------------------------------------------------------------------------------------------------- C-TRUS
def make_ctrus_raw(out: Path, n: int = 24, seed: int = 0, size: Size = (192, 128), patients: int = 6) -> None:
    """C-TRUS layout: ``original/<file>.jpg``, ``labels/<file>.jpg`` (JPEG 0/255 masks), ``c-trus.csv``."""
    (out / "original").mkdir(parents=True)
    (out / "labels").mkdir()
    rows = []
    alphabet = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"))
    for i in range(n):
        rng = _rng(seed, i, 2)
        name = "".join(rng.choice(alphabet, 7)) + ".jpg"
        polys = _lesion_polygons(rng, size, 0 if i % 4 == 3 else 1, "ultrasound")
        _jpeg(ultrasound_case(rng, size, polys), out / "original" / name)
        mask = np.zeros((size[1], size[0]), dtype=np.uint8)
        for poly in polys:
            mask |= polygon_to_mask(poly, size[1], size[0])
        _jpeg(mask * 255, out / "labels" / name, quality=85)
        quality = int(rng.integers(3))
        rows.append([name, quality, ("high", "medium", "low")[quality], i % patients + 1, i % 5])
    with (out / "c-trus.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "quality", "quality_name", "patient", "testitem_in_fold"])
        writer.writerows(rows)


# -------------------------------------------------------------------------------------------------- histology
STROMA = np.array([232.0, 158.0, 196.0])
EPITHELIUM = np.array([118.0, 58.0, 148.0])
LUMEN = np.array([212.0, 196.0, 232.0])
SLIDE = np.array([246.0, 243.0, 247.0])


def _stroma(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    image = STROMA + 10 * _texture(rng, h, w, 3)[..., None] + 5 * rng.standard_normal((h, w, 3))
    nuclei = gaussian_filter((rng.random((h, w)) < 0.004).astype(np.float64), 0.8) * 6
    return image - np.clip(nuclei, 0, 1)[..., None] * (STROMA - EPITHELIUM)


def _place_glands(rng: np.random.Generator, size: Size, count: int, irregularity: float) -> list[np.ndarray]:
    """Non-overlapping gland masks (filled outlines)."""
    w, h = size
    taken = np.zeros((h, w), dtype=bool)
    glands: list[np.ndarray] = []
    for _ in range(count * 15):
        if len(glands) == count:
            break
        r = min(w, h) * rng.uniform(0.1, 0.17)
        cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
        mask = polygon_to_mask(_blob(rng, cx, cy, r, irregularity, rng.uniform(0.7, 1.3)), h, w).astype(bool)
        if mask.sum() > 20 and not (binary_dilation(mask, iterations=3) & taken).any():
            glands.append(mask)
            taken |= mask
    return glands


def _draw_gland(rng: np.random.Generator, image: np.ndarray, gland: np.ndarray) -> np.ndarray:
    """Purple epithelium ring with a pale lumen inside ``gland``."""
    h, w = gland.shape
    epithelium = EPITHELIUM + 12 * _texture(rng, h, w, 1.5)[..., None]
    image = _blend(image, epithelium, gland, 0.7)
    ring = max(2, int(np.sqrt(gland.sum()) * 0.12))
    lumen = gland.copy()
    for _ in range(ring):
        lumen &= np.roll(lumen, 1, 0) & np.roll(lumen, -1, 0) & np.roll(lumen, 1, 1) & np.roll(lumen, -1, 1)
    return _blend(image, LUMEN + 4 * rng.standard_normal((h, w, 3)), lumen, 0.7)


def histology_case(
    rng: np.random.Generator, size: Size, count: int, irregularity: float = 0.12, tissue_fraction: float | None = None
) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """An H&E-like RGB image; returns (image, gland masks, tissue mask)."""
    w, h = size
    image = _stroma(rng, h, w)
    tissue = np.ones((h, w), dtype=bool)
    if tissue_fraction is not None:  # a slide edge: white glass beyond a wavy boundary
        yy, xx = np.mgrid[0:h, 0:w]
        edge = w * tissue_fraction + 0.06 * w * np.sin(yy / h * 2 * np.pi * rng.uniform(0.5, 1.5))
        tissue = xx < edge
        image = _blend(image, SLIDE + 3 * rng.standard_normal((h, w, 3)), ~tissue, 1.0)
    glands = [g & tissue for g in _place_glands(rng, size, count, irregularity)]
    for gland in glands:
        image = _draw_gland(rng, image, gland)
    return _u8(image), glands, tissue


def make_ipmn_raw(
    out: Path,
    n: int = 24,
    seed: int = 0,
    size: Size = (160, 192),
    variant: int = 3,
    mask_ext: str = ".png",
    image_ext: str = ".png",
    mask_suffix: str = "_mask",
) -> None:
    """RGB colour-coded masks: ``images/<name>`` + ``masks/<name>_mask`` and the ``colour_map.json`` used."""
    cmap = COLOUR_MAPS["ipmn3" if variant == 3 else "ipmn2"]
    (out / "images").mkdir(parents=True)
    (out / "masks").mkdir()
    for i in range(n):
        rng = _rng(seed, i, 3)
        image, glands, tissue = histology_case(rng, size, int(rng.integers(1, 4)), 0.15, rng.uniform(0.65, 0.85))
        mask = np.zeros((size[1], size[0], 3), dtype=np.uint8)
        if variant == 3:
            mask[tissue] = cmap["other_tissue"]
        for gland in glands:
            mask[gland] = cmap["ipmn"]
        name = f"case_{i:03d}"
        _save_rgb(image, out / "images" / f"{name}{image_ext}")
        _save_rgb(mask, out / "masks" / f"{name}{mask_suffix}{mask_ext}")
    (out / "colour_map.json").write_text(json.dumps({k: list(v) for k, v in cmap.items()}, indent=4) + "\n")


def _save_rgb(array: np.ndarray, path: Path) -> None:
    if path.suffix.lower() in (".jpg", ".jpeg"):
        _jpeg(array, path, quality=80)
    else:
        Image.fromarray(array).save(path)


def make_glas_raw(
    out: Path, n: int = 24, seed: int = 0, size: Size = (200, 152), test: int | None = None, ext: str = ".png"
) -> None:
    """GlaS layout: ``train_N.png`` + ``train_N_anno.png`` instance masks, ``testA_N``, ``Grade.csv`` (CR endings)."""
    out.mkdir(parents=True, exist_ok=True)
    test = max(1, n // 6) if test is None else test
    rows = ["name,patient ID, grade (GlaS), grade (Sirinukunwattana et al. 2015)"]
    names = [f"train_{i}" for i in range(1, n + 1)] + [f"testA_{i}" for i in range(1, test + 1)]
    for k, name in enumerate(names):
        rng = _rng(seed, k, 4)
        patient = k % max(2, n // 4) + 1
        malignant = patient % 2 == 0
        image, glands, _ = histology_case(rng, size, int(rng.integers(2, 6)), 0.3 if malignant else 0.1)
        anno = np.zeros((size[1], size[0]), dtype=np.uint8)
        for label, gland in enumerate(glands, start=1):
            anno[gland] = label
        Image.fromarray(image).save(out / f"{name}{ext}")
        Image.fromarray(anno).save(out / f"{name}_anno{ext}")
        grade = ("malignant", "moderately differentiated") if malignant else ("benign", "healthy")
        rows.append(f"{name},{patient}, {grade[0]}, {grade[1]}")
    (out / "Grade.csv").write_bytes(("\r".join(rows)).encode())


# ---------------------------------------------------------------------------------------------------- registry
def _trus_coco(out: Path, n: int = 24, seed: int = 0, **options: Any) -> None:
    """Roboflow COCO export with ultrasound-like images (see :func:`make_coco_raw`)."""
    options.setdefault("categories", ("prostate",))
    make_coco_raw(out, n, seed, style="ultrasound", **options)


KINDS: dict[str, Callable[..., None]] = {
    "ph2": make_ph2_raw,
    "coco": make_coco_raw,
    "trus_coco": _trus_coco,
    "ctrus": make_ctrus_raw,
    "ipmn": make_ipmn_raw,
    "glas": make_glas_raw,
}
DESCRIPTIONS = {
    "ph2": "dermoscopy-like RGB, PH2 folders (.bmp) + PH2_dataset.csv",
    "coco": "MRI-like grey-as-RGB JPEG, Roboflow COCO export (train/valid, polygons)",
    "trus_coco": "ultrasound-like grey-as-RGB JPEG, Roboflow COCO export (train/valid, polygons)",
    "ctrus": "ultrasound-like grey JPEG + JPEG masks + c-trus.csv with patients",
    "ipmn": "H&E-like RGB + colour-coded masks (white IPMN, grey other tissue, black background)",
    "glas": "H&E-like RGB + instance masks (train_N_anno.png), testA split, Grade.csv",
}
ALIASES = {
    "brain": "coco",
    "ph2_melanoma": "ph2",
    "brain_tumor": "coco",
    "trus_prostate": "ctrus",
    "ipmn_histology": "ipmn",
}


def _kind(kind: str) -> str:
    kind = ALIASES.get(kind, kind)
    if kind not in KINDS:
        raise DataError(None, f"unknown sample kind {kind!r}", f"choose one of {sorted(KINDS)} or {sorted(ALIASES)}")
    return kind


def make_raw(kind: str, out: str | Path, n: int = 24, seed: int = 0, overwrite: bool = False, **options: Any) -> Path:
    """Write ``n`` synthetic cases of ``kind`` in its raw source layout to ``out`` (atomically).

    Args:
        kind: one of :data:`KINDS` (or an alias from :data:`ALIASES`).
        out: output folder.
        n: number of cases.
        seed: random seed.
        overwrite: replace an existing folder.
        **options: generator options (``size=(w, h)``, ``ext``, ``seg_format``, ``variant``, ...).

    Returns:
        The output folder.
    """
    kind = _kind(kind)
    if "size" in options:
        options["size"] = tuple(int(v) for v in options["size"])
    with atomic_output(out, overwrite) as tmp:
        KINDS[kind](tmp, n=n, seed=seed, **options)
    return Path(out)


def ensure_raw(kind: str, root: str | Path = DEFAULT_RAW_ROOT, n: int = 24, seed: int = 0, **options: Any) -> Path:
    """The raw samples of ``kind`` under ``root/<kind>``, generated on first use.

    A small ``.samples.json`` records how they were made; if ``n``, ``seed`` or the options differ, they are
    generated again.
    """
    kind = _kind(kind)
    out = Path(root) / kind
    recipe = json.dumps({"kind": kind, "n": n, "seed": seed, **options}, sort_keys=True, default=str)
    marker = out / MARKER
    if not (marker.is_file() and marker.read_text() == recipe):
        make_raw(kind, out, n=n, seed=seed, overwrite=True, **options)
        marker.write_text(recipe)
    return out


def convert_raw(kind: str, raw: str | Path, out: str | Path, overwrite: bool = False, seed: int = 0) -> dict:
    """Run the converter that reads ``kind``'s raw layout."""
    kind, raw = _kind(kind), Path(raw)
    if kind == "ph2":
        return convert_ph2(raw, out, overwrite=overwrite, seed=seed)
    if kind in ("coco", "trus_coco"):
        return convert_coco(raw, out, overwrite=overwrite, seed=seed, name=f"synthetic_{kind}")
    if kind == "ctrus":
        return convert_csv_folders(raw, out, overwrite=overwrite, seed=seed, name="synthetic_ctrus")
    if kind == "ipmn":
        cmap = raw / "colour_map.json"
        return convert_rgb_masks(
            raw, out, cmap if cmap.is_file() else "ipmn3", overwrite=overwrite, seed=seed, name="synthetic_ipmn"
        )
    return convert_instance_masks(raw, out, overwrite=overwrite, seed=seed, name="synthetic_glas")


def make_demo_dataset(
    kind: str,
    out_dir: str | Path,
    n: int = 24,
    seed: int = 0,
    overwrite: bool = False,
    raw_dir: str | Path | None = None,
    **options: Any,
) -> Path:
    """Generate synthetic raw data of ``kind`` and convert it to the common format in one call.

    Args:
        kind: sample kind (see :data:`KINDS`; bundle names such as ``ph2_melanoma`` work too).
        out_dir: output folder of the converted dataset.
        n: number of cases.
        seed: random seed (data and folds).
        overwrite: replace an existing ``out_dir``.
        raw_dir: keep the raw files here (generated if absent); default: a temporary folder, removed afterwards.
        **options: generator options (see :func:`make_raw`).

    Returns:
        ``out_dir``.
    """
    if raw_dir is not None:
        raw = Path(raw_dir)
        if not (raw.is_dir() and any(raw.iterdir())):
            make_raw(kind, raw, n=n, seed=seed, **options)
        convert_raw(kind, raw, out_dir, overwrite=overwrite, seed=seed)
        return Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="lesiondata-raw-") as tmp:
        raw = make_raw(kind, Path(tmp) / "raw", n=n, seed=seed, **options)
        convert_raw(kind, raw, out_dir, overwrite=overwrite, seed=seed)
    return Path(out_dir)
