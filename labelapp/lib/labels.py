"""Turn an uploaded label (as 3D Slicer or a web client saves it) into the bundles' training format.

Training format (``docs/ARCHITECTURE.md``): a uint8 PNG, background 0, the bundle's consecutive label values, the
same height x width as its image.

Accepted uploads:

- ``.nii.gz`` / ``.nii`` / ``.nrrd`` / ``.mha``: a label map on the image grid, 2D or 3D with one slice. This is what
  Slicer's MONAI Label plugin exports (``ExportSegmentsToLabelmapNode`` on the image, then ``saveNode``).
- ``.seg.nrrd``: a Slicer segmentation (one or more layers, segment names and label values in the header, possibly
  cropped to its extent: ``Segmentation_ReferenceImageExtentOffset``).
- ``.png``: a grey/palette label image with the image's width and height.

Label values are mapped to the bundles' values by segment name where the upload names its segments: Slicer sends
``label_info = [{"name": ..., "idx": ...}, ...]`` with the exported segments in order, and the exported label map
holds the 1-based position in that list (``idx`` counts skipped segments too, so the position is used, as MONAI
Label's own DICOM-SEG conversion does). Without names, values must already be the bundles' values; a 0/255 mask is
accepted when the bundles have a single foreground label.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import nrrd
import numpy as np
import SimpleITK as sitk
from PIL import Image, UnidentifiedImageError

from .errors import UnprocessableLabel, UnsupportedMedia

__all__ = ["LABEL_EXTENSIONS", "label_extension", "read_label", "to_training_label"]

LABEL_EXTENSIONS: tuple[str, ...] = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha", ".png")


def label_extension(filename: str) -> str:
    """Return the supported extension ``filename`` ends with.

    Raises:
        UnsupportedMedia: when it ends with none of :data:`LABEL_EXTENSIONS`.
    """
    name = filename.lower()
    for ext in LABEL_EXTENSIONS:
        if name.endswith(ext):
            return ext
    raise UnsupportedMedia(f"label file '{os.path.basename(filename)}' is not one of {list(LABEL_EXTENSIONS)}")


def _squeeze_2d(array: np.ndarray, what: str) -> np.ndarray:
    """Drop singleton slice axes of a row-major array; reject anything that is not one 2D slice."""
    squeezed = np.squeeze(array, axis=tuple(i for i in range(array.ndim - 2) if array.shape[i] == 1))
    if squeezed.ndim != 2:
        raise UnprocessableLabel(f"{what} has shape {array.shape} (z, y, x): a 2D image needs a label with one slice")
    return squeezed


def _read_seg_nrrd(path: str, image_hw: tuple[int, int]) -> tuple[np.ndarray, dict[int, str]]:
    """Read a Slicer ``.seg.nrrd`` onto the full image grid; return ``(H, W)`` values and their segment names."""
    data, header = nrrd.read(path)  # Fortran order: (x, y, z) or (layer, x, y, z)
    data = np.asarray(data)
    if data.ndim == 3:
        data = data[None]
    if data.ndim != 4:
        raise UnprocessableLabel(f"segmentation has {data.ndim} axes; expected (x, y, z) or (layer, x, y, z)")
    if data.shape[3] != 1:
        raise UnprocessableLabel(f"segmentation has {data.shape[3]} slices; a 2D image needs one")
    offset = [int(v) for v in str(header.get("Segmentation_ReferenceImageExtentOffset", "0 0 0")).split()]
    height, width = image_hw
    x0, y0 = offset[0], offset[1]
    if x0 < 0 or y0 < 0 or x0 + data.shape[1] > width or y0 + data.shape[2] > height:
        raise UnprocessableLabel(
            f"segmentation extent {data.shape[1]}x{data.shape[2]} at offset ({x0}, {y0}) does not fit the "
            f"{width}x{height} image"
        )
    segments = []
    i = 0
    while f"Segment{i}_Name" in header:
        layer = int(header.get(f"Segment{i}_Layer", 0))
        value = int(header.get(f"Segment{i}_LabelValue", 1))
        segments.append((layer, value, str(header[f"Segment{i}_Name"])))
        i += 1
    # Re-number (layer, value) pairs to single values; later segments win where layers overlap.
    full = np.zeros((width, height), dtype=np.int64)
    names: dict[int, str] = {}
    for new_value, (layer, value, name) in enumerate(segments, start=1):
        mask = data[layer, :, :, 0] == value
        full[x0 : x0 + data.shape[1], y0 : y0 + data.shape[2]][mask] = new_value
        names[new_value] = name
    return full.T, names


def read_label(path: str, image_hw: tuple[int, int]) -> tuple[np.ndarray, dict[int, str] | None]:
    """Read an uploaded label file as a row-major ``(H, W)`` integer array.

    Args:
        path: the uploaded file; its extension picks the reader (:data:`LABEL_EXTENSIONS`).
        image_hw: the image's ``(H, W)``; the label must have exactly this size.

    Returns:
        the label values, and ``{value: segment name}`` when the file itself names its segments (``.seg.nrrd``).

    Raises:
        UnsupportedMedia: when the file is not a readable label file.
        UnprocessableLabel: when it does not fit the image (size, slices, colour).
    """
    ext = label_extension(path)
    names: dict[int, str] | None = None
    try:
        if ext == ".seg.nrrd":
            array, names = _read_seg_nrrd(path, image_hw)
        elif ext == ".png":
            with Image.open(path) as image:
                if image.format != "PNG":
                    raise UnsupportedMedia(f"label file is {image.format}, not PNG")
                if image.mode not in ("1", "L", "P", "I", "I;16"):
                    raise UnprocessableLabel(
                        f"label PNG is {image.mode}; a label is a grey or palette image of integer values, "
                        "not a colour picture"
                    )
                array = np.asarray(image)
        else:
            array = _squeeze_2d(sitk.GetArrayFromImage(sitk.ReadImage(path)), "label")
    except (UnidentifiedImageError, OSError, RuntimeError, nrrd.NRRDError, ValueError) as e:
        raise UnsupportedMedia(f"cannot read the label as {ext}: {e}") from e
    if tuple(array.shape) != tuple(image_hw):
        raise UnprocessableLabel(
            f"label is {array.shape[1]}x{array.shape[0]} (WxH) but the image is {image_hw[1]}x{image_hw[0]}: "
            "export the label on the image's geometry"
        )
    if not np.issubdtype(array.dtype, np.integer) and not np.issubdtype(array.dtype, np.bool_):
        if not np.array_equal(array, np.round(array)):
            raise UnprocessableLabel(f"label has non-integer values ({array.dtype})")
    return array.astype(np.int64), names


def _names_from_label_info(label_info: Any) -> dict[int, str] | None:
    """Map exported label values to names from Slicer's ``label_info`` (value = 1-based position in the list)."""
    if not label_info:
        return None
    if not isinstance(label_info, Sequence) or not all(isinstance(i, Mapping) and "name" in i for i in label_info):
        raise UnprocessableLabel('label_info must be a list of {"name": ...} objects, one per exported segment')
    return {position: str(item["name"]) for position, item in enumerate(label_info, start=1)}


