"""The common on-disk format: image reading, the atomic dataset writer, ``dataset.json`` and ``datalist.json``.

Every converter turns its source layout into a list of :class:`SourceCase` (where the image is, how to make its
label, which split, class and patient it has) and hands it to :func:`write_dataset`, which writes

```
<out>/imagesTr/<case>.png  labelsTr/<case>.png  [imagesTs/ labelsTs/]  dataset.json  datalist.json
```

into a temporary folder next to ``<out>`` and renames it into place only when everything succeeded. On any error
the temporary folder is removed and ``<out>`` is left as it was (absent, or the previous dataset).
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .errors import DataError
from .folds import assign_folds, fold_table

__all__ = [
    "IMAGE_EXTENSIONS",
    "DatasetInfo",
    "SourceCase",
    "atomic_output",
    "binarize",
    "find_by_stem",
    "limit_cases",
    "list_images",
    "read_image",
    "read_label_source",
    "safe_case_id",
    "to_single_channel",
    "write_dataset",
]

IMAGE_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg")
SPLIT_TEST = "test"
PNG_COMPRESS_LEVEL = 3  # lossless either way; 3 is ~3x faster than the default 6 for ~5 % larger files

LabelMaker = Callable[[np.ndarray], np.ndarray]


@dataclass
class SourceCase:
    """One case of a source dataset, before conversion.

    Args:
        case: the case id (becomes the file stem in the common format; must be unique).
        image_path: the source image.
        make_label: called with the decoded image array, returns the uint8 label map (H x W).
        split: ``"train"``, ``"valid"`` (kept as training data, marked on the item) or ``"test"``.
        label_path: the source mask, for error messages (``None`` where the label comes from annotations).
        cls: class to stratify folds by (e.g. the diagnosis), or ``None``.
        patient: patient id to group folds by, or ``None``.
        group: other grouping key for folds (e.g. the source image of augmented copies), used where no patient.
        meta: extra fields copied onto the datalist item.
    """

    case: str
    image_path: Path
    make_label: LabelMaker
    split: str = "train"
    label_path: Path | None = None
    cls: str | None = None
    patient: str | None = None
    group: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class DatasetInfo:
    """What goes into ``dataset.json`` besides the counts.

    Args:
        name: dataset name.
        description: one or two sentences.
        labels: ``{"background": 0, "lesion": 1, ...}`` with consecutive values.
        source: where the raw data came from.
        licence: the data licence.
        reference: the paper or page to cite.
        converter: the converter that produced it (module and options).
        notes: free-text remarks (e.g. "segmentations are bounding boxes").
        extra: additional top-level keys.
    """

    name: str
    description: str
    labels: dict[str, int]
    source: str = ""
    licence: str = "unknown"
    reference: str = ""
    converter: str = ""
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------------- reading
def read_image(path: str | Path, what: str = "image") -> np.ndarray:
    """Decode an image file fully into an array, with a clear error for unreadable files.

    Grey stays grey (H x W), RGB stays RGB (H x W x 3, also when the three channels are equal). Alpha is dropped,
    palette images become RGB, 1-bit images become uint8 0/255, 16-bit grey stays uint16.

    Args:
        path: the file.
        what: what the file is, for the error message (``"image"``, ``"mask"``).

    Returns:
        The pixel array.

    Raises:
        DataError: the file is missing, not an image, corrupt or truncated.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, f"{what} file not found", "check the path and the source folder layout")
    try:
        with Image.open(path) as im:
            im.load()
            return _to_array(im)
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise DataError(
            path, f"{what} cannot be decoded, the file is corrupt or truncated ({exc})", "re-export or remove it"
        ) from exc


def _to_array(im: Image.Image) -> np.ndarray:
    if im.mode == "1":
        return np.asarray(im.convert("L"))
    if im.mode in ("L", "RGB"):
        return np.asarray(im)
    if im.mode in ("I;16", "I;16B", "I;16L"):
        return np.asarray(im).astype(np.uint16)
    if im.mode == "I":
        arr = np.asarray(im)
        return arr.astype(np.uint16) if arr.size and arr.min() >= 0 and arr.max() < 65536 else arr
    if im.mode == "LA":
        return np.asarray(im.convert("L"))
    if im.mode == "P" and "transparency" not in im.info:
        return np.asarray(im.convert("RGB"))
    return np.asarray(im.convert("RGB"))


