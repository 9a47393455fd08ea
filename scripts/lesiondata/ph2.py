"""PH2 dermoscopy (Mendonça et al., EMBC 2013) → common format.

Layout (as published; ``.bmp`` originally, ``.png`` accepted)::

    <src>/PH2 Dataset images/IMDnnn/IMDnnn_Dermoscopic_Image/IMDnnn.bmp
    <src>/PH2 Dataset images/IMDnnn/IMDnnn_lesion/IMDnnn_lesion.bmp      0/255 lesion mask
    <src>/PH2_dataset.txt  ('||'-separated table as published)  or  PH2_dataset.csv  (Name, Clinical Diagnosis)

``Clinical Diagnosis`` 0/1/2 = common nevus / atypical nevus / melanoma; folds are stratified by it.
"""

from __future__ import annotations

import csv
import re
from functools import partial
from pathlib import Path

import numpy as np

from .common import DatasetInfo, SourceCase, binarize, find_by_stem, limit_cases, read_label_source, write_dataset
from .errors import DataError

__all__ = ["DIAGNOSES", "convert_ph2", "read_diagnoses", "scan_ph2"]

IMAGES_FOLDER = "PH2 Dataset images"
DIAGNOSES = {"0": "common_nevus", "1": "atypical_nevus", "2": "melanoma"}
TABLE_NAMES = ("PH2_dataset.csv", "PH2_dataset.txt")
CASE_PATTERN = re.compile(r"^IMD\d+$")
EXPECTED = (
    "expected <src>/'PH2 Dataset images'/IMDnnn/IMDnnn_Dermoscopic_Image/IMDnnn.bmp (or .png) and "
    "IMDnnn_lesion/IMDnnn_lesion.bmp"
)


def convert_ph2(
    src: str | Path,
    out: str | Path,
    overwrite: bool = False,
    seed: int = 0,
    diagnosis_file: str | Path | None = None,
    limit: int | None = None,
) -> dict:
    """Convert a PH2 folder into the common format.

    Args:
        src: the PH2 folder (holding ``PH2 Dataset images/``), or the ``PH2 Dataset images`` folder itself.
        out: output folder.
        overwrite: replace an existing output folder.
        seed: fold seed.
        diagnosis_file: the diagnosis table; default ``PH2_dataset.csv`` or ``PH2_dataset.txt`` in ``src``.
        limit: convert only the first ``limit`` cases (for trials).

    Returns:
        Conversion statistics.
    """
    cases = limit_cases(scan_ph2(src, diagnosis_file), limit)
    info = DatasetInfo(
        name="PH2",
        description="PH2 dermoscopy images with lesion masks (binary: lesion vs skin).",
        labels={"background": 0, "lesion": 1},
        source="https://www.fc.up.pt/addi/ph2%20database.html",
        licence="research use; cite the paper",
        reference="Mendonça T. et al., PH2 - A dermoscopic image database for research and benchmarking, EMBC 2013",
        converter=f"lesiondata.ph2.convert_ph2(seed={seed}, limit={limit})",
        extra={"class_names": DIAGNOSES},
    )
    if not any(c.cls for c in cases):
        info.notes.append("no diagnosis table found: folds are not stratified")
    return write_dataset(cases, out, info, overwrite=overwrite, seed=seed)


def scan_ph2(src: str | Path, diagnosis_file: str | Path | None = None) -> list[SourceCase]:
    """List the PH2 cases under ``src`` with their diagnosis.

    Raises:
        DataError: no case folders, a case without image or lesion mask, or a case missing from the table.
    """
    src = Path(src)
    images_root = _images_root(src)
    diagnoses = _load_table(src, images_root, diagnosis_file)
    folders = sorted(p for p in images_root.iterdir() if p.is_dir() and CASE_PATTERN.match(p.name))
    if not folders:
        raise DataError(images_root, "no IMDnnn case folders found", EXPECTED)
    return [_case(folder, diagnoses) for folder in folders]


