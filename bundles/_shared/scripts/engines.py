"""MONAI engines with mixed precision on both devices: fp16 AMP on CUDA, bf16 autocast on CPU.

MONAI's ``SupervisedTrainer``/``SupervisedEvaluator`` hard-code ``torch.autocast("cuda")``; on a CPU their
``amp=True`` does nothing useful. These subclasses take ``amp`` as in the bundle config and pick the mode.
"""

from __future__ import annotations

import contextlib
import logging

import torch
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
            "(scripts/export_bundle.py): inference's default backend 'auto' then runs it with ONNX Runtime. "
            "amp='bf16' forces emulated bf16, which is many times slower."
        )
    return None


class _AutocastMixin:
    def _setup_amp(self, amp: bool | str, device) -> bool:
        self.amp_device = amp_mode(amp, device)
        return self.amp_device == "cuda"

    def _iteration(self, engine, batchdata):
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


class Trainer(_AutocastMixin, SupervisedTrainer):
    """``SupervisedTrainer`` whose ``amp`` means fp16 AMP on CUDA and bf16 autocast on a capable CPU."""

    def __init__(self, *args, amp: bool | str = False, **kwargs) -> None:
        cuda_amp = self._setup_amp(amp, kwargs.get("device", "cpu"))
        super().__init__(*args, amp=cuda_amp, **kwargs)
        self._register_float_predictions()


class Evaluator(_AutocastMixin, SupervisedEvaluator):
    """``SupervisedEvaluator`` with the same ``amp`` semantics as :class:`Trainer`."""

    def __init__(self, *args, amp: bool | str = False, **kwargs) -> None:
        cuda_amp = self._setup_amp(amp, kwargs.get("device", "cpu"))
        super().__init__(*args, amp=cuda_amp, **kwargs)
        self._register_float_predictions()
