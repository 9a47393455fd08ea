"""MONAI engines with mixed precision on both devices: fp16 AMP on CUDA, bf16 autocast on CPU.

MONAI's ``SupervisedTrainer``/``SupervisedEvaluator`` hard-code ``torch.autocast("cuda")``; on a CPU their
``amp=True`` does nothing useful. These subclasses take ``amp`` as in the bundle config and pick the mode.

Native bf16 instructions do not make bf16 faster on every CPU: the PH2 UNet trained 1.4x faster per epoch with
bf16 autocast than in fp32 on an AMD EPYC with AVX512-BF16, and 1.13x slower on an Intel Xeon with AVX512-BF16
(no AMX; ``benchmarks/results/speed_ph2_melanoma_cpu_xeon.md``), while on an Intel Xeon with AMX its bare training
step ran 1.6x faster in bf16 (``speed_ph2_melanoma_cpu_xeon_amx.md``). So with ``amp: true`` the :class:`Trainer`
times the training step of its own network on its first batch in both precisions before training, and the
:class:`Evaluator` its inference, and each keeps bf16 only where it is clearly faster (:func:`measure_cpu_amp`),
logging what it measured and chose.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections.abc import Callable, Collection
from typing import Any

import torch
from monai.data import get_track_meta, set_track_meta
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys

logger = logging.getLogger(__name__)
_warned_no_bf16 = False


def cpu_supports_bf16() -> bool:
    """True when this CPU has native bf16 instructions (AVX512-BF16 or AMX), where autocast pays off."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def amp_mode(amp: bool | str, device: torch.device | str) -> str | None:
    """Resolve the ``amp`` key: ``"cuda"`` (fp16 AMP), ``"cpu"`` (bf16 autocast) or ``None`` (fp32).

    ``amp`` may be ``False``, ``True`` (mixed precision where the hardware supports it) or ``"bf16"``
    (force CPU bf16 autocast even without native instructions).
    """
    if not amp:
        return None
    dev = torch.device(device)
    if dev.type == "cuda":
        return "cuda"
    if amp == "bf16" or cpu_supports_bf16():
        return "cpu"
    global _warned_no_bf16
    if not _warned_no_bf16:
        _warned_no_bf16 = True
        logger.warning(
            "amp=True, but this CPU has no native bf16 (AVX512-BF16/AMX): running in fp32 (where native, bf16 "
            "trained 1.4x faster per epoch; README, Speed). For faster CPU inference here, export the model "
            "(scripts/export_bundle.py): inference's default backend 'auto' then times it in ONNX Runtime and "
            "OpenVINO against PyTorch and runs the fastest. "
            "amp='bf16' forces emulated bf16, which is many times slower."
        )
    return None


BF16_MIN_GAIN = 1.05  # bf16 is kept only when the fp32 step takes at least this many times as long
PROBE_REPEATS = 3


def choose_cpu_amp(fp32_seconds: list[float], bf16_seconds: list[float]) -> str | None:
    """``"cpu"`` (bf16 autocast) when the fastest bf16 step beats the fastest fp32 one by :data:`BF16_MIN_GAIN`,
    else ``None`` (fp32): near a tie fp32 stays, the more precise mode. The minimum, not the median: whatever else
    runs meanwhile (at the start of a run, data-loader workers among others) only ever adds time."""
    return "cpu" if min(fp32_seconds) >= BF16_MIN_GAIN * min(bf16_seconds) else None


