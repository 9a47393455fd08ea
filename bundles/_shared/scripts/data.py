"""Data lists for the bundles: read the common format's ``datalist.json`` and fail early with clear messages."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
from monai.data import PILReader, PILWriter
from PIL import Image, UnidentifiedImageError

try:  # libspng's PNG decoder: the same pixels as PIL's, faster (FastPNGReader; optional, PIL otherwise)
    import pyspng
except ImportError:  # pragma: no cover - depends on the install
    pyspng = None

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


#: PIL modes whose PNG pixels libspng decodes to exactly the array ``np.asarray`` gives for the PIL image (8-bit
#: grey, RGB, RGBA); palette, 16-bit, 1-bit, grey + alpha (pyspng 0.1.4 cannot) and transparency-keyed PNGs are
#: left to PIL.
_SPNG_MODES = {"L": 1, "RGB": 3, "RGBA": 4}


class _SpngPixels:
    """A lazily opened PIL image (header only) whose pixels ``np.asarray`` takes from libspng; every other
    attribute is the PIL image's, so MONAI's ``PILReader.get_data`` reads its metadata unchanged."""

    def __init__(self, image: Image.Image) -> None:
        self._image = image

    def __getattr__(self, name: str):
        if name.startswith("__"):  # NumPy would take PIL's own ``__array_interface__`` (PIL's decoding) first
            raise AttributeError(name)
        return getattr(self._image, name)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        image, channels = self._image, _SPNG_MODES[self._image.mode]
        if getattr(image, "fp", None) is not None:  # the file PIL opened for the header: read it once more, whole
            image.fp.seek(0)
            data = image.fp.read()
        else:
            with open(image.filename, "rb") as f:
                data = f.read()
        try:
            pixels = pyspng.load(data)
        except RuntimeError:  # a PNG libspng refuses (PIL may still read it, or raise its own error)
            pixels = None
        expected = (image.height, image.width) if channels == 1 else (image.height, image.width, channels)
        if pixels is None or pixels.shape != expected or pixels.dtype != np.uint8:
            pixels = np.asarray(image)  # PIL decodes (and closes its file)
        else:
            image.close()  # PIL's lazily opened file: its pixels are not needed
        return pixels if dtype is None else pixels.astype(dtype)


class FastPNGReader(PILReader):
    """MONAI's ``PILReader`` (same array, same metadata) whose PNG pixels come from libspng (``pyspng``).

    PIL reads each image's header as before; where the PNG is 8-bit grey, RGB or RGBA without a transparency key,
    its pixels are decoded by libspng: the real 765x572 PH2 PNGs load in 10.8 against 15.0 ms (1.39x; GlaS 1.43x;
    grey C-TRUS PNGs 1.03x) on an Intel Xeon (``python scripts/bench_inference.py parts --png_dirs ...``,
    ``benchmarks/results/inference_parts_cpu_xeon_amx.json``). Anything else (palette, 16-bit, JPEG, BMP), a
    missing ``pyspng`` or a ``converter`` goes through PIL unchanged. ``LoadImaged(reader=...)`` keeps MONAI's
    default readers behind this one for NIfTI and DICOM.
    """

    def read(self, data, **kwargs):
        images = super().read(data, **kwargs)  # PIL opens lazily: the header only
        if isinstance(images, list):
            return [self._fast(i) for i in images]
        return self._fast(images)

    def _fast(self, image: Image.Image):
        if pyspng is None or callable(self.converter) or not getattr(image, "filename", ""):
            return image  # no libspng, a converted image, or one not read from a path
        if image.format != "PNG" or image.mode not in _SPNG_MODES or "transparency" in image.info:
            return image
        return _SpngPixels(image)


class MaskPNGWriter(PILWriter):
    """MONAI's ``PILWriter`` that saves PNGs at zlib level 1 instead of PIL's 6: a predicted mask (a few labels,
    large flat regions) is written faster for a file a few hundred bytes larger; PNG is lossless at every level.
    Other formats are saved as by ``PILWriter``. The effect on the whole pipeline: README, Speed ("Writing made
    cheaper")."""

    png_compress_level = 1

    def write(self, filename, verbose: bool = False, **kwargs):
        if str(filename).lower().endswith(".png"):
            kwargs.setdefault("compress_level", self.png_compress_level)
        super().write(filename, verbose=verbose, **kwargs)


def mask_writer(output_ext: str) -> type[PILWriter] | None:
    """The writer for predicted masks saved as ``output_ext``: :class:`MaskPNGWriter` for ``.png``, None (MONAI's
    choice by extension) otherwise; for ``SaveImaged(writer=...)``."""
    return MaskPNGWriter if str(output_ext).lower() == ".png" else None
