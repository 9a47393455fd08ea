"""Training task for one bundle: MONAI Label's ``BundleTrainTask`` that publishes the new model atomically.

Differences from ``BundleTrainTask`` (MONAI Label 0.8.5):

- Checkpoints go to a staging folder under the app (``labelapp/model/<name>/``), never straight to the bundle's
  ``models/model.pt``: the bundle's ``ckpt_dir`` and every ``CheckpointSaver`` point there, and the bundle's
  ``output_dir`` (TensorBoard) goes to ``labelapp/model/<name>/runs``. When the run ends, the best (key metric)
  checkpoint, or the final one, is copied next to ``models/model.pt`` and renamed over it (``os.replace``): the
  served model changes in one step, and a training killed midway (``DELETE /train``) leaves the old model
  serving. Inference reloads the file when it changes.
- ``batch_size`` is capped at the number of training images (a bundle with ``drop_last`` would otherwise run no
  iteration while only a few images are labelled).
- Training continues from the current ``models/model.pt`` (``pretrained``, MONAI Label's default), loaded into
  the bundle's network object, ``net`` (falls back to ``network`` for zoo bundles).
- ``--conf bundle_overrides`` applies to training too (same values as inference).
- With fewer labels than a validation split needs, the training images are also used for validation (logged), so
  a checkpoint is still selected and saved.
- Multi-GPU (``multi_gpu_train.json``, MONAI Label's torchrun path): the merged config is written to the staging
  folder instead of the bundle's ``configs/``, torchrun is started as ``python -m torch.distributed.run`` of this
  interpreter, and a failed run raises instead of being reported as finished. On a machine without CUDA,
  ``force_multi_gpu`` runs ``cpu_processes`` (default 2) gloo ranks, so the route can be exercised on a CPU.
- After publishing, ``models/model.onnx`` is re-exported from the new weights (``--conf export_onnx``: ``auto``,
  the default, when an export exists; ``true`` always; ``false`` never), in the bundle's own way
  (``scripts/onnx_inferer.py::export_onnx``) and renamed into place, so inference with ``backend: auto`` keeps the
  faster ONNX Runtime on a CPU without native bf16. Until then, and if the export fails (logged, the new
  ``model.pt`` still serves), inference runs the new weights in PyTorch, never the old export.
- ``stats()`` (``/info`` ``train_stats``) reports the last finished run: images used, epochs, published file,
  the ONNX re-export (file and seconds, or its error).
"""

from __future__ import annotations

import copy
import glob
import importlib
import json
import logging
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch
from monailabel.interfaces.datastore import Datastore
from monailabel.tasks.train.bundle import BundleConstants, BundleTrainTask
from monailabel.utils.others.generic import strtobool

from .infer import bundle_on_path

logger = logging.getLogger(__name__)

__all__ = ["CONF_EXPORT_ONNX", "LesionTrainTask"]

FINAL_FILENAME = "model_final.pt"
STATS_FILENAME = "train_stats.json"
ONNX_FILENAME = "model.onnx"
#: ``--conf`` key: re-export ``models/model.onnx`` after training (``auto``: when one exists; ``true``; ``false``).
CONF_EXPORT_ONNX = "export_onnx"


class _Constants(BundleConstants):
    """Bundle key names, with the network object's key taken from the bundle."""

    def __init__(self, network_key: str) -> None:
        self._network_key = network_key

    def key_network(self) -> str:
        return self._network_key


def _redirect_savers(handlers: Any, save_dir: str) -> list[dict[str, Any]]:
    """Point every ``CheckpointSaver`` in a handler list at ``save_dir``; return those savers."""
    savers = [
        h
        for h in (handlers if isinstance(handlers, list) else [])
        if isinstance(h, dict) and str(h.get("_target_", "")).split(".")[-1] == "CheckpointSaver"
    ]
    for saver in savers:
        saver["save_dir"] = save_dir
    return savers


