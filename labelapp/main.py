"""MONAI Label app serving this repository's 2D lesion-segmentation bundles (shaped like MONAI Label's monaibundle).

Start (offline, loopback only; see ``labelapp/README.md``)::

    python -m labelapp start_server --studies <image folder> --conf models ph2_melanoma --port 8000

``--conf`` keys:

- ``models``: bundle names, comma separated, or ``all`` (default): folders of ``bundle_dir`` with an inference config.
- ``bundle_dir``: where the bundles are (default ``<repository>/bundles``). Bundles are used in place; training
  replaces their ``models/model.pt``. Nothing is ever looked up in, or downloaded from, the MONAI model zoo.
- ``bundle_overrides``: JSON object of config values for every bundle's inference and training, e.g.
  ``'{"spatial_size": [64, 64]}'``.
- ``epistemic_dropout`` (the bundle's ``dropout``, or 0.2 where it has none), ``epistemic_simulation_size`` (5),
  ``epistemic_max_samples`` (0 = all): MC-dropout scoring.
- ``infer_threads`` (1): torch intra-op threads for inference and scoring; ``0`` keeps torch's default (all cores).
- ``skip_trainers``: ``true`` to serve inference only.
- ``export_onnx`` (``auto``): re-export ``models/model.onnx`` after each training: ``auto`` when an export exists,
  ``true`` always, ``false`` never (see ``lib/train.py``).
"""

# The compatibility shims must be installed before any MONAI Label task module is imported.
from lib.compat import install as _install_compat  # isort: skip

_install_compat()

import logging  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402
from typing import Any  # noqa: E402

import monailabel  # noqa: E402
from lib.bundles import merged_labels, parse_overrides, resolve_bundles  # noqa: E402
from lib.datastore import LesionDatastore, check_id, check_image_file  # noqa: E402
from lib.errors import NotFound  # noqa: E402
from lib.infer import LesionInferTask  # noqa: E402
from lib.scoring import LesionEpistemicScoring, epistemic_strategy  # noqa: E402
from lib.train import LesionTrainTask  # noqa: E402
from monailabel.config import settings  # noqa: E402
from monailabel.interfaces.app import MONAILabelApp  # noqa: E402
from monailabel.interfaces.datastore import Datastore  # noqa: E402
from monailabel.interfaces.tasks.infer_v2 import InferTask  # noqa: E402
from monailabel.interfaces.tasks.scoring import ScoringMethod  # noqa: E402
from monailabel.interfaces.tasks.strategy import Strategy  # noqa: E402
from monailabel.interfaces.tasks.train import TrainTask  # noqa: E402
from monailabel.tasks.activelearning.first import First  # noqa: E402
from monailabel.tasks.activelearning.random import Random  # noqa: E402
from monailabel.utils.others.generic import strtobool  # noqa: E402

logger = logging.getLogger(__name__)


