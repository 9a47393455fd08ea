"""Converters on the real public sets in ``../shared/data`` (skipped where that folder is absent).

Full counts come from scanning the source (no pixel decoding); pixel-level checks convert a ``limit``-ed subset
into ``tmp_path`` so the whole file stays well under a minute.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lesiondata import convert_coco, convert_csv_folders, convert_instance_masks, convert_ph2
from lesiondata.coco import label_map, load_splits, polygons_are_boxes, scan_coco
from lesiondata.csv_folders import DEFAULT_META, scan_csv_folders
from lesiondata.instance_masks import read_grades, scan_instance_masks
from lesiondata.ph2 import scan_ph2

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PH2 = REAL / "ph2" / "PH2Dataset"
BRAIN_2146 = REAL / "brain_tumor" / "roboflow_2146"
BRAIN_178 = REAL / "brain_tumor" / "roboflow_polygons_178"
CTRUS = REAL / "ctrus"
GLAS = REAL / "glas"


def need(folder: Path) -> None:
    if not folder.is_dir():
        pytest.skip(f"real data folder {folder} is absent (only developer machines have ../shared/data)")


def converted(out: Path) -> tuple[dict, dict, list[np.ndarray]]:
    """dataset.json, datalist.json and every label map of a converted dataset."""
    dataset = json.loads((out / "dataset.json").read_text())
    datalist = json.loads((out / "datalist.json").read_text())
    labels = []
    for item in datalist["training"] + datalist["testing"]:
        with Image.open(out / item["label"]) as im:
            labels.append(np.asarray(im))
    return dataset, datalist, labels


def test_ph2_real(tmp_path: Path) -> None:
    need(PH2)
    cases = scan_ph2(PH2)
    assert len(cases) == 150
    assert Counter(c.cls for c in cases) == {"common_nevus": 60, "atypical_nevus": 60, "melanoma": 30}
    convert_ph2(PH2, tmp_path / "ph2", limit=10)
    dataset, datalist, labels = converted(tmp_path / "ph2")
    assert dataset["numTraining"] == 10 and dataset["channel_names"] == {"0": "R", "1": "G", "2": "B"}
    assert all(set(np.unique(label)) == {0, 1} for label in labels)  # '1'-bit and RGB 0/255 masks both read
    assert all(0.02 < (label > 0).mean() < 0.95 for label in labels)


def test_brain_2146_real(tmp_path: Path) -> None:
    need(BRAIN_2146)
    splits = load_splits(BRAIN_2146)
    assert {s.name: len(s.images) for s in splits} == {"train": 700, "valid": 429}
    assert polygons_are_boxes(splits)  # this export's "segmentations" are bounding boxes
    labels, cat_to_label = label_map(splits, "category", "lesion")
    assert labels == {"background": 0, "tumor_0": 1, "tumor_1": 2}
    classes = Counter((c.split, c.cls) for c in scan_coco(splits, cat_to_label))
    assert classes == {
        ("train", "tumor_1"): 360,
        ("train", "tumor_0"): 339,
        ("train", "none"): 1,
        ("valid", "tumor_1"): 219,
        ("valid", "tumor_0"): 210,
    }
    convert_coco(BRAIN_2146, tmp_path / "brain", label_mode="category", limit=12)
    dataset, datalist, masks = converted(tmp_path / "brain")
    assert dataset["polygons_are_bounding_boxes"] is True
    assert len(datalist["training"]) == 12 and {i["split"] for i in datalist["training"]} <= {"train", "valid"}
    assert all(set(np.unique(m)) in ({0, 1}, {0, 2}) and m.shape == (640, 640) for m in masks)


def test_brain_178_real(tmp_path: Path) -> None:
    need(BRAIN_178)
    splits = load_splits(BRAIN_178)
    assert [(s.name, len(s.images), sum(map(len, s.annotations.values()))) for s in splits] == [("train", 154, 198)]
    assert not polygons_are_boxes(splits)
    convert_coco(BRAIN_178, tmp_path / "brain", limit=30)
    dataset, datalist, masks = converted(tmp_path / "brain")
    assert dataset["labels"] == {"background": 0, "lesion": 1} and dataset["numTraining"] == 30
    assert all(set(np.unique(m)) == {0, 1} and m.shape == (256, 256) for m in masks)
    folds = defaultdict(set)  # Roboflow's augmented copies of one scan stay in one fold
    for item in datalist["training"]:
        folds[item["source_image"]].add(item["fold"])
    assert len(folds) < 30 and all(len(f) == 1 for f in folds.values())


def test_ctrus_real(tmp_path: Path) -> None:
    need(CTRUS)
    columns = {"file": "file", "patient": "patient", "class": None}
    cases, skipped = scan_csv_folders(CTRUS, CTRUS / "c-trus.csv", "original", "labels", columns, DEFAULT_META, 127)
    assert len(cases) == 662 and skipped == 0
    assert len({c.patient for c in cases}) == 10
    convert_csv_folders(CTRUS, tmp_path / "ctrus", limit=25)
    dataset, datalist, masks = converted(tmp_path / "ctrus")
    assert dataset["channel_names"] == {"0": "grey"}
    assert all(set(np.unique(m)) <= {0, 1} and m.shape == (360, 580) for m in masks)
    assert 0 < sum(1 for m in masks if not m.any()) < 25  # many, not all, C-TRUS masks are empty
    folds = defaultdict(set)
    for item in datalist["training"]:
        folds[item["patient"]].add(item["fold"])
    assert all(len(f) == 1 for f in folds.values())


def test_glas_real(tmp_path: Path) -> None:
    need(GLAS)
    grades = read_grades(GLAS / "Grade.csv", "grade (GlaS)", "patient ID")  # a CR-only line-ending file
    cases = scan_instance_masks(GLAS, "_anno", grades, ("testA", "testB"))
    assert Counter((c.split, c.cls) for c in cases) == {("train", "malignant"): 48, ("train", "benign"): 37}
    assert len({c.patient for c in cases}) == 15
    convert_instance_masks(GLAS, tmp_path / "glas", limit=8)
    dataset, datalist, masks = converted(tmp_path / "glas")
    assert dataset["numTraining"] == 8 and dataset["numTest"] == 0
    assert all(set(np.unique(m)) == {0, 1} for m in masks)
