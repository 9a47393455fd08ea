"""Per-pixel uncertainty of a prediction: Monte-Carlo dropout or flip test-time augmentation.

``configs/inference_uncertainty.json`` adds :class:`UncertaintyMapd` after the bundle's usual post-processing:
the mask is the ordinary single-pass prediction (unchanged by the option), and the uncertainty is the variance,
over ``samples`` stochastic or augmented passes, of the foreground probability ``1 - p(background)``. It lies in
[0, 0.25]; the config inverts it to the original image size and saves it as ``<name>_uncertainty.nii.gz``
(float32, not rescaled).

:class:`FlipTTAInferer` is the same flip averaging used for the mask itself (``tta_views`` in ``evaluate`` and
``inference``).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.inferers import Inferer
from monai.networks.utils import eval_mode
from monai.transforms import MapTransform
from monai.utils import convert_to_dst_type, convert_to_tensor
from torch import nn

from .networks import enable_mc_dropout, has_dropout
from .transforms import like_input, plain_tensor

__all__ = [
    "UNCERTAINTY_MODES",
    "FlipTTAInferer",
    "UncertaintyMapd",
    "flip_probabilities",
    "flip_views",
    "foreground_variance",
    "sample_probabilities",
]

UNCERTAINTY_MODES = ("none", "mc_dropout", "flip_tta")
MAX_FLIP_VIEWS = 8


def flip_views(height: int, width: int) -> list[tuple[bool, tuple[int, ...]]]:
    """The flip test-time views of a ``(B, C, H, W)`` batch as ``(transpose, flipped dims)``, identity first.

    The four flips, then (square inputs only) the same four after swapping H and W: the eight symmetries of the
    square. Each view is its own inverse up to the order of the two steps (see :func:`_undo`).
    """
    flips: list[tuple[int, ...]] = [(), (3,), (2,), (2, 3)]
    views = [(False, f) for f in flips]
    if height == width:
        views += [(True, f) for f in flips]
    return views


def _apply(x: torch.Tensor, transpose: bool, dims: tuple[int, ...]) -> torch.Tensor:
    x = x.transpose(2, 3) if transpose else x
    return x.flip(dims) if dims else x


def _undo(y: torch.Tensor, transpose: bool, dims: tuple[int, ...]) -> torch.Tensor:
    y = y.flip(dims) if dims else y
    return y.transpose(2, 3) if transpose else y


def flip_probabilities(
    run: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor, count: int, key: str
) -> list[torch.Tensor]:
    """Softmax probabilities of ``run`` on the first ``count`` :func:`flip_views` of ``inputs``, each flipped back.

    The views go through ``run`` as one batch (``count`` times the batch of ``inputs``; every view has the input's
    shape, the transposes being of square inputs only): one call instead of ``count``, which saves ONNX Runtime's
    and the framework's per-call costs (README, Speed). In eval mode each image's output does not depend on the rest
    of its batch, so the probabilities are those of separate calls. ``key`` names the setting in the error raised
    when ``count`` exceeds the views the input has (the transposes need a square input).
    """
    views = flip_views(inputs.shape[2], inputs.shape[3])
    if count > len(views):
        raise ValueError(
            f"{key}={count}, but a {inputs.shape[2]}x{inputs.shape[3]} input has {len(views)} distinct views "
            f"(flips; the transposes need a square spatial_size); set {key} <= {len(views)}."
        )
    chosen = views[:count]
    logits = torch.as_tensor(run(torch.cat([_apply(inputs, *view) for view in chosen]).contiguous()))
    parts = logits.float().split(inputs.shape[0])
    return [_undo(torch.softmax(part, 1), *view) for part, view in zip(parts, chosen, strict=True)]


@torch.no_grad()
def sample_probabilities(network: nn.Module, inputs: torch.Tensor, mode: str, samples: int) -> torch.Tensor:
    """Class probabilities of ``samples`` passes of ``network`` on ``inputs`` ``(B, C, H, W)``.

    ``mc_dropout`` keeps dropout sampling with normalisation in eval mode (:func:`enable_mc_dropout`);
    ``flip_tta`` runs the first ``samples`` of :func:`flip_views` in eval mode and flips each output back.
    The network's train/eval flags are restored afterwards.

    Returns:
        ``(samples, B, num_classes, H, W)`` softmax probabilities.
    """
    if mode == "mc_dropout":
        flags = {m: m.training for m in network.modules()}
        try:
            enable_mc_dropout(network)
            probs = [torch.softmax(network(inputs).float(), 1) for _ in range(samples)]
        finally:
            for module, flag in flags.items():
                module.train(flag)
    elif mode == "flip_tta":
        with eval_mode(network):
            probs = flip_probabilities(network, inputs, samples, "uncertainty_samples")
    else:
        raise ValueError(f"uncertainty must be one of {', '.join(UNCERTAINTY_MODES)}; got {mode!r}.")
    return torch.stack(probs)


def foreground_variance(probs: torch.Tensor) -> torch.Tensor:
    """Per-pixel variance over samples (population variance) of ``1 - p(background)``: ``(S, B, C, H, W) -> (B, 1, H, W)``."""
    return (1.0 - probs[:, :, :1]).var(dim=0, unbiased=False)


class UncertaintyMapd(MapTransform):
    """Add the per-pixel uncertainty of the prediction for the preprocessed image ``keys`` as ``output_key``.

    The map is at the network's resolution with the image's metadata and applied operations, so ``Invertd`` with
    ``orig_keys`` = the image key brings it to the original size. ``mode="none"`` adds nothing.

    Args:
        keys: the preprocessed image key (``image``), channel-first ``(C, H, W)``.
        network: the bundle's network (weights loaded).
        mode: ``none``, ``mc_dropout`` or ``flip_tta``.
        samples: passes per image, >= 2 (at most 8 for ``flip_tta``, 4 for non-square ``spatial_size``).
        output_key: where the ``(1, H, W)`` variance map goes.

    Raises:
        ValueError: unknown ``mode``, too few samples, or ``mc_dropout`` on a network without dropout.
    """

    def __init__(
        self,
        keys: KeysCollection,
        network: nn.Module,
        mode: str = "flip_tta",
        samples: int = 8,
        output_key: str = "uncertainty",
    ) -> None:
        super().__init__(keys)
        if mode not in UNCERTAINTY_MODES:
            raise ValueError(f"uncertainty must be one of {', '.join(UNCERTAINTY_MODES)}; got {mode!r}.")
        if mode != "none" and not 2 <= int(samples) <= (MAX_FLIP_VIEWS if mode == "flip_tta" else 10**6):
            raise ValueError(f"uncertainty_samples must be >= 2 (<= {MAX_FLIP_VIEWS} for flip_tta); got {samples}.")
        if mode == "mc_dropout" and not has_dropout(network):
            raise ValueError(
                "uncertainty='mc_dropout' needs dropout layers, and this network has none with p > 0: train with "
                "--dropout 0.1 (and run with the same value), or use uncertainty='flip_tta'."
            )
        self.network, self.mode, self.samples, self.output_key = network, mode, int(samples), output_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        if self.mode == "none":
            return d
        device = next(self.network.parameters()).device
        for key in self.key_iterator(d):
            image = d[key]
            batch = convert_to_tensor(image, dtype=torch.float32, device=device, track_meta=False)[None]
            variance = foreground_variance(sample_probabilities(self.network, batch, self.mode, self.samples))[0]
            d[self.output_key] = convert_to_dst_type(variance.cpu(), image, dtype=torch.float32)[0]
        return d


class FlipTTAInferer(Inferer):
    """Test-time augmentation over flips: the mean of the softmax over the first ``views`` of :func:`flip_views`.

    Returns ``log(mean probability)`` so that the bundle's usual ``Activationsd(softmax=True)`` turns it back into
    the averaged probabilities exactly; ``views=1`` is the plain single pass (logits unchanged). 2 views = identity
    + left-right flip, 4 = all four flips, 8 = also the transposes (square inputs only). ``base`` is the inferer
    each view goes through (e.g. :class:`scripts.onnx_inferer.OnnxInferer`); ``None`` calls the network directly.

    The views run on a plain tensor and the result takes the input's metadata back (what the network would have
    passed on): MONAI's metadata tracking through every layer of a ``MetaTensor`` made the PH2 UNet's forward pass
    at 256x256 1.22x slower, with the same values (``python scripts/bench_inference.py parts``).
    """

    def __init__(self, views: int = 1, base: Inferer | None = None) -> None:
        super().__init__()
        if not 1 <= int(views) <= MAX_FLIP_VIEWS:
            raise ValueError(f"tta_views must be between 1 (no TTA) and {MAX_FLIP_VIEWS}; got {views}.")
        self.views, self.base = int(views), base

    def _run(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args, **kwargs) -> torch.Tensor:
        if self.base is None:
            return network(inputs, *args, **kwargs)
        return self.base(inputs, network, *args, **kwargs)

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args, **kwargs) -> torch.Tensor:
        plain = plain_tensor(inputs)
        if self.views == 1:
            out = self._run(plain, network, *args, **kwargs)
        else:
            probs = flip_probabilities(lambda x: self._run(x, network, *args, **kwargs), plain, self.views, "tta_views")
            out = torch.log(torch.stack(probs).mean(0).clamp_min(1e-7))
        if isinstance(inputs, MetaTensor) and not isinstance(out, MetaTensor):
            out = like_input(out, inputs)
        return out
