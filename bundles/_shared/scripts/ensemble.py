"""Ensembles of a bundle's models: the fold models of a cross-validation, or models of different architectures.

``configs/ensemble_evaluate.json`` and ``configs/ensemble_inference.json`` run MONAI's ``EnsembleEvaluator`` over
the members that :func:`find_members` lists; :class:`Ensembled` combines the members' class probabilities by mean
or majority vote; :class:`EnsembleMetricsWriter` writes every member's and the ensemble's Dice/IoU on the same
cases to ``ensemble_metrics.json``, so the gain of the ensemble over its members is visible.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.config import KeysCollection
from monai.engines import EnsembleEvaluator as _MonaiEnsembleEvaluator
from monai.engines.utils import IterationEvents
from monai.handlers import MeanDice, MeanIoUHandler, from_engine
from monai.networks.utils import one_hot
from monai.transforms import MapTransform
from monai.transforms.post.array import MeanEnsemble, VoteEnsemble
from monai.utils import convert_to_dst_type
from torch import nn

from .engines import AutocastMixin
from .handlers import atomic_write_json
from .networks import MeanEnsembleNet, build_network

__all__ = [
    "ENSEMBLE_MODES",
    "ENSEMBLE_SOURCES",
    "EnsembleEvaluator",
    "EnsembleMetricsWriter",
    "Ensembled",
    "find_members",
    "load_members",
    "merge_members",
    "metric_handlers",
    "pred_keys",
]

ENSEMBLE_SOURCES = ("folds", "networks")
ENSEMBLE_MODES = ("mean", "vote")
ENSEMBLE_NAME = "ensemble"
logger = logging.getLogger(__name__)


def _fold_number(path: Path) -> int:
    match = re.fullmatch(r"fold(\d+)", path.parent.name)
    return int(match.group(1)) if match else -1


def find_members(
    ckpt_dir: str | Path,
    members: str | Sequence[str] = "folds",
    network: str = "unet",
    networks: Sequence[str] = (),
) -> list[dict[str, str]]:
    """List the ensemble members found on disk.

    Args:
        ckpt_dir: the bundle's ``ckpt_dir`` (``models``).
        members: ``folds`` (every ``<ckpt_dir>/fold<k>/model.pt``, each a ``network``, as written by
            ``scripts/train_folds.py``), ``networks`` (``<ckpt_dir>/<name>/model.pt`` for each name of ``networks``)
            or a list of checkpoint paths, each a ``network`` (e.g. models trained with other seeds).
        network: the architecture of the fold models (the bundle's ``network`` key).
        networks: the architectures of a ``networks`` ensemble (the ``ensemble_networks`` key).

    Returns:
        One ``{"name", "network", "checkpoint"}`` dict per member, in a stable order.

    Raises:
        ValueError: unknown ``members`` or an empty ``networks`` list.
        FileNotFoundError: a checkpoint is missing; the message says how to train it.
    """
    root = Path(str(ckpt_dir))
    if not isinstance(members, str):
        paths = [Path(str(p)) for p in members]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing or not paths:
            raise FileNotFoundError(f"ensemble member checkpoints not found: {', '.join(missing) or '(none listed)'}.")
        return [{"name": f"member{i}", "network": network, "checkpoint": str(p)} for i, p in enumerate(paths)]
    if members == "folds":
        paths = sorted((p for p in root.glob("fold*/model.pt") if _fold_number(p) >= 0), key=_fold_number)
        if not paths:
            raise FileNotFoundError(
                f"no fold models under {root} (expected {root}/fold<k>/model.pt): train them with "
                "`python scripts/train_folds.py --bundle <bundle>` or set ckpt_dir."
            )
        return [{"name": p.parent.name, "network": network, "checkpoint": str(p)} for p in paths]
    if members == "networks":
        if not networks:
            raise ValueError(
                "ensemble_networks is empty: list the member networks, e.g. ['attention_unet', 'segresnet']."
            )
        missing = [str(root / name / "model.pt") for name in networks if not (root / name / "model.pt").is_file()]
        if missing:
            raise FileNotFoundError(
                f"missing ensemble member checkpoints: {', '.join(missing)}. Train each with `python -m monai.bundle "
                "run --config_file configs/train.json --network <name> --ckpt_dir models/<name>`."
            )
        return [{"name": name, "network": name, "checkpoint": str(root / name / "model.pt")} for name in networks]
    raise ValueError(f"ensemble_members must be one of {', '.join(ENSEMBLE_SOURCES)}; got {members!r}.")


def pred_keys(members: Sequence[Mapping[str, str]]) -> list[str]:
    """The ``EnsembleEvaluator`` output key of each member: ``pred_<name>``."""
    return [f"pred_{m['name']}" for m in members]


def load_members(
    members: Sequence[Mapping[str, str]],
    in_channels: int,
    num_classes: int,
    dropout: float = 0.0,
    device: torch.device | str = "cpu",
    presence_threshold: float = 0.5,
    network_kwargs: Mapping[str, Any] | None = None,
) -> list[nn.Module]:
    """Build each member with ``scripts.networks.build_network`` and load its checkpoint (strictly).

    A checkpoint of a network trained with ``presence_head`` (keys ``net.*`` and ``head.*``) is built with the head.

    Args:
        members: output of :func:`find_members`.
        in_channels: the bundle's ``in_channels``.
        num_classes: the bundle's ``num_classes``.
        dropout: the bundle's ``dropout`` (inactive in eval mode; it only has to match the architecture).
        device: where the networks run.
        presence_threshold: the bundle's ``presence_threshold``, for members with a presence head.
        network_kwargs: the bundle's ``network_kwargs`` (the members' architecture parameters).

    Returns:
        The networks in eval mode, in the order of ``members``.
    """
    nets = []
    for member in members:
        state = torch.load(member["checkpoint"], map_location="cpu", weights_only=True)
        if isinstance(state.get("model"), Mapping):  # a CheckpointSaver file: {"model": ..., "optimizer": ...}
            state = state["model"]
        presence = any(k.startswith("head.") for k in state) and any(k.startswith("net.") for k in state)
        net = build_network(
            member["network"],
            in_channels,
            num_classes,
            dropout=dropout,
            presence_head=presence,
            presence_threshold=presence_threshold,
            network_kwargs=network_kwargs,
        )
        try:
            net.load_state_dict(state)
        except RuntimeError as err:
            raise RuntimeError(
                f"{member['checkpoint']} does not fit network {member['network']!r} with in_channels={in_channels}, "
                f"num_classes={num_classes}: set the keys it was trained with. ({err})"
            ) from err
        nets.append(net.to(device).eval())
    return nets


def merge_members(
    members: Sequence[Mapping[str, str]],
    in_channels: int,
    num_classes: int,
    out_dir: str | Path,
    dropout: float = 0.0,
    network_kwargs: Mapping[str, Any] | None = None,
) -> Path:
    """Write the members as one :class:`~scripts.networks.MeanEnsembleNet` checkpoint, ``<out_dir>/model.pt``.

    Every single-network config then runs the mean ensemble with ``--ensemble_size <n> --ckpt_dir <out_dir>``:
    ``evaluate`` (metrics at the original size, post-processing included), ``inference``, ONNX export. The members
    must share the bundle's ``network`` (folds or seeds); an ensemble of architectures stays with
    ``ensemble_evaluate.json`` / ``ensemble_inference.json``.

    Args:
        members: output of :func:`find_members`.
        in_channels: the bundle's ``in_channels``.
        num_classes: the bundle's ``num_classes``.
        out_dir: folder of the merged checkpoint (created).
        dropout: the bundle's ``dropout``.
        network_kwargs: the bundle's ``network_kwargs``.

    Returns:
        The checkpoint path.

    Raises:
        ValueError: the members are of different architectures.
    """
    networks = sorted({m["network"] for m in members})
    if len(networks) != 1:
        raise ValueError(
            f"merge_members needs members of one architecture (got {', '.join(networks)}); use "
            "configs/ensemble_inference.json for an ensemble of architectures."
        )
    merged = MeanEnsembleNet(load_members(members, in_channels, num_classes, dropout, network_kwargs=network_kwargs))
    out = Path(str(out_dir))
    out.mkdir(parents=True, exist_ok=True)
    torch.save(merged.state_dict(), out / "model.pt")  # flat, as the training CheckpointSaver writes one object
    record = {"ensemble_size": len(members), "network": networks[0], "members": [dict(m) for m in members]}
    atomic_write_json(out / "ensemble.json", record)
    logger.info(
        "merged %d %s members into %s (run with --ensemble_size %d)", len(members), networks[0], out, len(members)
    )
    return out / "model.pt"


class Ensembled(MapTransform):
    """Combine the members' class probabilities ``(C, H, W)`` into ``output_key``.

    ``mean`` averages the probabilities (MONAI's ``MeanEnsemble``); ``vote`` takes each member's argmax and the
    majority class per pixel (MONAI's ``VoteEnsemble``; a tie goes to the lower class index) and stores it one-hot,
    so the output is a ``(C, H, W)`` map in both modes and the rest of the bundle's post-processing (inversion to
    the original size, argmax, findings) applies unchanged. The array transforms are called with the list of members: MONAI's
    ``MeanEnsembled``/``VoteEnsembled`` would read the channel axis as the member axis for a one-member ensemble.

    Args:
        keys: the members' prediction keys (softmax probabilities).
        num_classes: number of classes, background included.
        mode: ``mean`` or ``vote``.
        output_key: where the ensemble goes.
    """

    def __init__(self, keys: KeysCollection, num_classes: int, mode: str = "mean", output_key: str = "pred") -> None:
        super().__init__(keys)
        if mode not in ENSEMBLE_MODES:
            raise ValueError(f"ensemble_mode must be one of {', '.join(ENSEMBLE_MODES)}; got {mode!r}.")
        self.num_classes, self.mode, self.output_key = int(num_classes), mode, output_key
        self.mean, self.vote = MeanEnsemble(), VoteEnsemble(num_classes=self.num_classes)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        members = [d[key] for key in self.key_iterator(d)]
        if not members:
            raise KeyError(f"none of the ensemble keys {list(self.keys)} is in the data.")
        if self.mode == "mean":
            combined = self.mean(members)
        else:
            voted = self.vote([m.argmax(0, keepdim=True) for m in members])
            combined = one_hot(torch.as_tensor(voted)[None], self.num_classes, dim=1)[0]
        d[self.output_key] = convert_to_dst_type(combined, members[0], dtype=torch.float32)[0]
        return d


def metric_handlers(keys: Sequence[str]) -> dict[str, MeanDice | MeanIoUHandler]:
    """Dice and IoU (foreground classes, as in training's validation) of every member, and the ensemble's Dice.

    The ensemble's IoU is the evaluator's key metric (``ensemble_mean_iou``, set in ``ensemble_evaluate.json``:
    MONAI registers additional metrics only beside a key metric).

    Args:
        keys: the members' prediction keys (``pred_<name>``); the ensemble is ``pred``.

    Returns:
        ``{"ensemble_mean_dice": MeanDice, "<name>_mean_dice": MeanDice, "<name>_mean_iou": MeanIoUHandler, ...}``.
    """
    handlers: dict[str, MeanDice | MeanIoUHandler] = {
        f"{ENSEMBLE_NAME}_mean_dice": MeanDice(
            include_background=False, output_transform=from_engine(["pred", "label"])
        )
    }
    for key in keys:
        name, transform = key.removeprefix("pred_"), from_engine([key, "label"])
        handlers[f"{name}_mean_dice"] = MeanDice(include_background=False, output_transform=transform)
        handlers[f"{name}_mean_iou"] = MeanIoUHandler(include_background=False, output_transform=transform)
    return handlers


class EnsembleEvaluator(AutocastMixin, _MonaiEnsembleEvaluator):
    """MONAI's ``EnsembleEvaluator`` with the bundles' ``amp``: fp16 AMP on CUDA; on a CPU with native bf16, bf16
    autocast only where the members' forward passes (the evaluator's inferer, eval mode, no gradients) ran
    measurably faster with it on the first batch, as :class:`scripts.engines.Evaluator` decides (``amp: "bf16"``
    forces it, ``false`` fp32).

    The members' predictions are cast to float32 as soon as the forward passes end (``FORWARD_COMPLETED``), before
    MONAI decollates and post-processes them (``MODEL_COMPLETED``, still inside the iteration).
    """

    def __init__(self, *args, amp: bool | str = False, **kwargs) -> None:
        cuda_amp = self._setup_amp(amp, kwargs.get("device", "cpu"))
        super().__init__(*args, amp=cuda_amp, **kwargs)
        self.add_event_handler(IterationEvents.FORWARD_COMPLETED, self._predictions_to_float)

    def _probe(self, engine, batch) -> tuple:
        inputs = batch[0]
        for network in engine.networks:  # as MONAI's iteration does: norm statistics are not updated
            network.eval()

        def step() -> None:
            with torch.no_grad():
                for network in engine.networks:
                    engine.inferer(inputs, network)

        return step, f"inference of the {len(engine.networks)} members", "running"

    def _predictions_to_float(self, engine: Engine) -> None:
        out = engine.state.output
        for key in self.pred_keys:
            if isinstance(out.get(key), torch.Tensor) and out[key].dtype != torch.float32:
                out[key] = out[key].float()


def _case_mean(row: torch.Tensor) -> float | None:
    """Mean over foreground classes of one case's metric row; None when every class is NaN (empty truth)."""
    values = [float(v) for v in row.flatten() if not math.isnan(float(v))]
    return sum(values) / len(values) if values else None


class EnsembleMetricsWriter:
    """Write every member's and the ensemble's mean Dice/IoU on the same cases to a JSON file (end of each run).

    Reads the metrics of :func:`metric_handlers` from the evaluator's state. The file holds ``members`` (name,
    network, checkpoint, ``mean_dice``, ``mean_iou``), ``ensemble``, ``gain`` (ensemble minus best member and minus
    the members' mean) and ``cases`` (per-case Dice of each, foreground classes averaged; null for empty truth).

    Args:
        path: output JSON (``<output_dir>/ensemble_metrics.json``).
        members: output of :func:`find_members`.
        mode: the ``ensemble_mode`` (recorded).
    """

    def __init__(self, path: str | Path, members: Sequence[Mapping[str, str]], mode: str) -> None:
        self.path, self.members, self.mode = Path(path), [dict(m) for m in members], mode
        self.cases: list[str] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _reset(self, engine: Engine) -> None:
        self.cases = []

    def _collect(self, engine: Engine) -> None:
        for item in engine.state.batch:
            case = item.get("case") if isinstance(item, Mapping) else None
            self.cases.append(str(case) if case is not None else str(len(self.cases)))

    def _case_rows(self, names: list[str], details: Mapping[str, torch.Tensor]) -> list[dict]:
        cases: list[dict] = [{"case": c} for c in self.cases]
        for name in names:
            rows = details.get(f"{name}_mean_dice")
            for case, row in zip(cases, rows if rows is not None else [], strict=False):
                case[f"{name}_dice"] = _case_mean(torch.as_tensor(row))
        return cases

    def __call__(self, engine: Engine) -> None:
        names = [ENSEMBLE_NAME] + [m["name"] for m in self.members]
        scores = {
            n: {f"mean_{s}": float(engine.state.metrics[f"{n}_mean_{s}"]) for s in ("dice", "iou")} for n in names
        }
        gain = {}
        for metric in ("mean_dice", "mean_iou"):
            values = [scores[m["name"]][metric] for m in self.members]
            gain[f"{metric}_vs_best_member"] = scores[ENSEMBLE_NAME][metric] - max(values)
            gain[f"{metric}_vs_member_mean"] = scores[ENSEMBLE_NAME][metric] - sum(values) / len(values)
        report = {
            "mode": self.mode,
            "n_cases": len(self.cases),
            "metric": "mean over cases of Dice/IoU (foreground classes) at the network's spatial_size",
            "members": [{**m, **scores[m["name"]]} for m in self.members],
            "ensemble": scores[ENSEMBLE_NAME],
            "gain": gain,
            "cases": self._case_rows(names, getattr(engine.state, "metric_details", {})),
        }
        atomic_write_json(self.path, report)
        table = "\n".join(f"  {n:<24} dice {v['mean_dice']:.4f}  iou {v['mean_iou']:.4f}" for n, v in scores.items())
        logger.info(f"ensemble ({self.mode}) on {len(self.cases)} cases, written to {self.path}:\n{table}")
