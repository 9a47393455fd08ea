"""Local datastore for 2D PNG/JPEG studies that stores labels in the bundles' training format."""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Mapping
from typing import Any

from monailabel.datastore.local import LocalDatastore
from PIL import Image, UnidentifiedImageError

from .errors import BadRequest, NotFound, UnsupportedMedia
from .labels import read_label, to_training_label
from .writer import read_geometry

logger = logging.getLogger(__name__)

__all__ = ["IMAGE_EXTENSIONS", "LesionDatastore", "check_id", "check_image_file"]

#: Image files the datastore lists, as ``fnmatch`` patterns; the PIL format each must contain.
IMAGE_EXTENSIONS: dict[str, str] = {"*.png": "PNG", "*.jpg": "JPEG", "*.jpeg": "JPEG"}
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


def check_id(value: str, what: str = "image id") -> str:
    """Return ``value`` when it is a safe file stem (letters, digits, ``._-``; no path separators, no ``..``).

    Raises:
        BadRequest: otherwise.
    """
    if not isinstance(value, str) or not _SAFE_ID.match(value) or ".." in value:
        raise BadRequest(f"{what} {value!r} is not allowed: use letters, digits, '.', '_' and '-' (no paths, no '..')")
    return value


def check_image_file(path: str, ext: str) -> None:
    """Raise ``UnsupportedMedia`` unless ``path`` is a complete, readable 2D image of the type its extension says."""
    expected = IMAGE_EXTENSIONS.get(f"*{ext.lower()}")
    if expected is None:
        raise UnsupportedMedia(f"'{ext}' images are not served; upload one of {sorted(IMAGE_EXTENSIONS)}")
    try:
        with Image.open(path) as image:
            image.load()
            fmt, mode = image.format, image.mode
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise UnsupportedMedia(f"the uploaded file is not a readable {expected} image: {e}") from e
    if fmt != expected:
        raise UnsupportedMedia(f"the uploaded file is {fmt} but its name ends with '{ext}'")
    if mode not in ("L", "RGB", "RGBA", "I;16", "I", "P", "LA"):
        raise UnsupportedMedia(f"image mode {mode} is not supported")


class LesionDatastore(LocalDatastore):
    """``LocalDatastore`` for PNG/JPEG studies that validates uploads and converts saved labels to training PNGs.

    Args:
        datastore_path: the studies folder.
        labels: the served bundles' labels, ``{name (lower case): value}`` without background.
        kwargs: passed to ``LocalDatastore`` (``auto_reload``, ``read_only``).
    """

    def __init__(self, datastore_path: str, labels: Mapping[str, int], **kwargs: Any) -> None:
        self.known_labels = dict(labels)
        super().__init__(datastore_path, extensions=list(IMAGE_EXTENSIONS), **kwargs)

    def _object(self, image_id: str) -> Any:
        """Return the datastore entry of ``image_id``; 400 for an unsafe unknown id, 404 for an unknown one."""
        obj = self._datastore.objects.get(image_id)
        if obj is None:
            check_id(image_id)
            raise NotFound(f"image '{image_id}' is not in the datastore")
        return obj

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        """Validate, then add an uploaded PNG/JPEG image (kept byte for byte: RGB stays RGB)."""
        stem, ext = self._to_id(os.path.basename(image_filename))
        image_id = check_id(image_id or stem)
        check_image_file(image_filename, ext)
        existing = self._datastore.objects.get(image_id)
        if existing is not None and existing.image.ext != ext:
            raise BadRequest(f"image '{image_id}' already exists as {existing.image.ext}; use another id")
        return super().add_image(image_id, image_filename, image_info)

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        """Validate and convert an uploaded label, then store it as ``labels/<tag>/<image id>.png``.

        ``label_info`` is the request's ``params``; Slicer puts its segment list under ``params["label_info"]``.
        The datastore is left unchanged when the label is rejected.
        """
        obj = self._object(image_id)
        check_id(label_tag, "label tag")
        image_path = os.path.join(self._datastore.image_path(), image_id + obj.image.ext)
        geometry = read_geometry(image_path)
        array, names = read_label(label_filename, geometry.shape_hw)
        params = label_info or {}
        training = to_training_label(array, self.known_labels, names, params.get("label_info"))
        fd, png = tempfile.mkstemp(suffix=".png")
        os.close(fd)
        try:
            Image.fromarray(training).save(png)
            stored = dict(params)
            stored["source_format"] = os.path.basename(label_filename).split(".", 1)[-1]
            label_id = super().save_label(image_id, png, label_tag, stored)
        finally:
            os.remove(png)
        self._remove_other_label_files(image_id, label_tag)
        return label_id

    def _remove_other_label_files(self, image_id: str, label_tag: str) -> None:
        """Delete stale labels of the same image and tag saved under another extension (e.g. an older ``.nii.gz``)."""
        folder = self._datastore.label_path(label_tag)
        for name in os.listdir(folder):
            if name != f"{image_id}.png" and self._to_id(name)[0] == image_id:
                logger.info(f"Removing stale label {os.path.join(folder, name)}")
                os.remove(os.path.join(folder, name))

    def get_image_info(self, image_id: str) -> dict[str, Any]:
        """Image info; an unknown or unsafe id is a 404/400 instead of an empty answer."""
        self._object(image_id)
        return super().get_image_info(image_id)
