"""Epistemic (MC-dropout) scoring and its active-learning strategy, one pair per served model."""

from __future__ import annotations

import copy
import logging
import os
import time
from typing import Any

import numpy as np
import torch
from monai.transforms import AsDiscreted, Invertd, SaveImaged
from monailabel.interfaces.datastore import Datastore
from monailabel.tasks.activelearning.epistemic import Epistemic
from monailabel.tasks.scoring.epistemic_v2 import EpistemicScoring
from monailabel.utils.others.generic import name_to_device

from .infer import LesionInferTask

logger = logging.getLogger(__name__)

__all__ = ["LesionEpistemicScoring", "epistemic_key", "epistemic_strategy"]


def epistemic_key(model: str) -> str:
    """Image-info key that holds ``model``'s epistemic score (one per model: studies can be scored by several)."""
    return f"epistemic_entropy_{model}"


class LesionEpistemicScoring(EpistemicScoring):
    """Score unlabelled images by the entropy of the mean of ``simulation_size`` MC-dropout softmax outputs.

    The scoring network is the bundle's, built with ``dropout`` and run in eval mode with only its dropout layers
    active; the entropy is computed on softmax probabilities at the network's input size (no ``Invertd``/argmax).
    Images already scored with the current weights (the ``model.pt`` modification time, stored per model as
    ``epistemic_ts_<model>``) are skipped. Each image is read and pre-processed once and its ``simulation_size``
    dropout passes run on that one input (MONAI Label runs the whole inference, reading included, once per pass).

    Args:
        bundle_path: the bundle folder.
        model: the model name.
        overrides: ``--conf bundle_overrides``.
        dropout: MC-dropout rate; ``None`` for the bundle's own ``dropout``.
        output_dir: replaces the bundle's ``output_dir`` (see :class:`LesionInferTask`).
        threads: torch intra-op threads (see :class:`LesionInferTask`).
        simulation_size: forward passes per image (at least 2).
        max_samples: score at most this many images per call; 0 for all.
    """

    def __init__(
        self,
        bundle_path: str,
        model: str,
        overrides: dict[str, Any] | None = None,
        dropout: float | None = None,
        output_dir: str | None = None,
        simulation_size: int = 5,
        max_samples: int = 0,
        threads: int = 1,
    ) -> None:
        task = LesionInferTask(
            bundle_path,
            model,
            overrides,
            mc_dropout=True,
            dropout=dropout,
            # keep the probabilities: no inversion, argmax, mask clean-up or findings on the way to the entropy
            post_filter=(SaveImaged, Invertd, AsDiscreted, "ArgmaxChanneld", "CleanMaskd", "Findingsd"),
            add_post_restore=False,
            skip_writer=True,
            output_dir=output_dir,
            threads=threads,
        )
        super().__init__(
            task,
            max_samples=max_samples,
            simulation_size=simulation_size,
            key_output_entropy=epistemic_key(model),
            key_output_ts=f"epistemic_ts_{model}",
        )
        self.model = model

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        """Score the unlabelled images; returns MONAI Label's summary (``executed``, ``skipped``, ``latency``)."""
        if self.infer_task.get_path() is None:
            logger.info(f"EPISTEMIC:: '{self.model}' has no trained weights yet; nothing scored")
            return {"total": len(datastore.get_unlabeled_images()), "skipped": 0, "executed": 0, "trained": False}
        # MONAI Label 0.8.5 writes each image's score time under `key_output_ts` but skips by the fixed key
        # "epistemic_ts", so with one key per model nothing was ever skipped: every /scoring, and the automatic one
        # after each training, scored every unlabelled image again. Images scored with these weights are left out
        # here, and counted as skipped.
        model_file = self.infer_task.get_path()
        model_ts = int(os.stat(model_file).st_mtime) if model_file and os.path.exists(model_file) else 1
        unlabelled = datastore.get_unlabeled_images()
        done = {i for i in unlabelled if datastore.get_image_info(i).get(self.key_output_ts) == model_ts}
        # The bundle infer task swaps `scripts` modules on sys.path: one image at a time, not in a thread pool.
        request = {**request, "max_workers": 1}
        summary = super().__call__(request, _Unlabelled(datastore, [i for i in unlabelled if i not in done]))
        return {**summary, "total": len(unlabelled), "skipped": summary.get("skipped", 0) + len(done)}

    def run_scoring(self, image_id: str, simulation_size: int, model_ts: int, datastore: Datastore) -> None:
        """Score one image, skipping it (logged) if it cannot be read, so one bad file does not stop the rest."""
        try:
            self._score(image_id, simulation_size, model_ts, datastore)
        except (OSError, RuntimeError, ValueError) as e:
            logger.warning(f"EPISTEMIC:: {image_id} not scored: {e}")

    def _score(self, image_id: str, simulation_size: int, model_ts: int, datastore: Datastore) -> None:
        """MONAI Label's ``run_scoring`` with the pre-processing run once instead of once per dropout pass."""
        start, task = time.time(), self.infer_task
        if task.threads and torch.get_num_threads() != task.threads:
            torch.set_num_threads(task.threads)
        uri = datastore.get_image_uri(image_id)
        request = {**copy.deepcopy(task._config), "image": uri, "image_path": uri, "cache_transforms": False}
        request["device"] = device = name_to_device(request.get("device", "cuda"))
        data = task.run_pre_transforms(request, task.pre_transforms(request))
        post = task.post_transforms(data)
        # each pass gets its own dict around the same pre-processed input (the network does not change it)
        samples = [
            torch.as_tensor(
                task.run_post_transforms(task.run_inferer(dict(data), device=device), post)[task.output_label_key]
            )
            for _ in range(simulation_size)
        ]
        accum = torch.stack(samples).squeeze()
        if accum.ndim == 3:  # one channel: (N, H, W) -> (N, 1, H, W), as MONAI Label does
            accum = accum[:, None]
        entropy = float(np.nanmean(self.entropy_volume(accum)))
        logger.info(
            f"EPISTEMIC:: {image_id} => iters: {simulation_size}; entropy: {round(entropy, 4)}; "
            f"latency: {round(time.time() - start, 3)};"
        )
        datastore.update_image_info(image_id, {self.key_output_entropy: entropy, self.key_output_ts: model_ts})


class _Unlabelled:
    """``datastore`` whose unlabelled images are ``images`` (the rest of the datastore as it is)."""

    def __init__(self, datastore: Datastore, images: list[str]) -> None:
        self._datastore, self._images = datastore, images

    def get_unlabeled_images(self, *args: Any, **kwargs: Any) -> list[str]:
        return list(self._images)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._datastore, name)


def epistemic_strategy(model: str) -> Epistemic:
    """Active-learning strategy: the unlabelled image with the highest ``model`` epistemic score."""
    return Epistemic(key=epistemic_key(model), desc=f"Highest MC-dropout entropy of '{model}' first")
