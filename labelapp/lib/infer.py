"""Inference task for one 2D bundle: MONAI Label's ``BundleInferTask`` with explicit result formats and geometry.

Differences from ``BundleInferTask`` (MONAI Label 0.8.5):

- The result is written by :mod:`labelapp.lib.writer` (SimpleITK/PIL, no itk) in the requested format
  (``.nrrd`` by default, ``.nii.gz`` or ``.png``), as a 2D label with the image's size, spacing, origin and
  direction. ``BundleInferTask`` keeps the channel axis and writes with the image's own extension (a JPEG study
  fails with a 500).
- A bundle without trained weights is still served (``/info`` lists it, ``/train`` can create the weights); inference
  answers 409 until ``models/model.pt`` exists. The network reloads when training replaces that file.
- Pre/post transforms and the inferer are built once per device, not on every request.
- ``mc_dropout > 0`` builds the network with that dropout and runs it in eval mode with only the dropout layers
  active (Monte-Carlo dropout for epistemic scoring; normalisation layers keep their inference behaviour).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from monai.data import ITKReader, PILReader
from monai.inferers import Inferer
from monai.transforms import LoadImaged, SaveImaged
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask
from monailabel.tasks.infer.bundle import BundleConstants, BundleInferTask
from monailabel.utils.others.class_utils import unload_module

from .errors import Conflict
from .writer import check_result_format, read_geometry, to_row_major, write_label

logger = logging.getLogger(__name__)

__all__ = ["LesionInferTask", "bundle_on_path"]


@contextmanager
def bundle_on_path(bundle_path: str) -> Iterator[None]:
    """Make ``import scripts`` resolve to this bundle's ``scripts`` package while the block runs."""
    sys.path.insert(0, bundle_path)
    unload_module("scripts")
    try:
        yield
    finally:
        if bundle_path in sys.path:
            sys.path.remove(bundle_path)


def _reader_x_first(transforms: Sequence[Callable], filename: str) -> bool:
    """Return whether the bundle's image reader indexes ``filename`` x first, ``(W, H)`` (ITK convention)."""
    for t in transforms:
        load = getattr(t, "load_image_d", t)
        if isinstance(load, LoadImaged):
            for reader in reversed(load._loader.readers):
                if reader.verify_suffix(filename):
                    if isinstance(reader, PILReader):
                        return bool(reader.reverse_indexing)
                    if isinstance(reader, ITKReader):
                        return not reader.reverse_indexing
                    return True
    return True


