"""An image folder, a mask folder and a CSV of cases (C-TRUS layout) → common format.

Layout::

    <src>/original/<file>       images
    <src>/labels/<file>         masks (same file name; JPEG masks are thresholded, default > 127)
    <src>/c-trus.csv            file, quality, quality_name, patient, testitem_in_fold

Folds are grouped by patient: no patient is in two folds. C-TRUS's own ``testitem_in_fold`` column is **not**
used for the folds because it splits patients across folds (e.g. patient 1 is in its folds 0 and 1, which would
leak a patient between training and validation); it is kept on each item as ``source_fold`` for reference.
Images in the folder but not in the CSV are skipped (and counted in ``dataset.json``'s notes).
"""

from __future__ import annotations

import csv
from functools import partial
from pathlib import Path

import numpy as np

from .common import (
    DatasetInfo,
    SourceCase,
    binarize,
    limit_cases,
    list_images,
    read_label_source,
    safe_case_id,
    write_dataset,
)
from .errors import DataError

__all__ = ["convert_csv_folders", "scan_csv_folders"]

DEFAULT_META = {"quality_name": "quality_name", "testitem_in_fold": "source_fold"}
EXPECTED = "expected <src>/original/<file>, <src>/labels/<file> and a CSV with a 'file' and a 'patient' column"


def convert_csv_folders(
    src: str | Path,
    out: str | Path,
    csv_file: str | None = None,
    image_dir: str = "original",
    label_dir: str = "labels",
    file_column: str = "file",
    patient_column: str | None = "patient",
    class_column: str | None = None,
    meta_columns: dict[str, str] | None = None,
    threshold: float | None = 127,
    label_name: str = "lesion",
    overwrite: bool = False,
    seed: int = 0,
    name: str | None = None,
    licence: str = "none stated: research use",
    limit: int | None = None,
) -> dict:
    """Convert image and mask folders listed in a CSV into the common format (binary labels).

    Args:
        src: the source folder.
        out: output folder.
        csv_file: the CSV (relative to ``src``); default: the only ``*.csv`` in ``src``.
        image_dir: image folder relative to ``src``.
        label_dir: mask folder relative to ``src`` (masks have the image's file name).
        file_column: CSV column with the image file name.
        patient_column: CSV column to group folds by (``None``: no grouping).
        class_column: CSV column to stratify folds by (``None``: no stratification).
        meta_columns: CSV column → datalist item key to copy (default: quality_name, testitem_in_fold→source_fold).
        threshold: mask foreground is ``value > threshold``; ``None`` requires exact 0/1 or 0/255 masks.
        label_name: name of label 1.
        overwrite: replace an existing output folder.
        seed: fold seed.
        name: dataset name (default: the source folder's name).
        licence: licence to record.
        limit: convert only the first ``limit`` cases (for trials).

    Returns:
        Conversion statistics.
    """
    src = Path(src)
    table_path = _find_csv(src, csv_file)
    columns = {"file": file_column, "patient": patient_column, "class": class_column}
    meta = _available(table_path, DEFAULT_META) if meta_columns is None else dict(meta_columns)
    cases, skipped = scan_csv_folders(src, table_path, image_dir, label_dir, columns, meta, threshold)
    cases = limit_cases(cases, limit)
    notes = [f"{skipped} image(s) not listed in {table_path.name} were skipped"] if skipped else []
    if "testitem_in_fold" in meta:
        notes.append(
            "folds are grouped by patient; the CSV's testitem_in_fold (which splits patients) is kept "
            "on each item as source_fold and not used"
        )
    info = DatasetInfo(
        name=name or src.name,
        description=f"Images with masks listed in {table_path.name} (binary, masks thresholded at > {threshold}).",
        labels={"background": 0, label_name: 1},
        source=str(src),
        licence=licence,
        converter=f"lesiondata.csv_folders.convert_csv_folders(threshold={threshold}, seed={seed})",
        notes=notes,
    )
    return write_dataset(cases, out, info, overwrite=overwrite, seed=seed)


def _find_csv(src: Path, csv_file: str | None) -> Path:
    if not src.is_dir():
        raise DataError(src, "source folder not found", EXPECTED)
    if csv_file is not None:
        path = src / csv_file
        if not path.is_file():
            raise DataError(path, "CSV file not found", "check --csv_file")
        return path
    found = sorted(src.glob("*.csv"))
    if len(found) != 1:
        raise DataError(src, f"expected exactly one *.csv, found {[p.name for p in found]}", "pass --csv_file")
    return found[0]


def _available(path: Path, meta: dict[str, str]) -> dict[str, str]:
    """The default meta columns that the CSV has (they are optional, unlike explicitly requested ones)."""
    with path.open(newline="", encoding="utf-8-sig") as f:
        header = [h.strip() for h in next(csv.reader(f), [])]
    return {column: key for column, key in meta.items() if column in header}


def scan_csv_folders(
    src: Path,
    table_path: Path,
    image_dir: str,
    label_dir: str,
    columns: dict[str, str | None],
    meta: dict[str, str],
    threshold: float | None,
) -> tuple[list[SourceCase], int]:
    """The cases listed in the CSV, and the number of images in the folder the CSV does not list.

    Raises:
        DataError: missing folders or columns, or a listed image or mask that does not exist.
    """
    images, labels = src / image_dir, src / label_dir
    for folder in (images, labels):
        if not folder.is_dir():
            raise DataError(folder, "folder not found", EXPECTED)
    rows = _read_rows(table_path, [c for c in (*columns.values(), *meta) if c])
    if not rows:
        raise DataError(table_path, "CSV lists no cases", EXPECTED)
    cases = [_case(row, images, labels, columns, meta, threshold) for row in rows]
    listed = {row[columns["file"]] for row in rows}
    skipped = sum(1 for p in list_images(images) if p.name not in listed)
    return cases, skipped


def _read_rows(path: Path, required: list[str]) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        fields = [h.strip() for h in reader.fieldnames or []]
        missing = [c for c in required if c not in fields]
        if missing:
            raise DataError(path, f"missing column(s) {missing}; columns are {fields}", "set the *_column options")
        return [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in reader]


def _case(
    row: dict[str, str],
    images: Path,
    labels: Path,
    columns: dict[str, str | None],
    meta: dict[str, str],
    threshold: float | None,
) -> SourceCase:
    file_name = row[columns["file"]]
    image, mask = images / file_name, labels / file_name
    for path, what in ((image, "image"), (mask, "mask")):
        if not path.is_file():
            raise DataError(path, f"{what} listed in the CSV is missing", "restore it or remove its CSV row")
    return SourceCase(
        case=safe_case_id(Path(file_name).stem),
        image_path=image,
        make_label=partial(_mask_label, mask, threshold),
        label_path=mask,
        cls=row[columns["class"]] if columns.get("class") else None,
        patient=row[columns["patient"]] if columns.get("patient") else None,
        meta={key: row[column] for column, key in meta.items()},
    )


def _mask_label(mask_path: Path, threshold: float | None, image: np.ndarray) -> np.ndarray:
    return binarize(read_label_source(mask_path), mask_path, threshold)
