"""Ignite handlers the bundles add to MONAI's: atomic best-model saving, weight averaging, training history,
confusion matrix."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import torch
from ignite.engine import Engine, Events
from monai.utils import CommonKeys


def atomic_write_bytes(path: str | Path, write) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``: readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_json(path: str | Path, obj) -> None:
    """Write JSON atomically (indent 2)."""
    atomic_write_bytes(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2)))


def _unwrap(net: torch.nn.Module) -> torch.nn.Module:
    return net.module if hasattr(net, "module") else net


class BestModelSaver:
    """Save the network's ``state_dict`` when the key metric improves, atomically (temp file + rename).

    A process killed mid-save leaves the previous ``model.pt`` intact, which MONAI Label relies on while it
    serves the model that is being retrained. Writes ``<name>.json`` beside it with the metric and epoch.

    Args:
        save_path: e.g. ``models/model.pt``.
        net: the network (DDP-wrapped or not).
        key_metric: name in ``engine.state.metrics``; higher is better.
    """

    def __init__(self, save_path: str, net: torch.nn.Module, key_metric: str):
        self.save_path, self.net, self.key_metric = Path(save_path), net, key_metric
        self.best = -float("inf")

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        value = float(engine.state.metrics.get(self.key_metric, -float("inf")))
        if value <= self.best:
            return
        self.best = value
        state = {k: v.detach().cpu() for k, v in _unwrap(self.net).state_dict().items()}
        atomic_write_bytes(self.save_path, lambda tmp: torch.save(state, tmp))
        epoch = engine.state.epoch  # the evaluator runs with the trainer's epoch number
        atomic_write_json(self.save_path.with_suffix(".json"), {self.key_metric: value, "epoch": epoch})


class WeightAverager:
    """Exponential moving average of the network's weights (``ema_decay``), used for validation and saved.

    After every training iteration ``avg = d * avg + (1 - d) * weights`` with ``d = min(decay, (1 + t) / (10 + t))``
    at step ``t`` (a short warm-up, so the first, random weights fade fast); buffers (batch-norm statistics) are
    copied. While the evaluator runs, the network holds the averaged weights, so the validation metrics, the best
    model saved by :class:`BestModelSaver` (on the evaluator's epoch end) and the early stopper all see the average;
    the training weights are put back when it completes. ``decay`` 0 attaches nothing (the plain recipe).

    Args:
        net: the network (DDP-wrapped or not).
        decay: the average's decay per iteration (e.g. 0.99: a horizon of about 100 iterations); 0 is off.
        evaluator: the validation evaluator (attach this handler to the trainer).
    """

    def __init__(self, net: torch.nn.Module, decay: float, evaluator: Engine | None = None):
        if not 0.0 <= float(decay) < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) (0 turns the average off); got {decay}.")
        self.net, self.decay, self.evaluator = net, float(decay), evaluator
        self.average: dict[str, torch.Tensor] | None = None
        self._training: dict[str, torch.Tensor] | None = None
        self.steps = 0

    def attach(self, engine: Engine) -> None:
        if self.decay == 0.0:
            return
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.update)
        if self.evaluator is not None:
            self.evaluator.add_event_handler(Events.STARTED, self.swap_in)
            self.evaluator.add_event_handler(Events.COMPLETED, self.swap_out)

    @torch.no_grad()
    def update(self, engine: Engine | None = None) -> None:
        state = _unwrap(self.net).state_dict()
        if self.average is None:
            self.average = {k: v.detach().clone() for k, v in state.items()}
        d = min(self.decay, (1 + self.steps) / (10 + self.steps))
        for key, value in state.items():
            if value.is_floating_point():
                self.average[key].mul_(d).add_(value.detach(), alpha=1 - d)
            else:  # counters such as num_batches_tracked
                self.average[key].copy_(value)
        self.steps += 1

    @torch.no_grad()
    def swap_in(self, engine: Engine | None = None) -> None:
        """Load the average into the network (keeping the training weights)."""
        if self.average is None or self._training is not None:
            return
        net = _unwrap(self.net)
        self._training = {k: v.detach().clone() for k, v in net.state_dict().items()}
        net.load_state_dict(self.average)

    @torch.no_grad()
    def swap_out(self, engine: Engine | None = None) -> None:
        """Put the training weights back."""
        if self._training is None:
            return
        _unwrap(self.net).load_state_dict(self._training)
        self._training = None


class HistoryWriter:
    """Record per-epoch training loss, learning rate, epoch time, the precision the trainer computed in
    (:attr:`scripts.engines.AutocastMixin.precision`, what ``amp: true`` resolved to) and validation metrics to a
    JSON file.

    ``evaluate`` draws the loss and metric curves from it. Attach to the trainer.

    Args:
        path: output JSON (rewritten atomically each epoch).
        evaluator: the validation evaluator whose ``state.metrics`` are recorded.
        optimizer: to record the learning rate.
    """

    def __init__(self, path: str, evaluator: Engine | None = None, optimizer: torch.optim.Optimizer | None = None):
        self.path, self.evaluator, self.optimizer = Path(path), evaluator, optimizer
        self.history: list[dict] = []
        self._loss_sum, self._n, self._t0 = 0.0, 0, 0.0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        # after the validation handler, which also runs on EPOCH_COMPLETED and is attached earlier
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch)

    def _start(self, engine: Engine) -> None:
        self._loss_sum, self._n, self._t0 = 0.0, 0, time.perf_counter()

    def _iteration(self, engine: Engine) -> None:
        out = engine.state.output
        loss = out[0][CommonKeys.LOSS] if isinstance(out, list) else out[CommonKeys.LOSS]
        self._loss_sum += float(loss)
        self._n += 1

    def _epoch(self, engine: Engine) -> None:
        row = {"epoch": engine.state.epoch, "loss": self._loss_sum / max(1, self._n)}
        row["epoch_seconds"] = time.perf_counter() - self._t0
        if isinstance(getattr(engine, "precision", None), str):  # the bundles' Trainer: fp32, bf16 or fp16
            row["precision"] = engine.precision
        if self.optimizer is not None:
            row["lr"] = self.optimizer.param_groups[0]["lr"]
        if self.evaluator is not None and self.evaluator.state.epoch:
            for k, v in self.evaluator.state.metrics.items():
                if isinstance(v, (int, float)):
                    row[k] = float(v)
        self.history.append(row)
        atomic_write_json(self.path, self.history)


class ConfusionMatrixSaver:
    """Accumulate the pixel confusion matrix (rows: truth, columns: prediction) on the device in use.

    Expects decollated outputs whose ``pred`` and ``label`` are one-hot (C, H, W), as produced by the bundles'
    validation post-processing. At the end of each epoch the matrix is stored on
    ``engine.state.confusion_matrix`` and, when ``save_path`` is set, written as JSON.
    """

    def __init__(self, num_classes: int, save_path: str | None = None) -> None:
        self.num_classes, self.save_path = int(num_classes), save_path
        self.matrix: torch.Tensor | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._update)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._finish)

    def _reset(self, engine: Engine) -> None:
        self.matrix = None

    def _update(self, engine: Engine) -> None:
        n = self.num_classes
        for item in engine.state.output:
            pred, label = item[CommonKeys.PRED], item[CommonKeys.LABEL]
            p = pred.argmax(0) if pred.shape[0] > 1 else pred[0]
            t = label.argmax(0) if label.shape[0] > 1 else label[0]
            counts = torch.bincount((t.long() * n + p.long()).flatten(), minlength=n * n).reshape(n, n)
            self.matrix = counts if self.matrix is None else self.matrix + counts

    def _finish(self, engine: Engine) -> None:
        if self.matrix is None:
            return
        matrix = self.matrix.cpu().tolist()
        engine.state.confusion_matrix = matrix
        if self.save_path:
            atomic_write_json(self.save_path, {"rows": "truth", "columns": "prediction", "matrix": matrix})


class ProgressBarHandler:
    """Ignite's tqdm progress bar (iterations, rate, ETA) showing the running training loss."""

    def __init__(self, desc: str = "train", persist: bool = True) -> None:
        from ignite.handlers import ProgressBar

        self.bar = ProgressBar(desc=desc, persist=persist)

    def attach(self, engine: Engine) -> None:
        def loss(output):
            item = output[0] if isinstance(output, list) else output
            return {"loss": float(item[CommonKeys.LOSS])}

        self.bar.attach(engine, output_transform=loss)


RANK_ZERO_ONLY = (
    "StatsHandler",
    "TensorBoardStatsHandler",
    "ProgressBarHandler",
    "HistoryWriter",
    "BestModelSaver",
    "MetricsSaver",
    "CheckpointSaver",
    "MLFlowHandler",
    "ConfusionMatrixSaver",
)


def for_rank(handlers: list) -> list:
    """Handlers to attach on this process under torchrun: logging and saving only on rank 0."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized() or dist.get_rank() == 0:
        return handlers
    return [h for h in handlers if type(h).__name__ not in RANK_ZERO_ONLY]


class TimeLimitHandler:
    """Stop training after ``minutes`` of wall time (0 = no limit); the best checkpoint so far is kept."""

    def __init__(self, minutes: float = 0.0) -> None:
        self.minutes = float(minutes)

    def attach(self, engine: Engine) -> None:
        if self.minutes > 0:
            from ignite.handlers import TimeLimit

            engine.add_event_handler(Events.EPOCH_COMPLETED, TimeLimit(limit_sec=int(self.minutes * 60)))
