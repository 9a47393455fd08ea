"""COCO instance segmentation (Roboflow export) → common format.

Layout::

    <src>/train/_annotations.coco.json + images      → training (folds)
    <src>/valid/_annotations.coco.json + images      → training too, items marked "split": "valid"
    <src>/test/_annotations.coco.json + images       → imagesTs/labelsTs

Segmentations may be polygons, compressed RLE strings or uncompressed RLE lists; all annotations of an image are
painted into one mask (an image with none gets an empty mask). ``label_mode="binary"`` maps every category to 1;
``"category"`` gives consecutive labels in category-id order, where overlapping annotations of different categories
keep the higher label. Roboflow's supercategory-only class (id 0, the project name, never annotated) is skipped.
Folds are stratified by each image's main category (largest annotated area) and grouped by source image where
Roboflow exported several augmented copies of one image (``<name>_jpg.rf.<hash>.jpg``).
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from .common import DatasetInfo, SourceCase, limit_cases, safe_case_id, write_dataset
from .errors import DataError
from .rle import polygon_to_mask, rle_to_mask

__all__ = ["ANNOTATION_FILE", "LABEL_MODES", "convert_coco", "scan_coco"]

ANNOTATION_FILE = "_annotations.coco.json"
SPLIT_FOLDERS = {"train": "train", "valid": "valid", "val": "valid", "test": "test"}
LABEL_MODES = ("binary", "category")
NO_ANNOTATION = "none"
ROBOFLOW_NAME = re.compile(r"^(?P<origin>.+)_(?:jpe?g|png|bmp|tiff?)\.rf\.(?P<hash>[0-9a-fA-F]+)$")
EXPECTED = "expected <src>/train/_annotations.coco.json with its images (and optionally valid/ and test/)"


@dataclass
class CocoSplit:
    """One split folder: its annotation file content."""

    name: str
    folder: Path
    json_path: Path
    categories: dict[int, dict[str, Any]]
    images: list[dict[str, Any]]
    annotations: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    licences: list[str] = field(default_factory=list)


def convert_coco(
    src: str | Path,
    out: str | Path,
    label_mode: str = "binary",
    overwrite: bool = False,
    seed: int = 0,
    name: str | None = None,
    foreground_name: str = "lesion",
    limit: int | None = None,
) -> dict:
    """Convert a COCO-segmentation export (Roboflow layout) into the common format.

    Args:
        src: folder holding ``train/`` (and optionally ``valid/``, ``test/``), each with ``_annotations.coco.json``.
        out: output folder.
        label_mode: ``"binary"`` (any category → 1) or ``"category"`` (one label per category).
        overwrite: replace an existing output folder.
        seed: fold seed.
        name: dataset name (default: the source folder's name).
        foreground_name: label name of 1 in binary mode.
        limit: convert only the first ``limit`` cases per split (for trials).

    Returns:
        Conversion statistics.
    """
    if label_mode not in LABEL_MODES:
        raise DataError(None, f"unknown label_mode {label_mode!r}", f"use one of {list(LABEL_MODES)}")
    src = Path(src)
    splits = load_splits(src)
    labels, cat_to_label = label_map(splits, label_mode, foreground_name)
    cases = limit_cases(scan_coco(splits, cat_to_label), limit)
    info = _info(src, splits, labels, cat_to_label, label_mode, seed, limit, name)
    return write_dataset(cases, out, info, overwrite=overwrite, seed=seed)


def load_splits(src: Path) -> list[CocoSplit]:
    """Read every split's annotation file.

    Raises:
        DataError: no split folder with an annotation file, unreadable JSON, or inconsistent categories.
    """
    if not src.is_dir():
        raise DataError(src, "COCO source folder not found", EXPECTED)
    found = [(SPLIT_FOLDERS[p.name], p) for p in sorted(src.iterdir()) if p.name in SPLIT_FOLDERS and p.is_dir()]
    found = [(split, p) for split, p in found if (p / ANNOTATION_FILE).is_file()]
    if not found and (src / ANNOTATION_FILE).is_file():
        found = [("train", src)]
    if not any(split != "test" for split, _ in found):
        raise DataError(src, f"no training split with {ANNOTATION_FILE} found", EXPECTED)
    splits = [_load_split(split, folder) for split, folder in found]
    _check_categories(splits)
    return splits


def _load_split(split: str, folder: Path) -> CocoSplit:
    path = folder / ANNOTATION_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        categories = {int(c["id"]): c for c in data["categories"]}
        images = list(data["images"])
        annotations = list(data.get("annotations", []))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(path, f"not valid JSON ({exc})", "re-export the dataset in COCO format") from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(
            path, f"not a COCO file: missing or bad key {exc}", "needs images, categories, annotations"
        ) from exc
    by_image: dict[int, list[dict]] = defaultdict(list)
    image_ids = {im["id"] for im in images}
    for ann in annotations:
        if ann.get("image_id") not in image_ids:
            raise DataError(path, f"annotation {ann.get('id')} refers to unknown image_id {ann.get('image_id')}")
        if ann.get("category_id") not in categories:
            raise DataError(path, f"annotation {ann.get('id')} has unknown category_id {ann.get('category_id')}")
        by_image[ann["image_id"]].append(ann)
    licences = sorted({str(lic.get("name")) for lic in data.get("licenses", []) if lic.get("name")})
    return CocoSplit(split, folder, path, categories, images, dict(by_image), data.get("info") or {}, licences)


def _check_categories(splits: list[CocoSplit]) -> None:
    first = splits[0]
    for split in splits[1:]:
        a = {k: v.get("name") for k, v in first.categories.items()}
        b = {k: v.get("name") for k, v in split.categories.items()}
        if a != b:
            raise DataError(
                split.json_path,
                f"categories {b} differ from {first.json_path}'s {a}",
                "all splits must share one category list",
            )


def label_map(splits: list[CocoSplit], label_mode: str, foreground_name: str) -> tuple[dict[str, int], dict[int, int]]:
    """The ``labels`` dict and the category-id → label mapping.

    A category is skipped when it is never annotated and is the supercategory of another category (Roboflow's
    project-level class 0).
    """
    kept = kept_categories(splits)
    if label_mode == "binary":
        return {"background": 0, foreground_name: 1}, {cid: 1 for cid in kept}
    names = category_names(splits[0].categories, kept)
    labels = {"background": 0, **{names[cid]: label for label, cid in enumerate(kept, start=1)}}
    return labels, {cid: label for label, cid in enumerate(kept, start=1)}


def kept_categories(splits: list[CocoSplit]) -> list[int]:
    """Category ids that get a label, sorted: all but a never-annotated supercategory of another category."""
    categories = splits[0].categories
    used = {a["category_id"] for s in splits for anns in s.annotations.values() for a in anns}
    supers = {str(c.get("supercategory")) for c in categories.values()}
    return [cid for cid in sorted(categories) if cid in used or str(categories[cid].get("name")) not in supers]


def category_names(categories: dict[int, dict[str, Any]], kept: list[int]) -> dict[int, str]:
    """Readable, unique, safe names; bare numbers ("0", "1") get the supercategory as prefix ("tumor_0")."""
    result: dict[int, str] = {}
    for cid in kept:
        category = categories[cid]
        name = str(category.get("name", cid))
        if re.fullmatch(r"\d+", name) or name.lower() == "background":
            name = f"{category.get('supercategory') or 'class'}_{name}"
        name = safe_case_id(name).lower()
        while name in result.values():
            name = f"{name}_{cid}"
        result[cid] = name
    return result


def scan_coco(splits: list[CocoSplit], cat_to_label: dict[int, int]) -> list[SourceCase]:
    """One :class:`SourceCase` per image of every split.

    Raises:
        DataError: an image listed in an annotation file is missing.
    """
    names = category_names(splits[0].categories, kept_categories(splits))
    entries = [(s, im) for s in splits for im in sorted(s.images, key=lambda im: str(im["file_name"]))]
    ids = _case_ids([(s.name, str(im["file_name"])) for s, im in entries])
    origins = Counter(_origin(str(im["file_name"])) for _, im in entries)
    augmented = any(n > 1 for n in origins.values())
    cases = []
    for (split, image), case_id in zip(entries, ids, strict=True):
        path = split.folder / str(image["file_name"])
        if not path.is_file():
            raise DataError(path, f"image listed in {split.json_path} is missing", "restore the file or re-export")
        anns = split.annotations.get(image["id"], [])
        origin = _origin(str(image["file_name"]))
        cases.append(
            SourceCase(
                case=case_id,
                image_path=path,
                make_label=partial(_paint, anns, cat_to_label, image, split.json_path, path),
                split=split.name,
                cls=_main_class(anns, cat_to_label, names),
                group=origin if augmented else None,
                meta={"source_image": origin} if augmented else {},
            )
        )
    return cases


def _origin(file_name: str) -> str:
    stem = Path(file_name).stem
    match = ROBOFLOW_NAME.match(stem)
    return match.group("origin") if match else stem


def _case_ids(names: list[tuple[str, str]]) -> list[str]:
    """Short safe ids (``<origin>_<hash8>`` for Roboflow names), made unique with the full stem / split prefix."""
    ids = [_short_id(Path(n).stem) for _, n in names]
    counts = Counter(ids)
    ids = [safe_case_id(Path(n).stem) if counts[i] > 1 else i for i, (_, n) in zip(ids, names, strict=True)]
    counts = Counter(ids)
    return [f"{split}_{i}" if counts[i] > 1 else i for i, (split, _) in zip(ids, names, strict=True)]


def _short_id(stem: str) -> str:
    match = ROBOFLOW_NAME.match(stem)
    return safe_case_id(f"{match.group('origin')}_{match.group('hash')[:8]}" if match else stem)


def _main_class(anns: list[dict], cat_to_label: dict[int, int], names: dict[int, str]) -> str:
    """The category with the largest annotated area ("none" for an image without annotations)."""
    area: Counter = Counter()
    for ann in anns:
        if ann["category_id"] in cat_to_label:
            area[ann["category_id"]] += float(ann.get("area") or _bbox_area(ann))
    if not area:
        return NO_ANNOTATION
    return names[max(sorted(area), key=lambda c: area[c])]


def _bbox_area(ann: dict) -> float:
    bbox = ann.get("bbox") or [0, 0, 0, 0]
    return float(bbox[2]) * float(bbox[3])


def _paint(
    anns: list[dict], cat_to_label: dict[int, int], image_info: dict, json_path: Path, path: Path, image: np.ndarray
) -> np.ndarray:
    """The label map of one image: every annotation painted, the higher label winning on overlap."""
    height, width = int(image_info["height"]), int(image_info["width"])
    if image.shape[:2] != (height, width):
        raise DataError(
            path,
            f"image is {image.shape[1]}x{image.shape[0]} (WxH) but {json_path.name} says {width}x{height}",
            "re-export the dataset; annotations would not line up",
        )
    label = np.zeros((height, width), dtype=np.uint8)
    for ann in anns:
        value = cat_to_label.get(ann["category_id"])
        if value is not None:
            np.maximum(label, _ann_mask(ann, height, width, json_path) * np.uint8(value), out=label)
    return label


def _ann_mask(ann: dict, height: int, width: int, json_path: Path) -> np.ndarray:
    seg = ann.get("segmentation")
    try:
        if isinstance(seg, dict):
            size = [int(v) for v in seg.get("size", [height, width])]
            if size != [height, width]:
                raise ValueError(f"RLE size {size} differs from the image's [{height}, {width}]")
            return rle_to_mask(seg["counts"], height, width)
        if isinstance(seg, list) and seg and isinstance(seg[0], (int, float)):
            seg = [seg]
        if not seg:
            return _bbox_mask(ann, height, width)
        mask = np.zeros((height, width), dtype=np.uint8)
        for poly in seg:
            np.maximum(mask, polygon_to_mask(poly, height, width), out=mask)
        return mask
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(json_path, f"annotation {ann.get('id')} has a bad segmentation ({exc})") from exc


def _bbox_mask(ann: dict, height: int, width: int) -> np.ndarray:
    x, y, w, h = (float(v) for v in ann["bbox"])
    return polygon_to_mask([x, y, x + w, y, x + w, y + h, x, y + h], height, width)


def polygons_are_boxes(splits: list[CocoSplit]) -> bool:
    """True when every segmentation is a polygon of 4 (or 5, closed) points forming an axis-aligned rectangle."""
    polys = []
    for split in splits:
        for anns in split.annotations.values():
            for ann in anns:
                seg = ann.get("segmentation")
                if not isinstance(seg, list) or not seg:
                    return False
                polys.extend([seg] if isinstance(seg[0], (int, float)) else seg)
    return bool(polys) and all(_is_rectangle(p) for p in polys)


def _is_rectangle(poly: list[float]) -> bool:
    xy = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
    if len(xy) == 5 and np.allclose(xy[0], xy[-1]):
        xy = xy[:4]
    if len(xy) != 4:
        return False
    xs, ys = np.unique(np.round(xy[:, 0], 3)), np.unique(np.round(xy[:, 1], 3))
    edges_axis_aligned = all(
        np.isclose(a[0], b[0]) or np.isclose(a[1], b[1]) for a, b in zip(xy, np.roll(xy, -1, axis=0), strict=True)
    )
    return len(xs) == 2 and len(ys) == 2 and edges_axis_aligned


def _info(
    src: Path,
    splits: list[CocoSplit],
    labels: dict[str, int],
    cat_to_label: dict[int, int],
    label_mode: str,
    seed: int,
    limit: int | None,
    name: str | None,
) -> DatasetInfo:
    boxes = polygons_are_boxes(splits)
    counts = {s.name: len(s.images) for s in splits}
    empty = sum(1 for s in splits for im in s.images if not s.annotations.get(im["id"]))
    notes = [f"{empty} image(s) have no annotation and got an empty mask"] if empty else []
    if boxes:
        notes.append(
            "every segmentation polygon is the rectangle of its bounding box: the masks are boxes, not outlines"
        )
    if "valid" in counts:
        notes.append(
            'the source\'s \'valid\' split is kept as training data with folds; its items carry "split": "valid" '
            "(train on split == 'train' and validate on split == 'valid' to reproduce the source's own split)"
        )
    first = splits[0]
    categories = {
        str(cid): {"name": c.get("name"), "supercategory": c.get("supercategory"), "label": cat_to_label.get(cid, 0)}
        for cid, c in sorted(first.categories.items())
    }
    return DatasetInfo(
        name=name or src.name,
        description=f"COCO segmentation export from {src.name} ({label_mode} labels).",
        labels=labels,
        source=str(first.info.get("url") or first.info.get("description") or src),
        licence=", ".join(first.licences) or "unknown",
        reference=str(first.info.get("url", "")),
        converter=f"lesiondata.coco.convert_coco(label_mode={label_mode!r}, seed={seed}, limit={limit})",
        notes=notes,
        extra={
            "label_mode": label_mode,
            "source_categories": categories,
            "source_splits": counts,
            "polygons_are_bounding_boxes": boxes,
        },
    )