def read_label_source(path: str | Path) -> np.ndarray:
    """Read a mask file keeping raw values: palette indices stay indices (1-bit becomes 0/255)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "mask file not found", "check the path and the source folder layout")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode == "P":
                return np.asarray(im)
            return _to_array(im)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise DataError(path, f"mask cannot be decoded, the file is corrupt or truncated ({exc})") from exc


def to_single_channel(mask: np.ndarray, path: Path) -> np.ndarray:
    """A 2-D view of a mask stored with 3 identical channels; an error if the channels differ."""
    if mask.ndim == 2:
        return mask
    if mask.ndim == 3 and (mask == mask[..., :1]).all():
        return mask[..., 0]
    raise DataError(
        path,
        "mask has differing colour channels where a single-channel mask was expected",
        "use the rgb_masks converter with a colour map for colour-coded masks",
    )


def binarize(mask: np.ndarray, path: Path, threshold: float | None = None) -> np.ndarray:
    """A binary 0/1 uint8 label from a mask.

    Args:
        mask: the mask array (grey, or 3 identical channels).
        path: the mask file, for errors.
        threshold: ``None`` for lossless masks: values must be {0, 1} or {0, 255} (else an error); a number for
            lossy (JPEG) masks: foreground is ``value > threshold``.

    Returns:
        uint8 array with values 0 and 1.
    """
    if threshold is not None:
        if mask.ndim == 3:
            mask = mask.mean(axis=2)
        return (mask > threshold).astype(np.uint8)
    mask = to_single_channel(mask, path)
    values = set(np.unique(mask).tolist())
    if not (values <= {0, 1} or values <= {0, 255}):
        shown = sorted(values)[:8]
        raise DataError(
            path,
            f"mask is not binary: values {shown}{'...' if len(values) > 8 else ''}",
            "expected 0/255 or 0/1; pass a threshold for lossy (JPEG) masks",
        )
    return (mask > 0).astype(np.uint8)


def find_by_stem(folder: Path, stem: str, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> Path | None:
    """The one file ``folder/<stem><ext>`` with an image extension (any case), or ``None``.

    Raises:
        DataError: more than one file matches (e.g. both ``.bmp`` and ``.png``).
    """
    if not folder.is_dir():
        return None
    hits = sorted(p for p in folder.iterdir() if p.stem == stem and p.suffix.lower() in extensions and p.is_file())
    if len(hits) > 1:
        raise DataError(folder, f"several files for '{stem}': {[p.name for p in hits]}", "keep only one of them")
    return hits[0] if hits else None


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder`` (sorted), hidden files skipped."""
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    )


def safe_case_id(name: str) -> str:
    """A file-system and URL safe case id: letters, digits, ``_`` and ``-``; other runs become ``_``."""
    safe = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_")
    if not safe:
        raise DataError(None, f"cannot make a case id from the name {name!r}")
    return safe


def limit_cases(cases: list[SourceCase], limit: int | None) -> list[SourceCase]:
    """At most ``limit`` cases per split (the first ones by case id), for quick trial runs and tests."""
    if limit is None:
        return cases
    taken: Counter = Counter()
    kept = []
    for c in sorted(cases, key=lambda c: c.case):
        split = "test" if c.split == SPLIT_TEST else "train"
        if taken[split] < limit:
            kept.append(c)
            taken[split] += 1
    return kept


