"""Write a predicted label map on its image's grid, as ITK (and so 3D Slicer) reads that image.

MONAI Label's own writer picks the image's extension (``.jpg`` for a JPEG study) and needs itk. Here the format is
chosen explicitly from a short list, and geometry is copied from the image header that SimpleITK reads:

- ``.nrrd`` / ``.nii.gz``: written with SimpleITK; size, spacing, origin and direction are the image's. This is what
  3D Slicer asks for (``result_extension=".nrrd"``, ``result_dtype="uint8"``) and reads with ``SimpleITK.ReadImage``.
- ``.png``: a plain label PNG with the image's width and height, for web clients.

Array conventions: ITK and MONAI's default PNG reader index pixels x first, ``(W, H)``; numpy/SimpleITK arrays are
row major, ``(H, W)``. :func:`to_row_major` converts using the image's known size, so a label is never transposed.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from PIL import Image

from .errors import BadRequest

__all__ = [
    "DEFAULT_RESULT_EXTENSION",
    "RESULT_DTYPES",
    "RESULT_EXTENSIONS",
    "Geometry",
    "check_result_format",
    "read_geometry",
    "to_row_major",
    "write_label",
]

RESULT_EXTENSIONS: tuple[str, ...] = (".nrrd", ".nii.gz", ".png")
DEFAULT_RESULT_EXTENSION = ".nrrd"
RESULT_DTYPES: dict[str, type[np.unsignedinteger]] = {"uint8": np.uint8, "uint16": np.uint16}


@dataclass(frozen=True)
class Geometry:
    """Image grid as ITK reads the file: ``size`` is x first, ``(W, H)`` or ``(W, H, D)``."""

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    @property
    def shape_hw(self) -> tuple[int, int]:
        """The 2D row-major array shape ``(H, W)``."""
        return int(self.size[1]), int(self.size[0])


def read_geometry(image_path: str) -> Geometry:
    """Read the grid of a 2D image (or a 3D one with a single slice) from its header.

    Raises:
        BadRequest: when the image is not 2D.
    """
    reader = sitk.ImageFileReader()
    reader.SetFileName(image_path)
    reader.ReadImageInformation()
    size = tuple(int(s) for s in reader.GetSize())
    if len(size) == 3 and size[2] != 1 or len(size) not in (2, 3):
        raise BadRequest(f"{os.path.basename(image_path)} is {size} (x, y[, z]); this app serves 2D images only")
    return Geometry(size, tuple(reader.GetSpacing()), tuple(reader.GetOrigin()), tuple(reader.GetDirection()))


def check_result_format(extension: str | None, dtype: str | None) -> tuple[str, str]:
    """Normalise and validate the requested result extension and dtype.

    Args:
        extension: e.g. ``".nrrd"`` or ``"nrrd"``; ``None``/empty for :data:`DEFAULT_RESULT_EXTENSION`.
        dtype: ``"uint8"`` (default) or ``"uint16"``.

    Raises:
        BadRequest: for any other value, listing the valid ones.
    """
    ext = (extension or DEFAULT_RESULT_EXTENSION).strip().lower()
    ext = ext if ext.startswith(".") else f".{ext}"
    if ext not in RESULT_EXTENSIONS:
        raise BadRequest(f"result_extension '{extension}' is not supported; use one of {list(RESULT_EXTENSIONS)}")
    name = (dtype or "uint8").strip().lower()
    if name not in RESULT_DTYPES:
        raise BadRequest(f"result_dtype '{dtype}' is not supported; use one of {list(RESULT_DTYPES)}")
    return ext, name


def to_row_major(label: np.ndarray, size_xy: Sequence[int], x_first: bool = True) -> np.ndarray:
    """Return a 2D label as a row-major ``(H, W)`` array for an image of ``size_xy = (W, H)``.

    Args:
        label: a 2D label, possibly with leading singleton (channel/batch) axes.
        size_xy: the image size as ITK reports it, x first.
        x_first: how the label is indexed when the shape cannot tell (square images): ``True`` for ``(W, H)`` (ITK
            convention, MONAI's ``PILReader`` default), ``False`` for ``(H, W)``.

    Raises:
        ValueError: when the label is not 2D or its shape is neither ``(W, H)`` nor ``(H, W)``.
    """
    array = np.asarray(label)
    while array.ndim > 2 and array.shape[0] == 1:
        array = array[0]
    width, height = int(size_xy[0]), int(size_xy[1])
    if array.ndim != 2 or sorted(array.shape) != sorted((width, height)):
        raise ValueError(f"label of shape {array.shape} does not fit an image of {width}x{height} (WxH)")
    if width == height:
        return array.T if x_first else array
    return array.T if array.shape == (width, height) else array


def write_label(
    label_hw: np.ndarray, geometry: Geometry, extension: str, dtype: str, directory: str | None = None
) -> str:
    """Write a row-major ``(H, W)`` label on ``geometry`` and return the new file's path.

    Args:
        label_hw: label values, shape ``geometry.shape_hw``.
        geometry: the image grid (from :func:`read_geometry`).
        extension: one of :data:`RESULT_EXTENSIONS`.
        dtype: one of :data:`RESULT_DTYPES`.
        directory: where to create the file (default: the system temporary folder).
    """
    ext, dtype = check_result_format(extension, dtype)
    array = np.asarray(label_hw)
    if array.shape != geometry.shape_hw:
        raise ValueError(f"label shape {array.shape} != image shape {geometry.shape_hw} (H, W)")
    info = np.iinfo(RESULT_DTYPES[dtype])
    if array.size and (array.min() < info.min or array.max() > info.max):
        raise ValueError(f"label values {array.min()}..{array.max()} do not fit {dtype}")
    array = array.astype(RESULT_DTYPES[dtype])
    fd, path = tempfile.mkstemp(suffix=ext, dir=directory)
    os.close(fd)
    if ext == ".png":
        Image.fromarray(array).save(path)
        return path
    image = sitk.GetImageFromArray(array[None] if len(geometry.size) == 3 else array)
    image.SetSpacing(geometry.spacing)
    image.SetOrigin(geometry.origin)
    image.SetDirection(geometry.direction)
    sitk.WriteImage(image, path, useCompression=True)
    return path