class LesionLabelApp(MONAILabelApp):
    """Serve each bundle of ``--conf models`` for inference, training, scoring and active learning."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        self.bundles = resolve_bundles(app_dir, conf)
        self.overrides = parse_overrides(conf)
        self.model_dir = os.path.join(app_dir, "model")
        self.epistemic_dropout = float(conf["epistemic_dropout"]) if conf.get("epistemic_dropout") else None
        self.epistemic_simulation_size = int(conf.get("epistemic_simulation_size", "5"))
        self.epistemic_max_samples = int(conf.get("epistemic_max_samples", "0"))
        self.infer_threads = int(conf.get("infer_threads", "1"))
        logger.info(f"Serving bundles (by path, offline): {self.bundles}; overrides: {self.overrides}")
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name=f"Lesion segmentation bundles (MONAI Label {monailabel.__version__})",
            description="2D lesion segmentation bundles of this repository, served by path",
            version=monailabel.__version__,
        )

    def init_datastore(self) -> Datastore:
        """Local PNG/JPEG studies; saved labels become the bundles' training PNGs (``labels/final``)."""
        if self.studies.startswith(("http://", "https://")):
            raise ValueError("This app serves a local folder of 2D PNG/JPEG images; --studies must be a folder")
        return LesionDatastore(
            self.studies,
            labels=merged_labels(self.bundles),
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def init_infers(self) -> dict[str, InferTask]:
        """One segmentation task per bundle, named like the bundle."""
        return {
            name: LesionInferTask(
                path, name, self.overrides, output_dir=self._outputs(name), threads=self.infer_threads
            )
            for name, path in self.bundles.items()
        }

    def _outputs(self, name: str) -> str:
        """Folder for files a bundle's post-transforms write while serving (``labelapp/model/<name>/outputs``)."""
        return os.path.join(self.model_dir, name, "outputs")

    def init_trainers(self) -> dict[str, TrainTask]:
        """One training task per bundle with a ``train.json`` (none with ``--conf skip_trainers true``)."""
        if strtobool(self.conf.get("skip_trainers", "false")):
            return {}
        trainers: dict[str, TrainTask] = {}
        for name, path in self.bundles.items():
            task = LesionTrainTask(path, name, self.conf, os.path.join(self.model_dir, name), self.overrides)
            if task.is_valid():
                trainers[name] = task
        return trainers

    def init_strategies(self) -> dict[str, Strategy]:
        """``random``, ``first``, ``epistemic_<model>`` per model, and ``epistemic`` for the first model."""
        strategies: dict[str, Strategy] = {"random": Random(), "first": First()}
        for name in self.bundles:
            strategies[f"epistemic_{name}"] = epistemic_strategy(name)
        strategies["epistemic"] = epistemic_strategy(next(iter(self.bundles)))
        return strategies

    def init_scoring_methods(self) -> dict[str, ScoringMethod]:
        """``epistemic_<model>``: MC-dropout entropy of every unlabelled image (``/scoring/epistemic_<model>``)."""
        return {
            f"epistemic_{name}": LesionEpistemicScoring(
                path,
                name,
                self.overrides,
                dropout=self.epistemic_dropout,
                simulation_size=self.epistemic_simulation_size,
                max_samples=self.epistemic_max_samples,
                output_dir=self._outputs(name),
                threads=self.infer_threads,
            )
            for name, path in self.bundles.items()
        }

    @staticmethod
    def _check_name(name: str | None, tasks: dict[str, Any], what: str) -> None:
        """Raise a 404 naming the valid choices when ``name`` is not one of ``tasks``."""
        if name not in tasks:
            raise NotFound(f"{what} '{name}' is not served; available: {sorted(tasks)}")

    def infer(self, request: dict[str, Any], datastore: Datastore | None = None) -> dict[str, Any]:
        """Run inference on a datastore image (by id), an uploaded file or a session image.

        Unlike MONAI Label's default, an ``image`` that is not a datastore id is accepted only as a file in the
        system temporary folder (where the endpoint stores uploads) or the sessions folder, never as an arbitrary
        server path.
        """
        self._check_name(request.get("model"), self._infers, "model")
        image = request.get("image")
        if isinstance(image, str) and image not in self.datastore().list_images():
            if not self._is_upload(image):
                check_id(image)
                raise NotFound(f"image '{image}' is not in the datastore")
            check_image_file(image, "." + image.rsplit(".", 1)[-1])
        return super().infer(request, datastore)

    def _is_upload(self, path: str) -> bool:
        """Whether ``path`` is a file the server stored itself: an upload or a session image."""
        real = os.path.realpath(path)
        if not os.path.isfile(real):
            return False
        if os.path.dirname(real) == os.path.realpath(tempfile.gettempdir()):
            return True
        sessions = os.path.realpath(self._sessions.store_path) if self._sessions else None
        return sessions is not None and os.path.commonpath([real, sessions]) == sessions

    def next_sample(self, request: dict[str, Any]) -> dict[str, Any]:
        """Active learning: 404 for an unknown strategy (MONAI Label answers 500)."""
        self._check_name(request.get("strategy") or "random", self._strategies, "strategy")
        return super().next_sample(request)

    def scoring(self, request: dict[str, Any], datastore: Datastore | None = None) -> dict[str, Any]:
        """Run a scoring method: 404 for an unknown method."""
        self._check_name(request.get("method"), self._scoring_methods, "scoring method")
        return super().scoring(request, datastore)

    def bundle_path(self, model: str | None) -> str | None:
        """Bundle folder of ``model`` (MONAI Label asks before starting a train task: 404 for an unknown model)."""
        if model is not None:
            self._check_name(model, self._trainers, "trainer")
        return super().bundle_path(model)