class LesionInferTask(BundleInferTask):
    """Serve one bundle's ``configs/inference.json`` for 2D segmentation.

    Args:
        path: the bundle folder.
        name: the model name clients use (for messages).
        overrides: config values to set before parsing (``--conf bundle_overrides``), e.g. ``{"spatial_size": [..]}``.
        mc_dropout: dropout rate for Monte-Carlo dropout scoring; 0 for normal inference.
        post_filter: bundle post-transform classes to drop (``SaveImaged`` always: the app writes the result).
        add_post_restore: append MONAI Label's ``Restored`` (resize back to the image) after the bundle's post.
        skip_writer: return the data dictionary instead of writing a file (scoring).
    """

    def __init__(
        self,
        path: str,
        name: str,
        overrides: dict[str, Any] | None = None,
        mc_dropout: float = 0.0,
        post_filter: Sequence[type] = (SaveImaged,),
        add_post_restore: bool = True,
        skip_writer: bool = False,
    ) -> None:
        self.name = name
        self.const = BundleConstants()
        self.pre_filter = None
        self.post_filter = list(post_filter)
        self.extend_load_image = True
        self.add_post_restore = add_post_restore
        self.dropout = mc_dropout
        self.bundle_path = path
        self.bundle_config_path = os.path.join(path, "configs", "inference.json")
        self._cache: dict[tuple[str, str], Any] = {}
        self._cache_lock = threading.Lock()

        with bundle_on_path(path):
            self.bundle_config = self._load_bundle_config(path, self.bundle_config_path)
            self.bundle_config.config["use_click"] = False
            for key, value in (overrides or {}).items():
                self.bundle_config[key] = value
            if mc_dropout > 0:
                key = "dropout" if "dropout" in self.bundle_config.config else "network_def#dropout"
                self.bundle_config[key] = mc_dropout
            network = self.bundle_config.get_parsed_content(self.const.key_network_def(), instantiate=True)

        with open(os.path.join(path, "configs", "metadata.json")) as f:
            metadata = json.load(f)
        self.key_image, image = next(iter(metadata["network_data_format"]["inputs"].items()))
        self.key_pred, pred = next(iter(metadata["network_data_format"]["outputs"].items()))
        labels = {
            str(v).lower(): int(k) for k, v in pred.get("channel_def", {}).items() if str(v).lower() != "background"
        }
        spatial_shape = image.get("spatial_shape") or []

        BasicInferTask.__init__(
            self,
            path=os.path.join(path, "models", self.const.model_pytorch()),
            network=network,
            type=InferType.SEGMENTATION,
            labels=labels,
            dimension=len(spatial_shape) or 2,
            description=metadata.get("description", name),
            load_strict=True,
            skip_writer=skip_writer,
        )
        self.valid = True
        self.version = metadata.get("version")

    def info(self) -> dict[str, Any]:
        """MONAI Label's model info, plus whether trained weights exist yet."""
        info = super().info()
        info["trained"] = self.get_path() is not None
        return info

    def _cached(self, kind: str, data: dict[str, Any] | None, build: Callable[[Any], Any]) -> Any:
        key = (kind, str((data or {}).get("device")))
        with self._cache_lock:
            if key not in self._cache:
                self._cache[key] = build(data)
            return self._cache[key]

    def pre_transforms(self, data: dict[str, Any] | None = None) -> Sequence[Callable]:
        """The bundle's ``preprocessing``, built once per device."""
        return self._cached("pre", data, super().pre_transforms)

    def post_transforms(self, data: dict[str, Any] | None = None) -> Sequence[Callable]:
        """The bundle's ``postprocessing`` without the filtered transforms, built once per device."""
        return self._cached("post", data, super().post_transforms)

    def inferer(self, data: dict[str, Any] | None = None) -> Inferer:
        """The bundle's ``inferer``, built once per device."""
        return self._cached("inferer", data, super().inferer)

    def __call__(self, request: dict[str, Any], callbacks: Any = None) -> tuple[str | None, dict[str, Any]]:
        """Run inference; the result format is validated before any work (400 for an unsupported one)."""
        request = dict(request)
        if not self.skip_writer:
            ext, dtype = check_result_format(request.get("result_extension"), request.get("result_dtype"))
            request.update(result_extension=ext, result_dtype=dtype)
        return super().__call__(request, callbacks)

    def _get_network(self, device: str, data: dict[str, Any] | None) -> torch.nn.Module:
        if self.get_path() is None:
            raise Conflict(
                f"model '{self.name}' has no trained weights yet ({self.path[0]}): save a few labels and "
                f"POST /train/{self.name}, or put a trained models/model.pt in the bundle"
            )
        network = super()._get_network(device, data)
        if self.dropout > 0:
            network.eval()
            for module in network.modules():
                if isinstance(module, torch.nn.modules.dropout._DropoutNd):
                    module.train()
        return network

    def writer(self, data: dict[str, Any], extension: str | None = None, dtype: str | None = None) -> tuple[str, dict]:
        """Write the prediction on the image grid in the requested format (see :mod:`labelapp.lib.writer`)."""
        image_path = data["image_path"]
        geometry = read_geometry(image_path)
        pred = data[self.output_label_key]
        pred = pred.detach().cpu().numpy() if isinstance(pred, torch.Tensor) else pred
        x_first = _reader_x_first(self.pre_transforms(data), image_path)
        label = to_row_major(pred, geometry.size[:2], x_first=x_first)
        path = write_label(
            label, geometry, extension or data["result_extension"], dtype or data["result_dtype"], directory=None
        )
        return path, {}