def time_in_turns(
    steps: dict[str, Callable[[], Any]], repeats: int = PROBE_REPEATS, optional: Collection[str] = ()
) -> tuple[dict[str, float], dict[str, Exception]]:
    """Time each of ``steps``: one warm-up run each (it builds kernels, loads runtimes), then ``repeats`` runs each
    in turns, the order reversing every round, so a change of load hits every step alike. Returns the fastest run
    of each (whatever else runs meanwhile only ever adds time) and the errors of the ``optional`` steps that failed
    their warm-up (those are left out; any other error propagates). The torch random state is restored afterwards,
    so the timing leaves the run's dropout and augmentation streams as they were. Shared by the ``amp`` probe
    (:func:`measure_cpu_amp`) and ``backend: auto`` (:class:`scripts.onnx_inferer.AutoBackend`)."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    failed: dict[str, Exception] = {}
    names = list(steps)
    with torch.random.fork_rng(devices=[]):
        for i in range(repeats + 1):
            for name in names if i % 2 == 0 else names[::-1]:
                if name in failed:
                    continue
                t0 = time.perf_counter()
                try:
                    steps[name]()
                except Exception as error:
                    if i or name not in optional:
                        raise
                    failed[name] = error
                    continue
                if i:
                    times[name].append(time.perf_counter() - t0)
    return {name: min(t) for name, t in times.items() if name not in failed}, failed


def measure_cpu_amp(step: Callable[[], None], repeats: int = PROBE_REPEATS) -> tuple[str | None, dict]:
    """Time ``step()`` in fp32 and under bf16 autocast (:func:`time_in_turns`) and choose with
    :func:`choose_cpu_amp`. Returns the mode and the fastest seconds of each."""

    def under(bf16: bool) -> Callable[[], None]:
        def run() -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                step()

        return run

    fastest, _ = time_in_turns({"fp32_s": under(False), "bf16_s": under(True)}, repeats)
    return choose_cpu_amp([fastest["fp32_s"]], [fastest["bf16_s"]]), fastest


def _distributed() -> bool:
    """A distributed run is not measured: ranks could choose differently, and a DDP network's extra forward passes
    on one rank (its buffers are broadcast at each) would leave the ranks' collectives out of step."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        logger.info("amp: bf16 autocast on every rank (a distributed run is not measured, so ranks agree)")
        return True
    return False


#: the precision each resolved ``amp`` mode computes in (:func:`amp_mode`)
PRECISIONS = {None: "fp32", "cpu": "bf16", "cuda": "fp16"}


class AutocastMixin:
    """The ``amp`` of :class:`Trainer`, :class:`Evaluator` and :class:`scripts.ensemble.EnsembleEvaluator`: fp16 AMP
    on CUDA, and on a CPU bf16 autocast where it was measured faster on the first batch (``amp: true``) or forced
    (``amp: "bf16"``). :attr:`precision` says which one runs."""

    @property
    def precision(self) -> str:
        """``"fp32"``, ``"bf16"`` or ``"fp16"``: what the engine computes in (after the first batch's measurement,
        where ``amp: true`` on a CPU measures; before it, the precision it would use unmeasured)."""
        return PRECISIONS[self.amp_device]

    def _setup_amp(self, amp: bool | str, device) -> bool:
        self.amp_device = amp_mode(amp, device)
        # amp True on a CPU with native bf16: measured on the first batch (_choose_amp); "bf16" forces it unmeasured
        self._measure_amp = self.amp_device == "cpu" and amp != "bf16"
        return self.amp_device == "cuda"

    def _probe(self, engine, batch) -> tuple[Callable[[], None], str, str]:
        """The work to time on the first ``batch`` (already on the device), what the log calls it, and the verb
        for what then runs in the chosen precision."""
        raise NotImplementedError

    def _choose_amp(self, engine, batchdata) -> str | None:
        if _distributed():
            return "cpu"
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        step, what, verb = self._probe(engine, batch)
        mode, seconds = measure_cpu_amp(step)
        logger.info(
            f"amp: {what} on this CPU took {seconds['fp32_s']:.3f} s in fp32 and {seconds['bf16_s']:.3f} s with "
            f"bf16 autocast on the first batch: {verb} in {'bf16' if mode else 'fp32'} (bf16 needs "
            f"{BF16_MIN_GAIN}x; amp 'bf16' forces it, amp false forces fp32)"
        )
        return mode

    def _iteration(self, engine, batchdata):
        if self._measure_amp:
            self._measure_amp = False
            self.amp_device = self._choose_amp(engine, batchdata)
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if self.amp_device == "cpu" else contextlib.nullcontext()
        with ctx:
            return super()._iteration(engine, batchdata)

    def _register_float_predictions(self) -> None:
        """Post-processing and metrics run inside ``_iteration``: cast reduced-precision logits right after forward."""

        def cast(engine) -> None:
            pred = engine.state.output.get(CommonKeys.PRED)
            if isinstance(pred, torch.Tensor) and pred.dtype in (torch.bfloat16, torch.float16):
                engine.state.output[CommonKeys.PRED] = pred.float()

        if self.amp_device is not None:
            self.add_event_handler(IterationEvents.FORWARD_COMPLETED, cast)


