"""Data lists for the bundles: read the common format's ``datalist.json`` and fail early with clear messages."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".nii", ".nii.gz")
SPLITS = ("train", "val", "all", "test")


class DataListError(ValueError):
    """Raised when a bundle's data cannot be used; the message says what to set or fix."""


def _check_readable(path: Path) -> None:
    if not path.is_file():
        raise DataListError(
            f"{path}: file listed in the datalist does not exist. Re-run the converter (scripts/convert.py)."
        )
    if path.name.endswith((".nii", ".nii.gz")):
        return
    try:
        with Image.open(path) as im:
            # a PNG (the common format, most inputs): verify() checks every chunk's checksum up to the end marker
            # without decompressing (a fraction of a decode; inference decodes each image once more); PIL has no
            # such check for other formats, so they are decoded
            im.verify() if im.format == "PNG" else im.load()
    except (UnidentifiedImageError, OSError, SyntaxError, struct.error) as err:
        raise DataListError(f"{path}: cannot be read as an image ({err}). Replace or remove this case.") from err


def load_split(
    dataset_dir: str | Path,
    split: str = "train",
    fold: int = 0,
    datalist: str = "datalist.json",
    check_files: bool = True,
    limit: int | None = None,
) -> list[dict]:
    """Return the items of one split of a common-format dataset, with absolute ``image``/``label`` paths.

    Args:
        dataset_dir: folder written by a converter (holds ``datalist.json``).
        split: ``train`` (items with ``fold != fold``), ``val`` (``fold == fold``), ``all`` (every training item)
            or ``test`` (the source's own test split, ``testing`` in the datalist).
        fold: the validation fold, 0..4; ``-1`` makes ``train`` use every item and ``val`` empty.
        datalist: file name of the datalist inside ``dataset_dir``.
        check_files: check every file (a PNG's chunk checksums; other formats are decoded) so that a missing or
            unreadable image fails before training starts.
        limit: keep only the first ``limit`` items (quick runs).

    Returns:
        A list of dicts with at least ``image`` (and ``label`` where known) as absolute paths.
    """
    if split not in SPLITS:
        raise DataListError(f"split must be one of {SPLITS}, got {split!r}.")
    root = Path(str(dataset_dir)).expanduser()
    if not root.is_dir():
        raise DataListError(
            f"dataset_dir {str(root)!r} does not exist. Prepare data with scripts/convert.py (or "
            "scripts/make_samples.py demo ...) and pass --dataset_dir <that folder>."
        )
    list_path = root / datalist
    if not list_path.is_file():
        raise DataListError(f"{list_path} not found: dataset_dir must be a folder written by scripts/convert.py.")
    content = json.loads(list_path.read_text())
    items = content.get("testing" if split == "test" else "training", [])
    if split == "train":
        items = [d for d in items if int(d.get("fold", 0)) != int(fold)]
    elif split == "val":
        items = [d for d in items if int(d.get("fold", 0)) == int(fold)]
    if limit:
        items = items[: int(limit)]
    if not items:
        raise DataListError(f"{list_path}: the {split!r} split (fold {fold}) is empty. Check the datalist or the fold.")
    out = []
    for d in items:
        entry = dict(d)
        for key in ("image", "label"):
            if key in entry:
                entry[key] = str(root / entry[key])
                if check_files:
                    _check_readable(Path(entry[key]))
        out.append(entry)
    return out


def list_images(input_dir: str | Path, check_files: bool = True) -> list[dict]:
    """Every image file (PNG, JPG, BMP, TIFF, NIfTI) directly inside ``input_dir``, sorted, as ``{"image": path}``."""
    root = Path(str(input_dir)).expanduser()
    if root.is_file():
        files = [root]
    elif root.is_dir():
        files = sorted(p for p in root.iterdir() if p.name.lower().endswith(IMAGE_SUFFIXES))
    else:
        raise DataListError(
            f"input_dir {str(root)!r} does not exist: pass --input_dir <folder of images or one image>."
        )
    if not files:
        raise DataListError(f"{root}: no image files ({', '.join(IMAGE_SUFFIXES)}) found. Pass --input_dir <folder>.")
    if check_files:
        for f in files:
            _check_readable(f)
    return [{"image": str(f)} for f in files]
