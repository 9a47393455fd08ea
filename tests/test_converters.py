"""Converters on small synthetic files of each exact source format, and every kind of bad input."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter

from lesiondata import (
    DataError,
    convert_coco,
    convert_csv_folders,
    convert_instance_masks,
    convert_ph2,
    convert_rgb_masks,
    make_demo_dataset,
    make_raw,
    read_image,
)
from lesiondata.coco import load_splits, polygons_are_boxes
from lesiondata.rle import counts_from_string, counts_to_string, mask_to_counts, polygon_to_mask, rle_to_mask
from lesiondata.synthetic import ensure_raw

SMALL = {"n": 6, "seed": 0}


# ----------------------------------------------------------------------------------------------------- helpers
def load(out: Path) -> tuple[dict, dict]:
    """dataset.json and datalist.json of a converted dataset."""
    return json.loads((out / "dataset.json").read_text()), json.loads((out / "datalist.json").read_text())


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def check_common_format(out: Path) -> tuple[dict, dict]:
    """Assertions every converted dataset must satisfy."""
    dataset, datalist = load(out)
    assert dataset["numTraining"] == len(datalist["training"])
    assert dataset["numTest"] == len(datalist["testing"])
    assert dataset["file_ending"] == ".png" and dataset["labels"]["background"] == 0
    assert sorted(dataset["labels"].values()) == list(range(len(dataset["labels"])))
    for item in datalist["training"] + datalist["testing"]:
        image, label = pixels(out / item["image"]), pixels(out / item["label"])
        assert label.dtype == np.uint8 and label.ndim == 2 and label.shape == image.shape[:2]
        assert int(label.max()) < len(dataset["labels"])
        assert (image.ndim == 2) == (dataset["channel_names"] == {"0": "grey"})
    assert all(0 <= item["fold"] < 5 for item in datalist["training"])
    assert not list(out.parent.glob(f".{out.name}.tmp-*"))
    return dataset, datalist


def assert_fails_cleanly(fn, out: Path, *names: str, match: str = "") -> DataError:
    """``fn`` raises a DataError naming every one of ``names``; ``out`` does not exist afterwards."""
    with pytest.raises(DataError) as info:
        fn()
    message = str(info.value)
    for name in names:
        assert name in message, message
    assert match in message, message
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.tmp-*"))
    return info.value


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# ---------------------------------------------------------------------------------------------------------- PH2
@pytest.mark.parametrize("ext", [".bmp", ".png"])
def test_ph2_converts_exactly(tmp_path: Path, ext: str) -> None:
    raw = make_raw("ph2", tmp_path / "raw", size=(40, 30), ext=ext, **SMALL)
    stats = convert_ph2(raw, tmp_path / "out")
    dataset, datalist = check_common_format(tmp_path / "out")
    assert dataset["numTraining"] == 6 and dataset["numTest"] == 0
    assert dataset["channel_names"] == {"0": "R", "1": "G", "2": "B"}
    assert dataset["labels"] == {"background": 0, "lesion": 1}
    assert [i["class"] for i in datalist["training"]] == [
        "common_nevus",
        "atypical_nevus",
        "common_nevus",
        "atypical_nevus",
        "melanoma",
        "common_nevus",
    ]
    item = datalist["training"][0]
    assert item["case"] == "IMD001" and item["image"] == "imagesTr/IMD001.png"
    source = raw / "PH2 Dataset images" / "IMD001"
    image = pixels(tmp_path / "out" / item["image"])
    assert image.shape == (30, 40, 3)
    assert np.array_equal(image, pixels(source / "IMD001_Dermoscopic_Image" / f"IMD001{ext}"))
    label = pixels(tmp_path / "out" / item["label"])
    assert set(np.unique(label)) == {0, 1}
    assert np.array_equal(label, pixels(source / "IMD001_lesion" / f"IMD001_lesion{ext}") // 255)
    assert stats["training_detail"]["empty_masks"] == 0
    assert stats["training_detail"]["classes"] == {"atypical_nevus": 2, "common_nevus": 3, "melanoma": 1}


def test_ph2_reads_the_published_bar_table(tmp_path: Path) -> None:
    raw = make_raw("ph2", tmp_path / "raw", size=(24, 16), table="txt", **SMALL)
    assert (raw / "PH2_dataset.txt").is_file() and not (raw / "PH2_dataset.csv").exists()
    convert_ph2(raw, tmp_path / "out")
    _, datalist = load(tmp_path / "out")
    assert Counter(i["class"] for i in datalist["training"]) == {"common_nevus": 3, "atypical_nevus": 2, "melanoma": 1}


def test_ph2_without_table_has_no_classes(tmp_path: Path) -> None:
    raw = make_raw("ph2", tmp_path / "raw", size=(24, 16), **SMALL)
    (raw / "PH2_dataset.csv").unlink()
    convert_ph2(raw, tmp_path / "out")
    dataset, datalist = load(tmp_path / "out")
    assert "class" not in datalist["training"][0]
    assert any("not stratified" in note for note in dataset["notes"])


def test_ph2_truncated_image(tmp_path: Path) -> None:
    raw = make_raw("ph2", tmp_path / "raw", size=(40, 30), **SMALL)
    bad = raw / "PH2 Dataset images" / "IMD004" / "IMD004_Dermoscopic_Image" / "IMD004.bmp"
    truncate(bad)
    out = tmp_path / "out"
    assert_fails_cleanly(lambda: convert_ph2(raw, out), out, str(bad), match="corrupt or truncated")


def test_ph2_mask_size_mismatch(tmp_path: Path) -> None:
    raw = make_raw("ph2", tmp_path / "raw", size=(40, 30), **SMALL)
    bad = raw / "PH2 Dataset images" / "IMD002" / "IMD002_lesion" / "IMD002_lesion.bmp"
    Image.new("L", (30, 40)).save(bad)
    out = tmp_path / "out"
    assert_fails_cleanly(lambda: convert_ph2(raw, out), out, str(bad), "30x40", "40x30")


def test_ph2_non_binary_mask(tmp_path: Path) -> None:
    raw = make_raw("ph2", tmp_path / "raw", size=(40, 30), **SMALL)
    bad = raw / "PH2 Dataset images" / "IMD003" / "IMD003_lesion" / "IMD003_lesion.bmp"
    Image.fromarray(np.full((30, 40), 7, dtype=np.uint8)).save(bad)
    out = tmp_path / "out"
    assert_fails_cleanly(lambda: convert_ph2(raw, out), out, str(bad), match="not binary")


@pytest.mark.parametrize("layout", ["empty", "wrong"])
def test_ph2_wrong_source_folder(tmp_path: Path, layout: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    if layout == "wrong":
        (src / "images").mkdir()
        Image.new("RGB", (4, 4)).save(src / "images" / "a.png")
    out = tmp_path / "out"
    assert_fails_cleanly(lambda: convert_ph2(src, out), out, str(src), "PH2 Dataset images", "IMDnnn_lesion")


def test_ph2_missing_lesion_mask(tmp_path: Path) -> None:
    raw = make_raw("ph2", tmp_path / "raw", size=(24, 16), **SMALL)
    case = raw / "PH2 Dataset images" / "IMD005"
    (case / "IMD005_lesion" / "IMD005_lesion.bmp").unlink()
    out = tmp_path / "out"
    assert_fails_cleanly(lambda: convert_ph2(raw, out), out, str(case), "IMD005_lesion")


def test_existing_output_refused_then_overwritten_atomically(tmp_path: Path) -> None:
    raw = make_raw("ph2", tmp_path / "raw", size=(24, 16), **SMALL)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(DataError, match="--overwrite"):
        convert_ph2(raw, out)
    assert (out / "keep.txt").read_text() == "old"
    truncate(raw / "PH2 Dataset images" / "IMD006" / "IMD006_Dermoscopic_Image" / "IMD006.bmp")
    with pytest.raises(DataError, match="IMD006"):
        convert_ph2(raw, out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]  # the old output is untouched
    convert_ph2(raw, out, overwrite=True, limit=5)
    assert not (out / "keep.txt").exists() and load(out)[0]["numTraining"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "raw"]


def test_empty_existing_output_folder_is_fine(tmp_path: Path) -> None:
    raw = make_raw("ph2", tmp_path / "raw", size=(24, 16), **SMALL)
    (tmp_path / "out").mkdir()
    convert_ph2(raw, tmp_path / "out")
    assert load(tmp_path / "out")[0]["numTraining"] == 6


# --------------------------------------------------------------------------------------------------------- COCO
def test_rle_hand_vectors_and_round_trip() -> None:
    assert counts_to_string([1, 1, 2]) == "112" and counts_to_string([4]) == "4"
    assert counts_from_string(counts_to_string([5, 10, 3, 2])) == [5, 10, 3, 2]  # negative difference
    mask = np.array([[0, 1], [1, 0]], dtype=np.uint8)
    assert mask_to_counts(mask) == [1, 2, 1]  # column-major
    assert np.array_equal(rle_to_mask("121", 2, 2), mask)
    assert mask_to_counts(np.ones((2, 3))) == [0, 6]
    rng = np.random.default_rng(0)
    for _ in range(50):
        h, w = rng.integers(1, 30, 2)
        m = (rng.random((h, w)) < rng.random()).astype(np.uint8)
        counts = mask_to_counts(m)
        assert counts_from_string(counts_to_string(counts)) == counts
        assert np.array_equal(rle_to_mask(counts_to_string(counts), h, w), m)
        assert np.array_equal(rle_to_mask(counts, h, w), m)
    with pytest.raises(ValueError, match="add up"):
        rle_to_mask([1, 2], 2, 2)


def test_polygon_rasterisation_uses_pixel_centres() -> None:
    mask = polygon_to_mask([1, 1, 4, 1, 4, 3, 1, 3], height=5, width=6)
    expected = np.zeros((5, 6), dtype=np.uint8)
    expected[1:3, 1:4] = 1
    assert np.array_equal(mask, expected)


def _coco_export(tmp_path: Path, annotations: list[dict], images: int = 3, size: tuple[int, int] = (8, 6)) -> Path:
    """A hand-made Roboflow export: ``train/`` with ``images`` grey-as-RGB PNGs and the given annotations."""
    src = tmp_path / "coco"
    (src / "train").mkdir(parents=True)
    w, h = size
    entries = []
    for i in range(images):
        name = f"{100 + i}_jpg.rf.{i:032x}.png"
        Image.fromarray(np.full((h, w, 3), 40 * i, dtype=np.uint8)).save(src / "train" / name)
        entries.append({"id": i, "file_name": name, "height": h, "width": w})
    cats = [
        {"id": 0, "name": "tumor", "supercategory": "none"},
        {"id": 1, "name": "0", "supercategory": "tumor"},
        {"id": 2, "name": "1", "supercategory": "tumor"},
    ]
    data = {"categories": cats, "images": entries, "annotations": annotations}
    (src / "train" / "_annotations.coco.json").write_text(json.dumps(data))
    return src


def _ann(ann_id: int, image_id: int, category: int, segmentation, area: float = 1) -> dict:
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category,
        "segmentation": segmentation,
        "bbox": [0, 0, 1, 1],
        "area": area,
        "iscrowd": 0,
    }


def _coco_fixture(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    rle_mask = np.zeros((6, 8), dtype=np.uint8)
    rle_mask[4:6, 5:8] = 1  # 6 pixels, category 2, compressed RLE
    list_mask = np.zeros((6, 8), dtype=np.uint8)
    list_mask[0, :] = 1  # 8 pixels, category 2, uncompressed RLE
    anns = [
        _ann(0, 0, 1, [[1, 1, 4, 1, 4, 3, 1, 3]], 6),  # polygon, 2 rows x 3 columns, category 1
        _ann(1, 0, 2, {"size": [6, 8], "counts": counts_to_string(mask_to_counts(rle_mask))}, 6),
        _ann(2, 1, 2, {"size": [6, 8], "counts": mask_to_counts(list_mask)}, 8),
        _ann(3, 1, 1, [[0, 0, 2, 0, 2, 2, 0, 2]], 4),  # overlaps the row-0 run of category 2: 2 wins there
    ]
    expected0 = np.zeros((6, 8), dtype=np.uint8)
    expected0[1:3, 1:4] = 1
    expected0[4:6, 5:8] = 2
    expected1 = np.zeros((6, 8), dtype=np.uint8)
    expected1[0:2, 0:2] = 1
    expected1[0, :] = 2
    return _coco_export(tmp_path, anns), {"100": expected0, "101": expected1, "102": np.zeros((6, 8), np.uint8)}


def test_coco_category_mode_exact(tmp_path: Path) -> None:
    src, expected = _coco_fixture(tmp_path)
    convert_coco(src, tmp_path / "out", label_mode="category")
    dataset, datalist = check_common_format(tmp_path / "out")
    assert dataset["labels"] == {"background": 0, "tumor_0": 1, "tumor_1": 2}
    assert dataset["source_categories"]["0"]["label"] == 0  # the supercategory-only class is skipped
    assert dataset["polygons_are_bounding_boxes"] is False
    assert dataset["channel_names"] == {"0": "R", "1": "G", "2": "B"}  # grey stored as RGB stays RGB
    items = {i["case"]: i for i in datalist["training"]}
    assert sorted(items) == [f"{100 + i}_{i:032x}"[:12] for i in range(3)]
    for case, item in items.items():
        assert np.array_equal(pixels(tmp_path / "out" / item["label"]), expected[case[:3]]), case
    assert [items[c]["class"] for c in sorted(items)] == ["tumor_0", "tumor_1", "none"]
    assert any("1 image(s) have no annotation" in n for n in dataset["notes"])


def test_coco_binary_mode_is_the_union(tmp_path: Path) -> None:
    src, expected = _coco_fixture(tmp_path)
    convert_coco(src, tmp_path / "out", label_mode="binary")
    dataset, datalist = check_common_format(tmp_path / "out")
    assert dataset["labels"] == {"background": 0, "lesion": 1}
    for item in datalist["training"]:
        label = pixels(tmp_path / "out" / item["label"])
        assert np.array_equal(label, (expected[item["case"][:3]] > 0).astype(np.uint8))
    counts = [int(pixels(tmp_path / "out" / i["label"]).sum()) for i in datalist["training"]]
    assert counts == [6 + 6, 8 + 2, 0]


def test_coco_splits_rle_forms_and_test_set(tmp_path: Path) -> None:
    outs = {}
    for fmt in ("polygon", "mixed"):
        raw = make_raw("coco", tmp_path / f"raw_{fmt}", n=10, seed=1, size=(48, 40), seg_format=fmt, test=3)
        convert_coco(raw, tmp_path / fmt)
        outs[fmt] = check_common_format(tmp_path / fmt)
    dataset, datalist = outs["mixed"]
    assert dataset["numTraining"] == 10 and dataset["numTest"] == 3
    assert Counter(i["split"] for i in datalist["training"]) == {"train": 8, "valid": 2}
    assert dataset["source_splits"] == {"test": 3, "train": 8, "valid": 2}
    assert all(i["image"].startswith("imagesTs/") for i in datalist["testing"])
    annotations = json.loads((tmp_path / "raw_mixed" / "train" / "_annotations.coco.json").read_text())["annotations"]
    kinds = Counter(
        type(a["segmentation"]).__name__
        + str(type(a["segmentation"].get("counts")).__name__ if isinstance(a["segmentation"], dict) else "")
        for a in annotations
    )
    assert set(kinds) == {"list", "dictstr", "dictlist"}
    for a, b in zip(outs["polygon"][1]["training"], datalist["training"], strict=True):  # RLE == polygon result
        assert np.array_equal(pixels(tmp_path / "polygon" / a["label"]), pixels(tmp_path / "mixed" / b["label"]))
    empty = [i for i in datalist["training"] if not pixels(tmp_path / "mixed" / i["label"]).any()]
    assert {i["class"] for i in empty} == {"none"} and len(empty) >= 1


def test_coco_bounding_box_polygons_are_detected(tmp_path: Path) -> None:
    anns = [_ann(0, 0, 1, [[1, 1, 4, 1, 4, 3, 1, 3, 1, 1]]), _ann(1, 1, 2, [[0, 0, 2, 0, 2, 5, 0, 5]])]
    src = _coco_export(tmp_path, anns, images=2)
    assert polygons_are_boxes(load_splits(src))
    convert_coco(src, tmp_path / "out")
    dataset, _ = load(tmp_path / "out")
    assert dataset["polygons_are_bounding_boxes"] is True and any("boxes" in n for n in dataset["notes"])
    synthetic = make_raw("coco", tmp_path / "raw", n=4, size=(32, 24))
    assert not polygons_are_boxes(load_splits(synthetic))


def test_coco_augmented_copies_share_a_fold(tmp_path: Path) -> None:
    raw = make_raw("coco", tmp_path / "raw", n=12, size=(32, 24), copies=6, valid_fraction=0)
    convert_coco(raw, tmp_path / "out")
    _, datalist = check_common_format(tmp_path / "out")
    assert len(datalist["training"]) == 18
    folds = defaultdict(set)
    for item in datalist["training"]:
        folds[item["source_image"]].add(item["fold"])
    assert len(folds) == 12 and all(len(f) == 1 for f in folds.values())


def test_coco_missing_image_file(tmp_path: Path) -> None:
    src, _ = _coco_fixture(tmp_path)
    missing = next((src / "train").glob("101_*.png"))
    missing.unlink()
    out = tmp_path / "out"
    assert_fails_cleanly(lambda: convert_coco(src, out), out, missing.name, "_annotations.coco.json", "missing")


def test_coco_image_size_differs_from_json(tmp_path: Path) -> None:
    src, _ = _coco_fixture(tmp_path)
    bad = next((src / "train").glob("102_*.png"))
    Image.new("RGB", (6, 8)).save(bad)
    out = tmp_path / "out"
    assert_fails_cleanly(lambda: convert_coco(src, out), out, bad.name, "6x8", "8x6")


def test_coco_bad_json_and_wrong_folder(tmp_path: Path) -> None:
    src, _ = _coco_fixture(tmp_path)
    out = tmp_path / "out"
    (src / "train" / "_annotations.coco.json").write_text("{not json")
    assert_fails_cleanly(lambda: convert_coco(src, out), out, "_annotations.coco.json", match="not valid JSON")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_fails_cleanly(lambda: convert_coco(empty, out), out, str(empty), "train/_annotations.coco.json")
    with pytest.raises(DataError, match="binary"):
        convert_coco(src, out, label_mode="multi")


def test_coco_truncated_jpeg(tmp_path: Path) -> None:
    raw = make_raw("coco", tmp_path / "raw", n=4, size=(32, 24), valid_fraction=0)
    bad = sorted((raw / "train").glob("*.jpg"))[2]
    truncate(bad)
    out = tmp_path / "out"
    assert_fails_cleanly(lambda: convert_coco(raw, out), out, str(bad), match="truncated")


# ---------------------------------------------------------------------------------------------------- RGB masks
def _rgb_export(tmp_path: Path, mask: np.ndarray, suffix: str = "", mask_ext: str = ".png") -> Path:
    src = tmp_path / "rgb"
    (src / "images").mkdir(parents=True)
    (src / "masks").mkdir()
    h, w = mask.shape[:2]
    Image.fromarray(np.full((h, w, 3), 200, dtype=np.uint8)).save(src / "images" / "slide 1.jpg")
    Image.fromarray(mask).save(src / "masks" / f"slide 1{suffix}{mask_ext}")
    return src


def _ipmn_mask() -> tuple[np.ndarray, np.ndarray]:
    mask = np.zeros((4, 5, 3), dtype=np.uint8)
    mask[0, :] = 255
    mask[1, 1:3] = 128
    expected = np.zeros((4, 5), dtype=np.uint8)
    expected[0, :] = 1
    expected[1, 1:3] = 2
    return mask, expected


def test_rgb_masks_three_class_exact(tmp_path: Path) -> None:
    mask, expected = _ipmn_mask()
    src = _rgb_export(tmp_path, mask, suffix="_mask")
    convert_rgb_masks(src, tmp_path / "out", colour_map="ipmn3")
    dataset, datalist = check_common_format(tmp_path / "out")
    assert dataset["labels"] == {"background": 0, "ipmn": 1, "other_tissue": 2}
    item = datalist["training"][0]
    assert item["case"] == "slide_1"
    assert np.array_equal(pixels(tmp_path / "out" / item["label"]), expected)


def test_rgb_masks_two_class_and_json_map(tmp_path: Path) -> None:
    mask, expected = _ipmn_mask()
    mask[1, 1:3] = 0
    src = _rgb_export(tmp_path, mask)
    convert_rgb_masks(src, tmp_path / "a", colour_map="ipmn2")
    assert load(tmp_path / "a")[0]["labels"] == {"background": 0, "ipmn": 1}
    assert np.array_equal(pixels(tmp_path / "a" / "labelsTr" / "slide_1.png"), (expected == 1).astype(np.uint8))
    cmap = tmp_path / "map.json"
    cmap.write_text(json.dumps({"lesion": [255, 255, 255], "background": [0, 0, 0]}))
    convert_rgb_masks(src, tmp_path / "b", colour_map=str(cmap), mask_suffix="")
    assert load(tmp_path / "b")[0]["labels"] == {"background": 0, "lesion": 1}


def test_rgb_masks_unknown_colour(tmp_path: Path) -> None:
    mask, _ = _ipmn_mask()
    mask[3, 4] = (10, 200, 30)
    src = _rgb_export(tmp_path, mask)
    out = tmp_path / "out"
    bad = src / "masks" / "slide 1.png"
    assert_fails_cleanly(lambda: convert_rgb_masks(src, out, "ipmn3"), out, str(bad), "RGB(10, 200, 30)")
    assert_fails_cleanly(lambda: convert_rgb_masks(src, out, "ipmn3", tolerance=20), out, "RGB(10, 200, 30)")


def test_rgb_masks_tolerance_snaps_near_colours(tmp_path: Path) -> None:
    mask, expected = _ipmn_mask()
    mask[0, 0] = (250, 251, 255)
    mask[1, 1] = (120, 133, 128)
    mask[3, 3] = (6, 0, 3)
    src = _rgb_export(tmp_path, mask)
    out = tmp_path / "out"
    assert_fails_cleanly(lambda: convert_rgb_masks(src, out, "ipmn3"), out, "RGB(", "--tolerance")
    convert_rgb_masks(src, out, "ipmn3", tolerance=12)
    assert np.array_equal(pixels(out / "labelsTr" / "slide_1.png"), expected)


def test_rgb_masks_jpeg_damaged_synthetic(tmp_path: Path) -> None:
    png = make_raw("ipmn", tmp_path / "png", size=(48, 40), **SMALL)
    jpg = make_raw("ipmn", tmp_path / "jpg", size=(48, 40), mask_ext=".jpg", **SMALL)
    convert_rgb_masks(png, tmp_path / "png_out", colour_map=png / "colour_map.json")
    check_common_format(tmp_path / "png_out")
    out = tmp_path / "jpg_out"
    assert_fails_cleanly(lambda: convert_rgb_masks(jpg, out, "ipmn3"), out, "unknown mask colour")
    convert_rgb_masks(jpg, out, "ipmn3", tolerance=80)
    agree = [
        (
            pixels(out / "labelsTr" / f"case_{i:03d}.png")
            == pixels(tmp_path / "png_out" / "labelsTr" / f"case_{i:03d}.png")
        ).mean()
        for i in range(6)
    ]
    assert min(agree) > 0.97


def test_rgb_masks_bad_inputs(tmp_path: Path) -> None:
    mask, _ = _ipmn_mask()
    src = _rgb_export(tmp_path, mask)
    out = tmp_path / "out"
    Image.new("RGB", (5, 4)).save(src / "images" / "orphan.png")
    assert_fails_cleanly(lambda: convert_rgb_masks(src, out), out, "orphan.png", match="no mask")
    (src / "images" / "orphan.png").unlink()
    Image.new("RGB", (6, 4)).save(src / "masks" / "slide 1.png")
    assert_fails_cleanly(lambda: convert_rgb_masks(src, out), out, "slide 1.png", "6x4", "5x4")
    with pytest.raises(DataError, match="ipmn2"):
        convert_rgb_masks(src, out, colour_map="nonsense")
    (tmp_path / "nobg.json").write_text(json.dumps({"ipmn": [255, 255, 255]}))
    with pytest.raises(DataError, match="background"):
        convert_rgb_masks(src, out, colour_map=str(tmp_path / "nobg.json"))
    assert_fails_cleanly(lambda: convert_rgb_masks(tmp_path, out), out, str(tmp_path / "images"), "masks/")


# ----------------------------------------------------------------------------------------------- instance masks
def test_glas_instances_become_binary(tmp_path: Path) -> None:
    raw = make_raw("glas", tmp_path / "raw", n=10, size=(48, 40), test=2)
    assert b"\r" in (raw / "Grade.csv").read_bytes() and b"\n" not in (raw / "Grade.csv").read_bytes()
    stats = convert_instance_masks(raw, tmp_path / "out")
    dataset, datalist = check_common_format(tmp_path / "out")
    assert dataset["numTraining"] == 10 and dataset["numTest"] == 2
    assert [i["case"] for i in datalist["testing"]] == ["testA_1", "testA_2"]
    for item in datalist["training"][:3]:
        anno = pixels(raw / f"{item['case']}_anno.png")
        assert anno.max() >= 2  # several instances in the source
        assert np.array_equal(pixels(tmp_path / "out" / item["label"]), (anno > 0).astype(np.uint8))
    assert {i["class"] for i in datalist["training"]} == {"benign", "malignant"}
    folds = defaultdict(set)
    for item in datalist["training"]:
        folds[item["patient"]].add(item["fold"])
    assert all(len(f) == 1 for f in folds.values())
    assert stats["patients"] == len(folds)


def test_glas_bmp_and_missing_annotation(tmp_path: Path) -> None:
    raw = make_raw("glas", tmp_path / "raw", n=5, size=(32, 24), test=0, ext=".bmp")
    convert_instance_masks(raw, tmp_path / "ok")
    assert load(tmp_path / "ok")[0]["numTraining"] == 5
    (raw / "train_3_anno.bmp").unlink()
    out = tmp_path / "out"
    assert_fails_cleanly(lambda: convert_instance_masks(raw, out), out, "train_3.bmp", "train_3_anno")


def test_glas_grade_column_option(tmp_path: Path) -> None:
    raw = make_raw("glas", tmp_path / "raw", n=4, size=(32, 24), test=0)
    out = tmp_path / "out"
    assert_fails_cleanly(lambda: convert_instance_masks(raw, out, class_column="grade"), out, "Grade.csv", "'grade'")
    convert_instance_masks(raw, out, grade_file=None)
    assert "class" not in load(out)[1]["training"][0]


# -------------------------------------------------------------------------------------------------- CSV folders
def test_ctrus_csv_layout(tmp_path: Path) -> None:
    raw = make_raw("ctrus", tmp_path / "raw", n=12, size=(48, 32), patients=6)
    stats = convert_csv_folders(raw, tmp_path / "out")
    dataset, datalist = check_common_format(tmp_path / "out")
    assert dataset["channel_names"] == {"0": "grey"} and dataset["numTraining"] == 12
    item = datalist["training"][0]
    assert {"patient", "quality_name", "source_fold"} <= set(item)
    assert pixels(tmp_path / "out" / item["image"]).shape == (32, 48)
    for item in datalist["training"]:
        source = pixels(raw / "labels" / f"{item['case']}.jpg")
        assert np.array_equal(pixels(tmp_path / "out" / item["label"]), (source > 127).astype(np.uint8))
    assert stats["training_detail"]["empty_masks"] == 3
    folds = defaultdict(set)
    for item in datalist["training"]:
        folds[item["patient"]].add(item["fold"])
    assert len(folds) == 6 and all(len(f) == 1 for f in folds.values())
    assert any("testitem_in_fold" in note for note in dataset["notes"])


def test_ctrus_threshold_and_column_options(tmp_path: Path) -> None:
    raw = make_raw("ctrus", tmp_path / "raw", n=6, size=(48, 32), patients=3)
    convert_csv_folders(raw, tmp_path / "a", threshold=250, class_column="quality_name", patient_column=None)
    _, datalist = load(tmp_path / "a")
    assert "patient" not in datalist["training"][0] and "class" in datalist["training"][0]
    out = tmp_path / "b"
    assert_fails_cleanly(lambda: convert_csv_folders(raw, out, patient_column="subject"), out, "c-trus.csv", "subject")


def test_ctrus_missing_listed_image_and_corrupt_mask(tmp_path: Path) -> None:
    raw = make_raw("ctrus", tmp_path / "raw", n=6, size=(48, 32), patients=3)
    files = sorted((raw / "original").iterdir())
    out = tmp_path / "out"
    truncate(raw / "labels" / files[1].name)
    assert_fails_cleanly(lambda: convert_csv_folders(raw, out), out, str(raw / "labels" / files[1].name))
    files[0].unlink()
    assert_fails_cleanly(lambda: convert_csv_folders(raw, out), out, str(files[0]), match="listed in the CSV")


# ------------------------------------------------------------------------------------------------ common / demo
def test_read_image_errors_name_the_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="empty.png"):
        read_image(empty)
    with pytest.raises(DataError, match="not found"):
        read_image(tmp_path / "nothing.png")
    Image.fromarray(np.full((3, 4, 3), 9, np.uint8)).save(tmp_path / "grey3.png")
    assert read_image(tmp_path / "grey3.png").shape == (3, 4, 3)  # 3 identical channels are kept


def test_mixed_grey_and_rgb_images_are_refused(tmp_path: Path) -> None:
    raw = make_raw("ph2", tmp_path / "raw", size=(24, 16), ext=".png", **SMALL)
    odd = raw / "PH2 Dataset images" / "IMD004" / "IMD004_Dermoscopic_Image" / "IMD004.png"
    Image.fromarray(pixels(odd)[..., 0]).save(odd)
    out = tmp_path / "out"
    assert_fails_cleanly(lambda: convert_ph2(raw, out), out, str(odd), "1 channel(s)")


GREY_RULES = {
    "ph2": lambda g: g < 130,
    "coco": lambda g: g > 150,
    "ctrus": lambda g: g < 60,
    "trus_coco": lambda g: g < 60,
}


def _threshold_dice(out: Path, kind: str) -> float:
    """Dice of a fixed intensity/colour rule: proves the synthetic lesion is separable from its surroundings."""
    inter = total = 0
    for item in load(out)[1]["training"]:
        image = pixels(out / item["image"]).astype(np.float64)
        label = pixels(out / item["label"]) == 1
        image = gaussian_filter(image, (2, 2, 0) if image.ndim == 3 else 2)
        if kind in GREY_RULES:
            pred = GREY_RULES[kind](image.mean(axis=2) if image.ndim == 3 else image)
            pred[:12] = pred[:12] & (kind not in ("ctrus", "trus_coco"))  # ultrasound: transducer band
        else:  # H&E: gland epithelium and lumen are bluer than the pink stroma and the white glass
            pred = image[..., 2] - image[..., 0] > 10
        inter += int((pred & label).sum())
        total += int(pred.sum() + label.sum())
    return 2 * inter / total


@pytest.mark.parametrize("kind", ["ph2", "coco", "trus_coco", "ctrus", "ipmn", "glas"])
def test_demo_datasets_are_valid_and_learnable(tmp_path: Path, kind: str) -> None:
    out = make_demo_dataset(kind, tmp_path / "demo", n=8, seed=2)
    dataset, datalist = check_common_format(out)
    assert dataset["numTraining"] == 8
    first = pixels(out / datalist["training"][0]["image"])
    assert first.shape[0] != first.shape[1]  # non-square, so transposition bugs show
    assert _threshold_dice(out, kind) > 0.9
    again = make_demo_dataset(kind, tmp_path / "again", n=8, seed=2)
    assert load(again)[1] == datalist
    assert all(np.array_equal(pixels(out / i["label"]), pixels(again / i["label"])) for i in datalist["training"])


def test_demo_keeps_raw_and_accepts_bundle_names(tmp_path: Path) -> None:
    out = make_demo_dataset("ph2_melanoma", tmp_path / "demo", n=5, raw_dir=tmp_path / "raw", size=(32, 24))
    assert (tmp_path / "raw" / "PH2_dataset.csv").is_file()
    assert load(out)[0]["numTraining"] == 5
    with pytest.raises(DataError, match="ph2"):
        make_demo_dataset("mnist", tmp_path / "x")


def test_ensure_raw_generates_once_and_regenerates_on_change(tmp_path: Path) -> None:
    first = ensure_raw("ctrus", tmp_path, n=4, size=(32, 24))
    stamp = (first / "c-trus.csv").stat().st_mtime_ns
    assert ensure_raw("ctrus", tmp_path, n=4, size=(32, 24)) == first == tmp_path / "ctrus"
    assert (first / "c-trus.csv").stat().st_mtime_ns == stamp
    ensure_raw("ctrus", tmp_path, n=5, size=(32, 24))
    assert len((first / "c-trus.csv").read_text().splitlines()) == 6
