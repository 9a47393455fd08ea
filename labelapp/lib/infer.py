"""Inference task for one 2D bundle: MONAI Label's ``BundleInferTask`` with explicit result formats and geometry.

Differences from ``BundleInferTask`` (MONAI Label 0.8.5):

- The result is written by :mod:`labelapp.lib.writer` (SimpleITK/PIL, no itk) in the requested format
  (``.nrrd`` by default, ``.nii.gz`` or ``.png``), as a 2D label with the image's size, spacing, origin and
  direction. ``BundleInferTask`` keeps the channel axis and writes with the image's own extension (a JPEG study
  fails with a 500).
- A bundle without trained weights is still served (``/info`` lists it, ``/train`` can create the weights); inference
  answers 409 until ``models/model.pt`` exists. The network reloads when training replaces that file.
- Pre/post transforms and the inferer are built once per device, not on every request, and inference runs with
  ``threads`` intra-op threads (default 1): on a small shared CPU, one thread per request is several times faster
  than torch's default (all cores) as soon as anything else (training, another request) competes for the cores.
- ``mc_dropout=True`` runs the network in eval mode with only its dropout layers active (Monte-Carlo dropout for
  epistemic scoring; normalisation layers keep their inference behaviour), at the bundle's own ``dropout`` rate
  unless one is given (:data:`DEFAULT_MC_DROPOUT` where the bundle has none), with the bundle's
  ``scripts.networks.enable_mc_dropout``; the bundle's inferer then always runs the PyTorch network (an exported ONNX
  model has no dropout, so every sample would be the same).
- The bundle's ``output_dir`` is replaced, so post-transforms that write files (the findings writer) never write
  into the bundle folder; findings the bundle computes (``pred_findings``) are returned in the result JSON.
"""

from __future__ import annotations

import importlib
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

__all__ = ["DEFAULT_MC_DROPOUT", "LesionInferTask", "bundle_on_path"]

#: MC-dropout rate for bundles whose network is built without dropout.
DEFAULT_MC_DROPOUT = 0.2


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


def _to_json(value: Any) -> Any:
    """``value`` with numpy/torch scalars and arrays turned into plain JSON types."""
    return json.loads(json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))