def _images_root(src: Path) -> Path:
    if not src.is_dir():
        raise DataError(src, "PH2 source folder not found", EXPECTED)
    if (src / IMAGES_FOLDER).is_dir():
        return src / IMAGES_FOLDER
    if any(CASE_PATTERN.match(p.name) for p in src.iterdir() if p.is_dir()):
        return src
    raise DataError(src, "not a PH2 folder", EXPECTED)


def _load_table(src: Path, images_root: Path, diagnosis_file: str | Path | None) -> dict[str, str] | None:
    if diagnosis_file is not None:
        return read_diagnoses(diagnosis_file)
    for folder in (src, images_root.parent):
        for name in TABLE_NAMES:
            if (folder / name).is_file():
                return read_diagnoses(folder / name)
    return None


def _case(folder: Path, diagnoses: dict[str, str] | None) -> SourceCase:
    name = folder.name
    image = find_by_stem(folder / f"{name}_Dermoscopic_Image", name)
    mask = find_by_stem(folder / f"{name}_lesion", f"{name}_lesion")
    if image is None:
        raise DataError(folder, f"no dermoscopic image {name}_Dermoscopic_Image/{name}.bmp or .png", EXPECTED)
    if mask is None:
        raise DataError(folder, f"no lesion mask {name}_lesion/{name}_lesion.bmp or .png", EXPECTED)
    cls = None
    if diagnoses is not None:
        if name not in diagnoses:
            raise DataError(folder, f"case {name} is not in the diagnosis table", "add it or pass --diagnosis_file")
        cls = diagnoses[name]
    return SourceCase(name, image, partial(_lesion_label, mask), label_path=mask, cls=cls)


def _lesion_label(mask_path: Path, image: np.ndarray) -> np.ndarray:
    return binarize(read_label_source(mask_path), mask_path)


def read_diagnoses(path: str | Path) -> dict[str, str]:
    """Case → diagnosis name from ``PH2_dataset.csv`` / ``.txt`` ('||', tab or comma separated).

    Rows whose first cell is not a case name (the legend at the bottom of the table) are skipped.

    Raises:
        DataError: no ``Name``/``Clinical Diagnosis`` header, or an unknown diagnosis code.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "diagnosis table not found", "pass --diagnosis_file pointing to PH2_dataset.csv or .txt")
    rows = _split_rows(path.read_text(encoding="utf-8-sig", errors="replace"))
    lowered = [[cell.lower() for cell in row] for row in rows]
    header_at = next((i for i, r in enumerate(lowered) if "name" in r and "clinical diagnosis" in r), None)
    if header_at is None:
        raise DataError(path, "no header with 'Name' and 'Clinical Diagnosis' columns", "use the PH2_dataset table")
    header = lowered[header_at]
    name_col, diag_col = header.index("name"), header.index("clinical diagnosis")
    result = {}
    for row in rows[header_at + 1 :]:
        if len(row) <= max(name_col, diag_col) or not CASE_PATTERN.match(row[name_col].upper()):
            continue
        code = row[diag_col]
        if code not in DIAGNOSES:
            raise DataError(path, f"case {row[name_col]} has clinical diagnosis {code!r}", "expected 0, 1 or 2")
        result[row[name_col].upper()] = DIAGNOSES[code]
    return result


def _split_rows(text: str) -> list[list[str]]:
    lines = [line for line in text.splitlines() if line.strip()]
    if any("||" in line for line in lines):
        return [_bars(line) for line in lines]
    delimiter = "\t" if any("\t" in line for line in lines[:3]) else ","
    return [[cell.strip() for cell in row] for row in csv.reader(lines, delimiter=delimiter)]


def _bars(line: str) -> list[str]:
    cells = [c.strip() for c in line.split("||")]
    return cells[1:-1] if len(cells) > 2 and not cells[0] and not cells[-1] else cells