class Trainer(AutocastMixin, SupervisedTrainer):
    """``SupervisedTrainer`` whose ``amp`` means fp16 AMP on CUDA and, on a CPU with native bf16, bf16 autocast
    where it measured faster than fp32 for this network on the first training batch (``amp: "bf16"`` forces it)."""

    def __init__(self, *args, amp: bool | str = False, track_meta: bool = True, **kwargs) -> None:
        cuda_amp = self._setup_amp(amp, kwargs.get("device", "cpu"))
        super().__init__(*args, amp=cuda_amp, **kwargs)
        self.track_meta = track_meta
        self._register_float_predictions()

    def run(self) -> None:
        """Train with MONAI's metadata tracking set to ``track_meta``, restored afterwards.

        The bundles' ``train.json`` turns it off (``$@cache_rate < 1.0``) when every item is cached: the cached items
        are plain tensors already (``EnsureTyped(track_meta=False)`` ends ``load_transforms``), but each random
        transform wraps its output in a ``MetaTensor`` and records itself while tracking is on, a large share of the
        augmentation's cost on a CPU, for metadata training never reads (MONAI's fast-training tutorial turns it off
        the same way, once the cache is built). The datasets were built, and cached, before this call; the data
        loader's workers start inside it and inherit the setting. Items loaded during training (``cache_rate`` below
        1, as the label app's tests run) need it on: ``EnsureChannelFirstd`` reads the channel layout from it."""
        previous = get_track_meta()
        set_track_meta(self.track_meta)
        try:
            super().run()
        finally:
            set_track_meta(previous)

    def _probe(self, engine, batch) -> tuple[Callable[[], None], str, str]:
        inputs, targets = batch[0], batch[1]
        # a copy, so the probe's forward passes leave the weights and the norm layers' running statistics alone
        net = copy.deepcopy(getattr(engine.network, "module", engine.network)).train()

        def step() -> None:
            engine.loss_function(engine.inferer(inputs, net), targets).mean().backward()
            net.zero_grad(set_to_none=True)

        return step, "a training step of this network", "training"


class Evaluator(AutocastMixin, SupervisedEvaluator):
    """``SupervisedEvaluator`` with the same ``amp`` semantics as :class:`Trainer`: on a CPU with native bf16,
    ``amp: true`` keeps bf16 only where the evaluator's own inferer (TTA views, ONNX base, whatever it is) ran
    measurably faster with it on the first batch, in eval mode and without gradients. An inferer whose base owns
    the precision (``backend: auto``, :class:`scripts.onnx_inferer.AutoBackend`, which times bf16 among PyTorch
    and the exported runtimes) is not measured twice."""

    def __init__(self, *args, amp: bool | str = False, **kwargs) -> None:
        cuda_amp = self._setup_amp(amp, kwargs.get("device", "cpu"))
        super().__init__(*args, amp=cuda_amp, **kwargs)
        self._register_float_predictions()

    def _choose_amp(self, engine, batchdata) -> str | None:
        base = getattr(self.inferer, "base", self.inferer)
        if getattr(base, "owns_precision", False):  # backend auto times PyTorch bf16 among its candidates
            logger.info(f"amp: {type(base).__name__} chooses the precision of inference")
            return None
        return super()._choose_amp(engine, batchdata)

    def _probe(self, engine, batch) -> tuple[Callable[[], None], str, str]:
        inputs = batch[0]
        engine.network.eval()  # as SupervisedEvaluator's iteration does: norm statistics are not updated

        def step() -> None:
            with torch.no_grad():
                engine.inferer(inputs, engine.network)

        return step, "inference", "running"