class LesionInferTask(BundleInferTask):
    """Serve one bundle's ``configs/inference.json`` for 2D segmentation.

    Args:
        path: the bundle folder.
        name: the model name clients use (for messages).
        overrides: config values to set before parsing (``--conf bundle_overrides``), e.g. ``{"spatial_size": [..]}``.
        mc_dropout: run with Monte-Carlo dropout (epistemic scoring) instead of normal inference.
        dropout: the MC-dropout rate; ``None`` for the bundle's ``dropout`` (or :data:`DEFAULT_MC_DROPOUT`).
        post_filter: bundle post-transforms to drop, as classes or class names (names reach transforms of the
            bundle's own ``scripts`` package, which cannot be imported here); ``SaveImaged`` always (the app writes
            the result).
        add_post_restore: append MONAI Label's ``Restored`` (resize back to the image) after the bundle's post.
        skip_writer: return the data dictionary instead of writing a file (scoring).
        output_dir: replaces the bundle's ``output_dir`` (where post-transforms such as the findings writer put
            files), so serving never writes into the bundle folder.
        threads: torch intra-op threads while inferring; 0 leaves torch's setting alone.
    """

    #: Building a bundle's transforms swaps the ``scripts`` module on ``sys.path``: one build at a time, any bundle.
    _build_lock = threading.RLock()

    def __init__(
        self,
        path: str,
        name: str,
        overrides: dict[str, Any] | None = None,
        mc_dropout: bool = False,
        dropout: float | None = None,
        post_filter: Sequence[type | str] = (SaveImaged,),
        add_post_restore: bool = True,
        skip_writer: bool = False,
        output_dir: str | None = None,
        threads: int = 1,
    ) -> None:
        self.name = name
        self.threads = threads
        self.const = BundleConstants()
        self.pre_filter = None
        self.post_filter = list(post_filter)
        self.extend_load_image = True
        self.add_post_restore = add_post_restore
        self.mc_dropout = mc_dropout
        self.bundle_path = path
        self.bundle_config_path = os.path.join(path, "configs", "inference.json")
        self._cache: dict[tuple[str, str], Any] = {}

        with bundle_on_path(path):
            self.bundle_config = self._load_bundle_config(path, self.bundle_config_path)
            self.bundle_config.config["use_click"] = False
            if output_dir and "output_dir" in self.bundle_config.config:
                self.bundle_config["output_dir"] = output_dir
            for key, value in (overrides or {}).items():
                self.bundle_config[key] = value
            self.dropout = self._configure_mc_dropout(dropout) if mc_dropout else 0.0
            #: the bundle's own switch to MC dropout (its inferer then runs the PyTorch network, not an export)
            self._enable_mc_dropout = importlib.import_module("scripts.networks").enable_mc_dropout
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

    def _configure_mc_dropout(self, rate: float | None) -> float:
        """Set the network's dropout rate for MC dropout (``None``: the bundle's own, if any) and return it."""
        key = "dropout" if "dropout" in self.bundle_config.config else "network_def#dropout"
        if rate is None:
            own = self.bundle_config.get_parsed_content(key) if self.bundle_config.get(key) is not None else None
            rate = float(own) if isinstance(own, (int, float)) and own > 0 else DEFAULT_MC_DROPOUT
        self.bundle_config[key] = float(rate)
        return float(rate)

    def info(self) -> dict[str, Any]:
        """MONAI Label's model info, plus whether trained weights exist yet."""
        info = super().info()
        info["trained"] = self.get_path() is not None
        return info

    def _cached(self, kind: str, data: dict[str, Any] | None, build: Callable[[Any], Any]) -> Any:
        key = (kind, str((data or {}).get("device")))
        with self._build_lock:
            if key not in self._cache:
                self._cache[key] = build(data)
            return self._cache[key]

    def pre_transforms(self, data: dict[str, Any] | None = None) -> Sequence[Callable]:
        """The bundle's ``preprocessing``, built once per device."""
        return self._cached("pre", data, super().pre_transforms)

    def _filter_transforms(self, transforms: Any, filters: Any) -> Any:
        """MONAI Label's filter (by ``isinstance``), plus filters given as class names."""
        if not filters or not transforms:
            return transforms
        names = {f for f in filters if isinstance(f, str)}
        types = tuple(f for f in filters if not isinstance(f, str))
        return [t for t in transforms if not (isinstance(t, types) or type(t).__name__ in names)]

    def post_transforms(self, data: dict[str, Any] | None = None) -> Sequence[Callable]:
        """The bundle's ``postprocessing`` without the filtered transforms, built once per device."""
        return self._cached("post", data, super().post_transforms)

    def inferer(self, data: dict[str, Any] | None = None) -> Inferer:
        """The bundle's ``inferer``, built once per device."""
        return self._cached("inferer", data, super().inferer)

    def __call__(self, request: dict[str, Any], callbacks: Any = None) -> tuple[str | None, dict[str, Any]]:
        """Run inference; the result format is validated before any work (400 for an unsupported one)."""
        request = dict(request)
        if self.threads and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
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
        return self._enable_mc_dropout(network) if self.mc_dropout else network

    def writer(self, data: dict[str, Any], extension: str | None = None, dtype: str | None = None) -> tuple[str, dict]:
        """Write the prediction on the image grid in the requested format (see :mod:`labelapp.lib.writer`)."""
        image_path = data["image_path"]
        geometry = read_geometry(image_path)
        pred = data[self.output_label_key]
        pred = pred.detach().cpu().numpy() if isinstance(pred, torch.Tensor) else pred
        x_first = _reader_x_first(self.pre_transforms(data), image_path)
        label = to_row_major(pred, geometry.size[:2], x_first=x_first)
        path = write_label(label, geometry, extension or data["result_extension"], dtype or data["result_dtype"])
        findings = data.get(f"{self.output_label_key}_findings")
        return path, {"findings": _to_json(findings)} if findings else {}
