"""Loss registry: every loss takes logits (B, C, H, W) and an integer label map (B, 1, H, W)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceLoss, FocalLoss
from monai.networks.utils import one_hot


class OneHotBCEWithLogitsLoss(nn.Module):
    """Binary cross-entropy on every output channel against the one-hot label.

    Args:
        label_smoothing: soft-BCE target smoothing (targets become ``eps/2`` and ``1 - eps/2``); 0 is plain BCE.
        include_background: also score channel 0.
    """

    def __init__(self, label_smoothing: float = 0.0, include_background: bool = True) -> None:
        super().__init__()
        self.label_smoothing = float(label_smoothing)
        self.include_background = include_background

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        target = one_hot(label.long(), num_classes=logits.shape[1]).to(logits.dtype)
        if self.label_smoothing:
            target = target * (1 - self.label_smoothing) + 0.5 * self.label_smoothing
        if not self.include_background and logits.shape[1] > 1:
            logits, target = logits[:, 1:], target[:, 1:]
        return F.binary_cross_entropy_with_logits(logits, target)


class CrossEntropyLoss(nn.Module):
    """Softmax cross-entropy on an integer label map with a channel axis."""

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = float(label_smoothing)

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, label[:, 0].long(), label_smoothing=self.label_smoothing)


class SumLoss(nn.Module):
    """Weighted sum of losses (Dice + BCE as in the TRUS recipe)."""

    def __init__(self, losses: list[nn.Module], weights: list[float]) -> None:
        super().__init__()
        self.losses = nn.ModuleList(losses)
        self.weights = weights

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return sum(w * loss(logits, label) for w, loss in zip(self.weights, self.losses, strict=True))


def _dice(**kw) -> nn.Module:
    return DiceLoss(
        to_onehot_y=True,
        softmax=True,
        include_background=kw.get("include_background", False),
        smooth_nr=1e-5,
        smooth_dr=1e-5,
        batch=kw.get("batch_dice", True),
    )


LOSSES: dict[str, Callable[..., nn.Module]] = {
    "dicece": lambda **kw: DiceCELoss(
        to_onehot_y=True,
        softmax=True,
        include_background=kw.get("include_background", False),
        batch=kw.get("batch_dice", True),
        lambda_dice=kw.get("dice_weight", 1.0),
        lambda_ce=kw.get("ce_weight", 1.0),
    ),
    "dice": _dice,
    "ce": lambda **kw: CrossEntropyLoss(kw.get("label_smoothing", 0.0)),
    "bce": lambda **kw: OneHotBCEWithLogitsLoss(0.0),
    "soft_bce": lambda **kw: OneHotBCEWithLogitsLoss(kw.get("label_smoothing", 0.1)),
    "focal": lambda **kw: FocalLoss(to_onehot_y=True, use_softmax=True, gamma=kw.get("gamma", 2.0)),
    "dice_bce": lambda **kw: SumLoss(
        [_dice(**kw), OneHotBCEWithLogitsLoss(0.0)], [kw.get("dice_weight", 1.0), kw.get("ce_weight", 1.0)]
    ),
}


#: ``loss_kwargs`` keys that switch something on or off
BOOL_KWARGS = {"batch_dice", "include_background"}


class PresenceLoss(nn.Module):
    """Segmentation loss plus ``weight`` x BCE of an image-level "any foreground" logit.

    Takes the train-mode output of :class:`scripts.networks.PresenceGatedNet`: ``(B, C + 1, *spatial)``, the C
    segmentation logits then the presence logit as a constant channel. The target of the presence logit is whether
    the label has any foreground pixel.

    Args:
        loss: the segmentation loss (on the first C channels).
        weight: weight of the presence BCE.
    """

    def __init__(self, loss: nn.Module, weight: float = 1.0) -> None:
        super().__init__()
        self.loss = loss
        self.weight = float(weight)

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        presence = logits[:, -1].flatten(1)[:, 0].float()
        target = (label.flatten(1) > 0).any(dim=1).to(presence.dtype)
        return self.loss(logits[:, :-1], label) + self.weight * F.binary_cross_entropy_with_logits(presence, target)


def with_presence(loss: nn.Module, presence_head: bool, weight: float = 1.0) -> nn.Module:
    """``loss`` wrapped in :class:`PresenceLoss` when the network has a presence head (``presence_head``), else as is."""
    return PresenceLoss(loss, weight) if presence_head else loss


def build_loss(name: str, **kwargs) -> nn.Module:
    """Build a loss by name (see ``LOSSES``); extra keyword arguments tune it (``label_smoothing``, ``gamma``, ...)."""
    key = name.lower()
    if key not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; set loss to one of: {', '.join(sorted(LOSSES))}.")
    for flag in BOOL_KWARGS & set(kwargs):
        if not isinstance(kwargs[flag], bool):  # a string "false" would be truthy and silently keep the default
            raise ValueError(f"loss_kwargs {flag} must be true or false; got {kwargs[flag]!r}.")
    return LOSSES[key](**kwargs)