# --------------------------------------------------------------------------------------------------------- writing
@contextmanager
def atomic_output(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder next to ``out`` and move it to ``out`` only if the block succeeds.

    Args:
        out: the final output folder.
        overwrite: replace an existing non-empty ``out`` (it is replaced only after the new one is complete).

    Raises:
        DataError: ``out`` exists (and is not empty) and ``overwrite`` is false, or is a file.
    """
    out = Path(out).absolute()
    check_output(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        check_output(out, overwrite)
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_output(out: Path, overwrite: bool) -> None:
    """Refuse an existing output unless overwriting (an empty folder is fine)."""
    if out.is_file():
        raise DataError(out, "output path is a file", "choose a folder path for --out")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise DataError(out, "output folder already exists", "pass --overwrite to replace it, or choose another --out")


def _replace(tmp: Path, out: Path) -> None:
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    if not out.exists():
        tmp.rename(out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    old.rmdir()
    out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def save_png(array: np.ndarray, path: Path) -> None:
    """Write an array as a lossless PNG."""
    Image.fromarray(array).save(path, format="PNG", compress_level=PNG_COMPRESS_LEVEL)


def write_json(data: Any, path: Path) -> None:
    """Write JSON with indent 4 and a trailing newline."""
    path.write_text(json.dumps(data, indent=4) + "\n", encoding="utf-8")


@dataclass
class _Written:
    """What the writer remembers about one converted case."""

    source: SourceCase
    item: dict[str, Any]
    shape: tuple[int, ...]
    foreground: float
    values: tuple[int, ...]


def write_dataset(
    cases: Sequence[SourceCase],
    out: str | Path,
    info: DatasetInfo,
    overwrite: bool = False,
    seed: int = 0,
    n_folds: int = 5,
) -> dict[str, Any]:
    """Convert ``cases`` into the common format at ``out``, atomically.

    Args:
        cases: the source cases (any order; written sorted by case id).
        out: output folder; must not exist unless ``overwrite``.
        info: dataset description for ``dataset.json``.
        overwrite: replace an existing output folder.
        seed: fold seed.
        n_folds: number of folds.

    Returns:
        Summary statistics (also stored under ``"statistics"`` in ``dataset.json``) plus the ``"seconds"`` taken.

    Raises:
        DataError: on any bad input; nothing is left at ``out`` then (or the old dataset is left unchanged).
    """
    _check_labels(info.labels)
    _check_unique([c.case for c in cases])
    start = time.perf_counter()
    with atomic_output(out, overwrite) as tmp:
        written: list[_Written] = []
        for case in sorted(cases, key=lambda c: c.case):
            written.append(_write_case(case, tmp, info.labels))
            _check_channels(written[0], written[-1])
        training = [w for w in written if w.source.split != SPLIT_TEST]
        testing = [w for w in written if w.source.split == SPLIT_TEST]
        _set_folds(training, seed, n_folds)
        stats = _statistics(training, testing, info.labels, n_folds)
        write_json(_dataset_json(info, training, testing, written, seed, n_folds, stats), tmp / "dataset.json")
        write_json(
            {"training": [w.item for w in training], "testing": [w.item for w in testing]}, tmp / "datalist.json"
        )
    return {**stats, "seconds": round(time.perf_counter() - start, 1)}


def _check_labels(labels: dict[str, int]) -> None:
    values = sorted(labels.values())
    if labels.get("background") != 0 or values != list(range(len(values))):
        raise DataError(None, f"labels must be background 0 and consecutive integers, got {labels}")


def _check_unique(case_ids: list[str]) -> None:
    dupes = sorted(k for k, n in Counter(case_ids).items() if n > 1)
    if dupes:
        raise DataError(None, f"duplicate case ids {dupes[:5]}", "two source files map to the same case name")


def _write_case(case: SourceCase, tmp: Path, labels: dict[str, int]) -> _Written:
    image = read_image(case.image_path)
    if image.dtype not in (np.uint8, np.uint16):
        raise DataError(case.image_path, f"unsupported pixel type {image.dtype}", "convert it to 8 or 16 bit first")
    label = case.make_label(image)
    _check_label(label, image, case, max(labels.values()))
    sub = ("imagesTs", "labelsTs") if case.split == SPLIT_TEST else ("imagesTr", "labelsTr")
    for folder, array in zip(sub, (image, label), strict=True):
        (tmp / folder).mkdir(exist_ok=True)
        save_png(array, tmp / folder / f"{case.case}.png")
    item = {"image": f"{sub[0]}/{case.case}.png", "label": f"{sub[1]}/{case.case}.png", "case": case.case}
    item.update(_item_meta(case))
    values = tuple(int(v) for v in np.unique(label))
    return _Written(case, item, image.shape, float((label > 0).mean()), values)


def _check_label(label: np.ndarray, image: np.ndarray, case: SourceCase, max_label: int) -> None:
    where = case.label_path or case.image_path
    if label.shape != image.shape[:2]:
        raise DataError(
            where,
            f"mask is {label.shape[1]}x{label.shape[0]} (WxH) but its image {case.image_path.name} is "
            f"{image.shape[1]}x{image.shape[0]}",
            "masks must have the same size as their images",
        )
    if label.dtype != np.uint8 or (label.size and int(label.max()) > max_label):
        raise DataError(where, f"label values exceed the {max_label} labels declared", "check the label mapping")


def _item_meta(case: SourceCase) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    if case.patient is not None:
        meta["patient"] = case.patient
    if case.cls is not None:
        meta["class"] = case.cls
    meta.update(case.meta)
    return meta


def _check_channels(first: _Written, case: _Written) -> None:
    if _channels(case.shape) != _channels(first.shape):
        raise DataError(
            case.source.image_path,
            f"image has {_channels(case.shape)} channel(s) but {first.source.image_path.name} has "
            f"{_channels(first.shape)}",
            "all images of one dataset must be either grey or RGB; convert the odd ones first",
        )


def _channels(shape: tuple[int, ...]) -> int:
    return 1 if len(shape) == 2 else shape[2]


def _set_folds(training: list[_Written], seed: int, n_folds: int) -> None:
    cases = [w.source.case for w in training]
    classes = [w.source.cls for w in training]
    groups = [w.source.patient if w.source.patient is not None else w.source.group for w in training]
    has_class = any(c is not None for c in classes)
    has_group = any(g is not None for g in groups)
    folds = assign_folds(cases, classes if has_class else None, groups if has_group else None, n_folds, seed)
    with_split = any(w.source.split != "train" for w in training)
    for w, fold in zip(training, folds, strict=True):
        head = {k: w.item.pop(k) for k in ("image", "label", "case")}
        split = {"split": w.source.split} if with_split else {}
        w.item = {**head, "fold": fold, **split, **w.item}


def _statistics(training: list[_Written], testing: list[_Written], labels: dict[str, int], n_folds: int) -> dict:
    names = {v: k for k, v in labels.items()}
    stats: dict[str, Any] = {"training": len(training), "testing": len(testing)}
    for part, ws in (("training", training), ("testing", testing)):
        if not ws:
            continue
        fg = [w.foreground for w in ws]
        stats[f"{part}_detail"] = {
            "splits": dict(sorted(Counter(w.source.split for w in ws).items())),
            "empty_masks": sum(1 for w in ws if w.values == (0,)),
            "cases_with_label": {names[v]: sum(1 for w in ws if v in w.values) for v in sorted(names) if v},
            "foreground_fraction": {"mean": _r(np.mean(fg)), "min": _r(min(fg)), "max": _r(max(fg))},
            "image_sizes_wxh": _sizes(ws),
        }
        if any(w.source.cls is not None for w in ws):
            classes = Counter(str(w.source.cls) for w in ws)
            stats[f"{part}_detail"]["classes"] = dict(sorted(classes.items()))
    if training:
        classes = [w.source.cls for w in training]
        has_class = any(c is not None for c in classes)
        stats["folds"] = fold_table([w.item["fold"] for w in training], classes if has_class else None, n_folds)
        patients = {w.source.patient for w in training if w.source.patient is not None}
        if patients:
            stats["patients"] = len(patients)
    return stats


def _r(x: float) -> float:
    return round(float(x), 4)


def _sizes(ws: list[_Written]) -> dict[str, int]:
    sizes = Counter(f"{w.shape[1]}x{w.shape[0]}" for w in ws)
    return dict(sizes.most_common(10))


def _dataset_json(
    info: DatasetInfo,
    training: list[_Written],
    testing: list[_Written],
    written: list[_Written],
    seed: int,
    n_folds: int,
    stats: dict,
) -> dict[str, Any]:
    channels = _channels(written[0].shape) if written else 1
    channel_names = {"0": "grey"} if channels == 1 else {str(i): n for i, n in enumerate("RGB"[:channels])}
    data: dict[str, Any] = {
        "name": info.name,
        "description": info.description,
        "labels": dict(sorted(info.labels.items(), key=lambda kv: kv[1])),
        "channel_names": channel_names,
        "file_ending": ".png",
        "numTraining": len(training),
        "numTest": len(testing),
        "source": info.source,
        "licence": info.licence,
        "reference": info.reference,
        "converter": info.converter,
        "folds": {"num_folds": n_folds, "seed": seed, "strategy": _fold_strategy(training)},
    }
    if info.notes:
        data["notes"] = info.notes
    data.update(info.extra)
    data["statistics"] = stats
    return data


def _fold_strategy(training: list[_Written]) -> str:
    parts = []
    if any(w.source.cls is not None for w in training):
        parts.append("stratified by class")
    if any(w.source.patient is not None for w in training):
        parts.append("grouped by patient")
    elif any(w.source.group is not None for w in training):
        parts.append("grouped by source image (augmented copies stay together)")
    return ", ".join(parts) or "random"
