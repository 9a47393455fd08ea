"""Images with instance-label masks (GlaS layout) → binary common format.

Layout::

    <src>/train_N.png (or .bmp)  +  <src>/train_N_anno.png       0 = background, 1..K = instances (glands)
    <src>/testA_N.png, testB_N.png (+ _anno)                      → imagesTs/labelsTs
    <src>/Grade.csv                                               name, patient ID, grade (GlaS), ...

Every instance becomes foreground 1. Folds are stratified by the grade (benign/malignant) and grouped by the
patient ID where ``Grade.csv`` gives them.
"""

from __future__ import annotations

import csv
from functools import partial
from pathlib import Path

import numpy as np

from .common import (
    DatasetInfo,
    SourceCase,
    limit_cases,
    list_images,
    read_label_source,
    safe_case_id,
    to_single_channel,
    write_dataset,
)
from .errors import DataError

__all__ = ["convert_instance_masks", "read_grades", "scan_instance_masks"]

EXPECTED = "expected <src>/<name>.png|bmp with <src>/<name>_anno.png|bmp instance masks (and optionally Grade.csv)"


def convert_instance_masks(
    src: str | Path,
    out: str | Path,
    mask_suffix: str = "_anno",
    grade_file: str | Path | None = "Grade.csv",
    class_column: str = "grade (GlaS)",
    patient_column: str | None = "patient ID",
    test_prefixes: tuple[str, ...] | list[str] | str = ("testA", "testB"),
    label_name: str = "lesion",
    overwrite: bool = False,
    seed: int = 0,
    name: str | None = None,
    limit: int | None = None,
) -> dict:
    """Convert a folder of images and instance masks into the common format (binary labels).

    Args:
        src: the folder (GlaS layout).
        out: output folder.
        mask_suffix: mask stem = image stem + this suffix.
        grade_file: CSV with a ``name`` column plus class/patient columns, relative to ``src`` (``None``: none).
        class_column: column of ``grade_file`` to stratify folds by.
        patient_column: column of ``grade_file`` to group folds by (``None``: no grouping).
        test_prefixes: image stems starting with one of these go to the test split.
        label_name: name of label 1.
        overwrite: replace an existing output folder.
        seed: fold seed.
        name: dataset name (default: the source folder's name).
        limit: convert only the first ``limit`` cases per split (for trials).

    Returns:
        Conversion statistics.
    """
    src = Path(src)
    prefixes = (test_prefixes,) if isinstance(test_prefixes, str) else tuple(test_prefixes)
    table = _grades(src, grade_file, class_column, patient_column)
    cases = limit_cases(scan_instance_masks(src, mask_suffix, table, prefixes), limit)
    is_glas = (src / "Grade.csv").is_file() and any(c.case.startswith("train_") for c in cases)
    info = DatasetInfo(
        name=name or src.name,
        description="Images with instance masks, converted to binary foreground (every instance = 1).",
        labels={"background": 0, label_name: 1},
        source="https://warwick.ac.uk/fac/cross_fac/tia/data/glascontest/" if is_glas else str(src),
        licence="research use; cite the paper" if is_glas else "unknown",
        reference="Sirinukunwattana K. et al., Gland segmentation in colon histology images: The GlaS challenge "
        "contest, Medical Image Analysis 2017"
        if is_glas
        else "",
        converter=f"lesiondata.instance_masks.convert_instance_masks(mask_suffix={mask_suffix!r}, seed={seed})",
    )
    return write_dataset(cases, out, info, overwrite=overwrite, seed=seed)


def _grades(
    src: Path, grade_file: str | Path | None, class_column: str, patient_column: str | None
) -> dict[str, dict[str, str]] | None:
    if grade_file is None:
        return None
    path = Path(grade_file) if Path(grade_file).is_absolute() else src / grade_file
    if not path.is_file():
        return None
    return read_grades(path, class_column, patient_column)


def read_grades(path: Path, class_column: str, patient_column: str | None) -> dict[str, dict[str, str]]:
    """``name → {"class": ..., "patient": ...}`` from a grade table (any line endings, padded headers).

    Raises:
        DataError: a named column is missing.
    """
    with path.open(newline="", encoding="utf-8-sig") as f:
        text = f.read().replace("\r\n", "\n").replace("\r", "\n")
    rows = list(csv.reader(text.splitlines()))
    if not rows:
        raise DataError(path, "grade table is empty")
    header = [h.strip().lower() for h in rows[0]]
    wanted = {"name": "name", "class": class_column, "patient": patient_column}
    index = {}
    for key, column in wanted.items():
        if column is None:
            continue
        if column.strip().lower() not in header:
            raise DataError(
                path,
                f"no column {column!r} (columns: {[h.strip() for h in rows[0]]})",
                f"set the {key}_column option" if key != "name" else "the first column must be 'name'",
            )
        index[key] = header.index(column.strip().lower())
    return {
        row[index["name"]].strip(): {k: row[i].strip() for k, i in index.items() if k != "name"}
        for row in rows[1:]
        if len(row) > max(index.values())
    }


def scan_instance_masks(
    src: Path, mask_suffix: str, table: dict[str, dict[str, str]] | None, test_prefixes: tuple[str, ...]
) -> list[SourceCase]:
    """Pair images with their instance masks.

    Raises:
        DataError: not a folder, no image/mask pairs, or an image without its mask.
    """
    if not src.is_dir():
        raise DataError(src, "source folder not found", EXPECTED)
    files = list_images(src)
    masks = {p.stem: p for p in files if p.stem.endswith(mask_suffix)}
    images = [p for p in files if not p.stem.endswith(mask_suffix)]
    if not images or not masks:
        raise DataError(src, "no image/mask pairs found", EXPECTED)
    cases = []
    for image in images:
        mask = masks.get(image.stem + mask_suffix)
        if mask is None:
            raise DataError(image, f"no instance mask {image.stem}{mask_suffix}.png for this image", EXPECTED)
        cases.append(_case(image, mask, table, test_prefixes))
    return cases


def _case(image: Path, mask: Path, table: dict | None, test_prefixes: tuple[str, ...]) -> SourceCase:
    row = (table or {}).get(image.stem, {})
    split = "test" if test_prefixes and image.stem.startswith(test_prefixes) else "train"
    return SourceCase(
        case=safe_case_id(image.stem),
        image_path=image,
        make_label=partial(_foreground, mask),
        split=split,
        label_path=mask,
        cls=row.get("class") or None,
        patient=row.get("patient") or None,
    )


def _foreground(mask_path: Path, image: np.ndarray) -> np.ndarray:
    mask = to_single_channel(read_label_source(mask_path), mask_path)
    return (mask > 0).astype(np.uint8)