def _atomic_write(path: str, write: Callable[[str], Any], prefix: str = ".writing-") -> None:
    """Call ``write(tmp)`` on a new file beside ``path``, then rename it onto ``path`` in one step (same folder, so
    same file system): a reader (a serving worker) sees the old file or the new one, never half of one."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=prefix, suffix=os.path.splitext(path)[1])
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the served file is an ordinary readable file
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _atomic_write_json(path: str, data: dict[str, Any]) -> None:
    _atomic_write(path, lambda tmp: pathlib.Path(tmp).write_text(json.dumps(data, indent=2)))


class LesionTrainTask(BundleTrainTask):
    """Train one bundle on the datastore's final labels and publish the result atomically.

    Args:
        path: the bundle folder.
        name: the model name clients use.
        conf: the app's ``--conf`` pairs.
        work_dir: a folder for this model's staging checkpoints and stats (``labelapp/model/<name>``).
        overrides: config values for every run (``--conf bundle_overrides``).
    """

    def __init__(
        self, path: str, name: str, conf: dict[str, str], work_dir: str, overrides: dict[str, Any] | None = None
    ) -> None:
        super().__init__(path, conf, load_strict=True)
        self.name = name
        self.work_dir = work_dir
        self.overrides = dict(overrides or {})
        self._staging = ""
        self._savers: list[dict[str, Any]] = []
        self._datalists: dict[str, list | None] = {"train": [], "val": []}
        mode = str(conf.get(CONF_EXPORT_ONNX, "auto")).strip().lower()
        try:
            self.export_onnx: str | bool = "auto" if mode == "auto" else bool(strtobool(mode))
        except ValueError:
            raise ValueError(f"--conf {CONF_EXPORT_ONNX} must be auto, true or false; got {mode!r}") from None
        if self.valid:
            network_key = "net" if "net" in self.bundle_config.config else "network"
            self.const = _Constants(network_key)
        os.makedirs(work_dir, exist_ok=True)

    @property
    def model_path(self) -> str:
        """The served weights, ``<bundle>/models/model.pt``."""
        return os.path.join(self.bundle_path, "models", self.const.model_pytorch())

    def config(self) -> dict[str, Any]:
        """Train options shown to clients; the result always replaces ``models/model.pt``."""
        options = super().config()
        options.pop("model_filename", None)
        return options

    def stats(self) -> dict[str, Any]:
        """The last finished run (``{}`` before the first)."""
        path = os.path.join(self.work_dir, STATS_FILENAME)
        if not os.path.exists(path):
            return {}
        with open(path) as f:
            return json.load(f)

    def _partition_datalist(self, datalist: list, request: dict, shuffle: bool = False) -> tuple[list, list | None]:
        if not datalist:
            raise RuntimeError(f"No final labels in the datastore: save labels before POST /train/{self.name}")
        train, val = super()._partition_datalist(datalist, request, shuffle=shuffle)
        if val is not None and not val:
            logger.warning(f"{len(datalist)} labelled image(s): too few to hold out; validating on the training images")
            val = list(train)
        self._datalists = {"train": train, "val": val}
        return train, val

    def _update_overrides(self, overrides: dict[str, Any]) -> dict[str, Any]:
        config = self.bundle_config.config
        if "ckpt_dir" in config:
            overrides["ckpt_dir"] = self._staging
        if "output_dir" in config:
            overrides["output_dir"] = os.path.join(self.work_dir, "runs")
        overrides.update(self.overrides)
        batch_size = overrides.get("batch_size", config.get("batch_size"))
        n_train = len(self._datalists["train"])
        if isinstance(batch_size, int) and batch_size > n_train:
            logger.info(f"batch_size {batch_size} > {n_train} training images: using {n_train}")
            overrides["batch_size"] = n_train
        key = self.const.key_train_handlers()
        train_handlers = copy.deepcopy(overrides.get(key, []))
        val_handlers = copy.deepcopy(self.bundle_config.get("validate#handlers"))
        self._savers = _redirect_savers(train_handlers, self._staging) + _redirect_savers(val_handlers, self._staging)
        if isinstance(val_handlers, list):
            overrides["validate#handlers"] = val_handlers
        train_handlers.append(
            {
                "_target_": "CheckpointSaver",
                "save_dir": self._staging,
                "save_dict": {"model": f"@{self.const.key_network()}"},
                "save_final": True,
                "final_filename": FINAL_FILENAME,
            }
        )
        overrides[key] = train_handlers
        return overrides

    def _best_checkpoint(self) -> str:
        """The checkpoint to publish: the bundle's best (key metric) ``model.pt`` where it saved one, else the final."""
        names = [
            s["key_metric_filename"] for s in self._savers if s.get("save_key_metric") and s.get("key_metric_filename")
        ]
        names.append(self.const.model_pytorch())
        candidates = [os.path.join(self._staging, n) for n in names]
        candidates += sorted(glob.glob(os.path.join(self._staging, "*key_metric*.pt")), key=os.path.getmtime)[::-1]
        candidates.append(os.path.join(self._staging, FINAL_FILENAME))
        for path in candidates:
            if os.path.exists(path):
                return path
        raise RuntimeError(f"Training of '{self.name}' wrote no checkpoint in {self._staging}; model unchanged")

    def _publish(self, checkpoint: str) -> str:
        """Replace ``models/model.pt`` with ``checkpoint`` in one rename."""
        _atomic_write(self.model_path, lambda tmp: shutil.copyfile(checkpoint, tmp), prefix=".publishing-")
        return self.model_path

    def _export_onnx(self) -> dict[str, Any]:
        """Re-export ``models/model.onnx`` from the published ``model.pt`` where ``--conf export_onnx`` asks for it.

        Returns:
            ``{}`` when not asked; else ``onnx`` (the file) and ``onnx_export_s``, or ``onnx_export_error``.
        """
        target = os.path.join(self.bundle_path, "models", ONNX_FILENAME)
        if not self.export_onnx or self.export_onnx == "auto" and not os.path.exists(target):
            return {}
        start = time.time()
        try:
            with bundle_on_path(self.bundle_path):
                tools = importlib.import_module("scripts.onnx_inferer")
                tools.export_onnx(self.bundle_path, self.model_path, target, overrides=self.overrides)
        except Exception as error:  # the new model.pt serves (in PyTorch) either way
            logger.error(
                f"Re-export of {target} failed ({error}); inference runs the new weights in PyTorch. Re-export with "
                f"`python scripts/export_bundle.py --bundle {self.bundle_path}`"
            )
            return {"onnx_export_error": str(error)}
        seconds = round(time.time() - start, 1)
        logger.info(f"Re-exported {target} from the new weights in {seconds} s")
        return {"onnx": target, "onnx_export_s": seconds}

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        """Train on the final labels, then publish the new weights; the old model serves until then."""
        start = time.time()
        for stale in glob.glob(os.path.join(self.work_dir, "staging-*")):  # left by runs that were stopped
            shutil.rmtree(stale, ignore_errors=True)
        self._staging = tempfile.mkdtemp(dir=self.work_dir, prefix="staging-")
        try:
            super().__call__(request, datastore)
            checkpoint = self._best_checkpoint()
            published = self._publish(checkpoint)
        finally:
            shutil.rmtree(self._staging, ignore_errors=True)
        stats = {
            "model": self.name,
            "published": published,
            "checkpoint": os.path.basename(checkpoint),
            "max_epochs": request.get("max_epochs"),
            "train_images": sorted(os.path.basename(d["image"]) for d in self._datalists["train"]),
            "val_images": sorted(os.path.basename(d["image"]) for d in self._datalists["val"] or []),
            "start_ts": int(start),
            "end_ts": int(time.time()),
            **self._export_onnx(),
        }
        _atomic_write_json(os.path.join(self.work_dir, STATS_FILENAME), stats)
        logger.info(f"Published {published} from {checkpoint}")
        return stats

    def run_multi_gpu(self, request: dict[str, Any], cmd: list[str], env: dict[str, str]) -> None:
        """Run MONAI Label's torchrun command with this interpreter, keeping the merged config out of the bundle."""
        exported = os.path.join(self.bundle_path, "configs", "monailabel_train.json")
        staged = os.path.join(self._staging, "monailabel_train.json")
        if os.path.exists(exported):
            os.replace(exported, staged)
        cmd = [sys.executable, "-m", "torch.distributed.run", *cmd[1:]]
        cmd = [c.replace(exported, staged) for c in cmd]
        if "--nproc_per_node=0" in cmd and not torch.cuda.is_available():
            # MONAI Label counts CUDA devices (none here): with force_multi_gpu on a CPU machine, run
            # `cpu_processes` gloo ranks instead (multi_gpu_train.json picks gloo without CUDA)
            procs = int(request.get("cpu_processes", 2))
            cmd = [f"--nproc_per_node={procs}" if c == "--nproc_per_node=0" else c for c in cmd]
        logger.info(f"RUNNING COMMAND:: {cmd}")
        result = subprocess.run(cmd, env=env, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"Multi-GPU training failed with exit code {result.returncode}; model unchanged")