def to_training_label(
    array: np.ndarray,
    known: Mapping[str, int],
    names: Mapping[int, str] | None = None,
    label_info: Any = None,
) -> np.ndarray:
    """Map label values to the bundles' values and return a uint8 training label.

    Args:
        array: row-major label values (from :func:`read_label`).
        known: the bundles' labels, ``{name (lower case): value}`` without background.
        names: ``{value: segment name}`` read from the file itself; takes precedence over ``label_info``.
        label_info: Slicer's ``label_info`` list (``[{"name": ...}, ...]`` in export order), optional.

    Raises:
        UnprocessableLabel: for a value without a known name, or values that are not the bundles' labels.
    """
    names = dict(names) if names else _names_from_label_info(label_info)
    values = [int(v) for v in np.unique(array) if v != 0]
    out = np.zeros(array.shape, dtype=np.uint8)
    if names is not None:
        for value in values:
            name = names.get(value)
            if name is None:
                raise UnprocessableLabel(f"label value {value} has no segment in label_info ({len(names)} given)")
            target = known.get(name.lower())
            if target is None:
                raise UnprocessableLabel(f"segment '{name}' is not a label of the served models: {sorted(known)}")
            out[array == value] = target
        return out
    if len(known) == 1 and set(values) == {255}:
        return (array == 255).astype(np.uint8) * next(iter(known.values()))
    unknown = sorted(set(values) - set(known.values()))
    if unknown:
        raise UnprocessableLabel(
            f"label values {unknown} are not labels of the served models {dict(known)}; send label_info with "
            "segment names or use the models' values"
        )
    out[...] = array
    return out
