"""Network registry shared by the lesion-segmentation bundles.

Every entry of :data:`NETWORKS` maps ``(B, in_channels, *spatial)`` to logits ``(B, out_channels, *spatial)``
(no softmax/sigmoid). Bundles build a network by name, e.g. in ``configs/train.json``::

    "network_def": {"_target_": "scripts.networks.build_network", "name": "@network_name",
                    "in_channels": "@in_channels", "out_channels": "@num_classes", "dropout": "@dropout"}

Input sizes: H and W multiples of 32 work for every entry. The smallest divisor each one needs is listed below
(``min div``); the smallest usable side is that divisor (64 or more is advisable for the 32x networks).

=============================  =====================================================================  =======
name                           what it is                                                             min div
=============================  =====================================================================  =======
``unet``                       MONAI ``UNet`` (Kerfoot et al.), residual units, (16..256) channels     16
``resunet``                    :class:`ResUNet`: Zhang et al. 2018 pre-activation residual U-Net      16
``segnet``                     :class:`SegNet`: compact SegNet, max-pool indices + ``MaxUnpool``      32
``attention_unet``             MONAI ``AttentionUnet`` (Oktay et al.), (16..256) channels             16
``segresnet``                  MONAI ``SegResNet`` (Myronenko), ``init_filters=16``                    8
``basic_unet``                 MONAI ``BasicUNet``, features (32, 32, 64, 128, 256, 32)               16
``flexible_unet_resnet34``     MONAI ``FlexibleUNet``, ResNet34 encoder (``backbone`` kwarg)          32
``resnext50_unet``             MONAI ``FlexibleUNet`` on :class:`ResNeXtEncoder` (ResNeXt50 32x4d)    32
``fpn``                        :class:`SemanticFPN`: Panoptic-FPN semantic head, ResNet34 encoder     32
``deeplabv3``                  :class:`DeepLabV3Plus`: ASPP + DeepLabV3+ decoder, ResNet50, OS 16      32
=============================  =====================================================================  =======

Encoders (``backbone``) come from MONAI's FlexibleUNet registry ``FLEXUNET_BACKBONE`` (``resnet10..200``,
``efficientnet-b0..l2``); importing this module adds ``resnext50_32x4d`` to it. Weights are never downloaded:
``pretrained=True`` is refused; load a local checkpoint instead (e.g. ``monai.handlers.CheckpointLoader``).

``presence_head=True`` wraps any entry in a :class:`PresenceGatedNet`: a small image-level classifier decides
whether the image shows the structure at all and, in eval mode, empties the mask where it says no.

Dropout (``dropout``, a probability) is what MONAI Label's epistemic scoring samples with MC dropout: it is active
in ``train()`` mode, and :func:`enable_mc_dropout` switches on only the dropout layers of an evaluated model.
Where each network applies it is written in its docstring (MONAI ``UNet``/``AttentionUnet``/``BasicUNet``: after
every convolution; ``SegResNet``: once, after the first convolution; ``FlexibleUNet``: every decoder block).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from itertools import pairwise
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.blocks import BaseEncoder, Convolution
from monai.networks.blocks.feature_pyramid_network import FeaturePyramidNetwork
from monai.networks.layers.factories import Conv, Dropout, Norm, Pool
from monai.networks.layers.utils import get_norm_layer
from monai.networks.nets import AttentionUnet, BasicUNet, FlexibleUNet, SegResNet, UNet
from monai.networks.nets.efficientnet import EfficientNetBNFeatures
from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE
from monai.networks.nets.resnet import ResNet, ResNetBottleneck, ResNetFeatures
from torch import nn

__all__ = [
    "NETWORKS",
    "DeepLabV3Plus",
    "FastDropout",
    "MaxUnpool",
    "MeanEnsembleNet",
    "PresenceClassifier",
    "PresenceGatedNet",
    "ResNeXtEncoder",
    "ResUNet",
    "SegNet",
    "SemanticFPN",
    "ZeroPadShortcut",
    "build_encoder",
    "build_network",
    "enable_mc_dropout",
    "has_dropout",
    "use_fast_dropout",
    "samples_dropout",
    "fix_monai_encoders",
    "load_weights",
]

_DROPOUT_TYPES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


class FastDropout(nn.Dropout):
    """``nn.Dropout`` with a cheaper training mask on the CPU; the same layer otherwise.

    PyTorch's CPU dropout draws one Bernoulli sample per element from its Mersenne-Twister generator; for the
    MONAI ``UNet`` (dropout after every convolution) that was 44 % of the forward pass and 22 % of a training
    step at 256x256 on 2 cores (py-spy). This layer draws 64 random bits per four elements instead
    (``random_`` over the full ``int64`` range, viewed as ``int16``) and keeps an element when its 16 bits are at
    or above ``t = round(p * 2**16)``: each element is kept independently with probability ``1 - t / 2**16``
    (within ``2**-17`` of ``1 - p``; exactly ``1 - p`` for ``p`` a multiple of ``2**-16`` such as 0.5 or 0.25) and
    scaled by its inverse, so the expectation is kept as ``nn.Dropout`` keeps it, from the same seeded generator.
    The PH2 bundle's bare training step (UNet, batch 8, 256x256, 2 threads) ran 1.25x faster than with
    ``nn.Dropout`` in fp32 (20.42 against 16.31 img/s) and 1.20x under bf16 autocast (17.65 against 14.71) on an
    Intel Xeon with AVX512-BF16 (``python scripts/bench_speed.py floor --task ph2_melanoma --update False --steps 24
    --plain_dropout True --out benchmarks/results/dropout_floor_ph2_melanoma_cpu_xeon.json``, one run); an earlier
    32-bit version of this mask (two elements per draw) gave 1.15x on an AVX2-only EPYC. In eval mode, with
    ``inplace``, off the CPU (CUDA's fused kernel is fast), for ``p`` of 0 or 1 and under TorchScript it is
    ``nn.Dropout`` itself, so exports, checkpoints and :func:`enable_mc_dropout` see no difference.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        cpu = input.device.type == "cpu"
        if torch.jit.is_scripting() or not (self.training and cpu and 0.0 < self.p < 1.0) or self.inplace:
            return F.dropout(input, self.p, self.training, self.inplace)
        return self._cpu_dropout(input)

    @torch.jit.unused
    def _cpu_dropout(self, input: torch.Tensor) -> torch.Tensor:
        n = input.numel()
        bits = torch.empty(((n + 3) // 4,), dtype=torch.int64).random_(-(2**63), None)
        # drop where the 16 bits (uniform over int16) fall below the threshold; keep at least one value in 2**16
        threshold = min(round(self.p * 2**16), 2**16 - 1)
        keep = bits.view(torch.int16)[:n].view(input.shape) >= threshold - 2**15
        return input * keep.to(input.dtype).mul_(1.0 / (1.0 - threshold / 2**16))


def use_fast_dropout(model: nn.Module, enable: bool = True) -> nn.Module:
    """Replace every plain ``nn.Dropout`` of ``model`` by a :class:`FastDropout` of the same ``p`` (in place), or,
    with ``enable=False``, every :class:`FastDropout` by a plain ``nn.Dropout`` (to time one against the other).

    Channel-wise (``Dropout2d``) and alpha dropout draw few samples and stay as they are. No parameters or
    buffers change, so checkpoints load either way."""
    source, target = (nn.Dropout, FastDropout) if enable else (FastDropout, nn.Dropout)
    for parent in model.modules():
        for name, child in parent.named_children():
            if type(child) is source:
                layer = target(child.p, child.inplace)
                layer.train(child.training)
                setattr(parent, name, layer)
    return model


def _interp_mode(spatial_dims: int) -> str:
    return "bilinear" if spatial_dims == 2 else "trilinear"


def _conv_norm_act(
    spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int = 3, dilation: int = 1, norm: Any = "batch"
) -> Convolution:
    """Conv (no bias) -> norm -> ReLU, "same" padding."""
    return Convolution(
        spatial_dims,
        in_channels,
        out_channels,
        kernel_size=kernel_size,
        act="relu",
        norm=norm,
        bias=False,
        dilation=dilation,
    )


def _group_norm(channels: int, max_groups: int = 32) -> tuple[str, dict[str, int]]:
    """GroupNorm with the largest group count <= ``max_groups`` that divides ``channels``."""
    groups = max(g for g in range(1, max_groups + 1) if channels % g == 0)
    return ("group", {"num_groups": groups})


# --------------------------------------------------------------------------------------------------------------------
# Encoders
# --------------------------------------------------------------------------------------------------------------------


class ResNeXtBottleneck(ResNetBottleneck):
    """ResNeXt bottleneck (Xie et al. 2017): MONAI's ``ResNetBottleneck`` with a grouped, wider 3x3 convolution.

    The forward pass is MONAI's; only ``conv1``/``conv2``/``conv3`` widths and ``groups`` differ. Parameters are
    named like torchvision's ``resnext50_32x4d`` (``layerN.M.convK``, ``bnK``, ``downsample.0/1``; its ``fc`` absent),
    so a local torchvision state dict should load with ``strict=False`` (not checked here: no torchvision).
    """

    groups = 32
    base_width = 4

    def __init__(
        self,
        in_planes: int,
        planes: int,
        spatial_dims: int = 3,
        stride: int = 1,
        downsample: nn.Module | partial | None = None,
        act: str | tuple = ("relu", {"inplace": True}),
        norm: str | tuple = "batch",
    ) -> None:
        super().__init__(in_planes, planes, spatial_dims, stride, downsample, act, norm)
        width = int(planes * self.base_width / 64) * self.groups
        conv_type = Conv[Conv.CONV, spatial_dims]
        self.conv1 = conv_type(in_planes, width, kernel_size=1, bias=False)
        self.bn1 = get_norm_layer(name=norm, spatial_dims=spatial_dims, channels=width)
        self.conv2 = conv_type(width, width, kernel_size=3, stride=stride, padding=1, groups=self.groups, bias=False)
        self.bn2 = get_norm_layer(name=norm, spatial_dims=spatial_dims, channels=width)
        self.conv3 = conv_type(width, planes * self.expansion, kernel_size=1, bias=False)


class ResNeXtEncoder(ResNet, BaseEncoder):
    """ResNeXt50 (32x4d) encoder implementing MONAI's ``BaseEncoder``, registered as ``resnext50_32x4d``.

    Chosen route: MONAI's ``ResNet`` (stem, ``_make_layer``, initialisation) with :class:`ResNeXtBottleneck`
    blocks, rather than wrapping ``SEResNext50`` (which adds squeeze-excitation, so it is not a plain ResNeXt).
    Registered into ``FLEXUNET_BACKBONE`` so that ``FlexibleUNet``, :class:`SemanticFPN` and
    :class:`DeepLabV3Plus` accept ``backbone="resnext50_32x4d"``. Five outputs at strides 2, 4, 8, 16, 32 with
    (64, 256, 512, 1024, 2048) channels; 23.0 M parameters.

    Args:
        model_name: ``"resnext50_32x4d"``.
        pretrained: must be False (weights are never downloaded here).
        spatial_dims: 2 or 3.
        in_channels: number of input channels.
    """

    backbone_names = ("resnext50_32x4d",)

    def __init__(
        self, model_name: str = "resnext50_32x4d", pretrained: bool = False, spatial_dims: int = 2, in_channels: int = 3
    ) -> None:
        if model_name not in self.backbone_names:
            raise ValueError(f"Unknown ResNeXt {model_name!r}; valid: {', '.join(self.backbone_names)}.")
        if pretrained:
            raise ValueError("No pretrained ResNeXt weights are downloaded; load a local state dict instead.")
        super().__init__(
            block=ResNeXtBottleneck,
            layers=[3, 4, 6, 3],
            block_inplanes=[64, 128, 256, 512],
            spatial_dims=spatial_dims,
            n_input_channels=in_channels,
            conv1_t_stride=2,
            shortcut_type="B",
            feed_forward=False,
            bias_downsample=False,
        )

    # same feature list as MONAI's ResNet encoders: stem (1/2), layer1 (1/4) ... layer4 (1/32)
    forward = ResNetFeatures.forward

    @classmethod
    def get_encoder_parameters(cls) -> list[dict]:
        """Initialisation parameters of each registered name."""
        return [{"model_name": n, "pretrained": False, "spatial_dims": 2, "in_channels": 3} for n in cls.backbone_names]

    @classmethod
    def num_channels_per_output(cls) -> list[tuple[int, ...]]:
        """Channels of the five feature maps."""
        return [(64, 256, 512, 1024, 2048)]

    @classmethod
    def num_outputs(cls) -> list[int]:
        """Number of feature maps."""
        return [5]

    @classmethod
    def get_encoder_names(cls) -> list[str]:
        """Registered names."""
        return list(cls.backbone_names)


FLEXUNET_BACKBONE.register_class(ResNeXtEncoder)


class ZeroPadShortcut(nn.Module):
    """Parameter-free ResNet shortcut "A" (He et al. 2016): strided subsampling, then zero channels up to ``planes``.

    MONAI's resnet18/34 hold this shortcut as a ``functools.partial`` of a bound method that concatenates
    ``out.data``: the identity path of each downsampling block carries no gradient, and the network cannot be
    scripted. This module gives the same forward values with the gradient kept, and scripts; no parameters, so
    state dicts are unchanged. :func:`fix_monai_encoders` installs it.

    Args:
        planes: output channels.
        stride: subsampling factor.
        spatial_dims: 2 or 3.
    """

    def __init__(self, planes: int, stride: int, spatial_dims: int = 2) -> None:
        super().__init__()
        self.planes = planes
        self.pool = Pool[Pool.AVG, spatial_dims](kernel_size=1, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pool(x)
        zeros = out.new_zeros([out.shape[0], self.planes - out.shape[1]] + list(out.shape[2:]))
        return torch.cat([out, zeros], dim=1)


def fix_monai_encoders(model: nn.Module) -> nn.Module:
    """Fix two quirks of MONAI's FlexibleUNet encoders in ``model``, in place; other modules are left unchanged.

    * ResNet18/34: the ``functools.partial`` shortcuts become :class:`ZeroPadShortcut` (gradient kept, scriptable).
    * EfficientNet: the classification head that the encoder's forward never uses (``_conv_head``, ``_bn1``,
      ``_fc``: 1.7 M parameters for b0) is deleted, so it neither counts nor trips DDP's unused-parameter check.

    Args:
        model: a network or encoder.

    Returns:
        ``model``.
    """
    for module in model.modules():
        shortcut = getattr(module, "downsample", None)
        if isinstance(shortcut, partial) and getattr(shortcut.func, "__name__", "") == "_downsample_basic_block":
            module.downsample = ZeroPadShortcut(**shortcut.keywords)
    for module in list(model.modules()):
        if isinstance(module, EfficientNetBNFeatures):
            for name in ("_conv_head", "_conv_head_padding", "_bn1", "_avg_pooling", "_dropout", "_fc"):
                if hasattr(module, name):
                    delattr(module, name)
    return model


def build_encoder(
    backbone: str, spatial_dims: int = 2, in_channels: int = 3, pretrained: bool = False
) -> tuple[nn.Module, tuple[int, ...]]:
    """Build an encoder from MONAI's ``FLEXUNET_BACKBONE`` registry.

    Args:
        backbone: a registered name (``resnet34``, ``efficientnet-b0``, ``resnext50_32x4d``, ...).
        spatial_dims: 2 or 3.
        in_channels: number of input channels.
        pretrained: must be False (weights are never downloaded here).

    Returns:
        The encoder (its forward returns five feature maps at strides 2, 4, 8, 16, 32) and their channel counts.
        :func:`fix_monai_encoders` has been applied to it.
    """
    if backbone not in FLEXUNET_BACKBONE.register_dict:
        raise ValueError(f"Unknown backbone {backbone!r}; valid: {', '.join(sorted(FLEXUNET_BACKBONE.register_dict))}.")
    if pretrained:
        raise ValueError("Pretrained weights are not downloaded in this project; load a local checkpoint instead.")
    entry = FLEXUNET_BACKBONE.register_dict[backbone]
    if entry["feature_number"] != 5:
        raise ValueError(f"Backbone {backbone!r} gives {entry['feature_number']} feature maps; 5 are needed.")
    params = {**entry["parameter"], "spatial_dims": spatial_dims, "in_channels": in_channels, "pretrained": False}
    return fix_monai_encoders(entry["type"](**params)), tuple(entry["feature_channel"])


def _dilate_last_stage(encoder: nn.Module, spatial_dims: int) -> None:
    """Output stride 32 -> 16 for a ResNet-family encoder, as torchvision's ``replace_stride_with_dilation``.

    MONAI's ResNet has no dilation option, so ``layer4`` is edited in place: its first block loses its stride,
    the 3x3 convolutions of the later blocks get dilation 2 (padding 2). Parameters are unchanged.
    """
    layer4 = getattr(encoder, "layer4", None)
    if not isinstance(layer4, nn.Sequential):
        raise ValueError("output_stride=16 needs a ResNet-family backbone (resnet*, resnext50_32x4d); use 32.")
    conv_type = Conv[Conv.CONV, spatial_dims]
    for i, block in enumerate(layer4):
        for m in block.modules():
            if isinstance(m, conv_type) and i == 0:
                m.stride = (1,) * spatial_dims
            elif isinstance(m, conv_type) and m.kernel_size[0] > 1:
                m.dilation, m.padding = (2,) * spatial_dims, (2,) * spatial_dims
        if isinstance(block.downsample, ZeroPadShortcut):  # shortcut "A" (resnet18/34)
            block.downsample = ZeroPadShortcut(block.downsample.planes, 1, spatial_dims)


# --------------------------------------------------------------------------------------------------------------------
# Networks written here (MONAI has no equivalent)
# --------------------------------------------------------------------------------------------------------------------


class MaxUnpool(nn.Module):
    """Inverse of 2x max pooling at the kept indices: the result of ``nn.MaxUnpool2d(2, 2)`` / ``MaxUnpool3d``.

    Written as a ``scatter`` because torch's own unpooling neither traces (its output-size check fails on traced
    sizes in torch 2.13) nor exports to ONNX (no symbolic); this one does both. ``indices`` are per-channel flat
    indices into the unpooled map, as returned by ``MaxPool*d(return_indices=True)``.
    """

    def forward(self, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Scatter ``x`` into a zero map twice its spatial size at ``indices``."""
        batch, channels = x.shape[0], x.shape[1]
        out_shape = [2 * s for s in x.shape[2:]]
        numel = 1
        for s in out_shape:
            numel *= s
        flat = x.new_zeros([batch, channels, numel]).scatter(2, indices.flatten(2), x.flatten(2))
        return flat.view([batch, channels] + out_shape)


class SegNet(nn.Module):
    """Compact SegNet (Badrinarayanan et al. 2017) with Bayesian-SegNet dropout (Kendall et al. 2017).

    VGG-style encoder stages (conv-BN-ReLU x n, then 2x max pooling that keeps its indices) and a mirrored decoder
    that upsamples at those indices with :class:`MaxUnpool` (``nn.MaxUnpool2d``'s result, but traceable), then
    conv-BN-ReLU x n; a 1x1 classifier. No skip concatenation: only the pooling indices travel. Widths are
    configurable (the original uses 64..512).

    Dropout: "central" placement of Bayesian SegNet, after the three deepest encoder stages (after pooling) and
    the three deepest decoder stages. H and W must be multiples of 2 ** len(features) (32 by default).

    Args:
        spatial_dims: 2 or 3.
        in_channels: number of input channels.
        out_channels: number of output channels (classes).
        features: channels of each encoder stage.
        convs_per_stage: convolutions per stage (VGG16: 2, 2, 3, 3, 3).
        dropout: dropout probability.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 2,
        features: Sequence[int] = (16, 32, 64, 128, 256),
        convs_per_stage: Sequence[int] = (2, 2, 3, 3, 3),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if len(features) != len(convs_per_stage):
            raise ValueError(f"features {features} and convs_per_stage {convs_per_stage} must have the same length.")
        self.pool = Pool[Pool.MAX, spatial_dims](kernel_size=2, stride=2, return_indices=True)
        self.unpool = MaxUnpool()
        self.dropout = Dropout[Dropout.DROPOUT, spatial_dims](dropout)
        self.num_dropout_stages = min(3, len(features))

        def stage(channels: Sequence[int]) -> nn.Sequential:
            return nn.Sequential(*(_conv_norm_act(spatial_dims, a, b) for a, b in pairwise(channels)))

        chans = [in_channels, *features]
        self.encoder = nn.ModuleList(stage([chans[i]] + [chans[i + 1]] * n) for i, n in enumerate(convs_per_stage))
        # deepest first; the decoder stage of level i: n convs at features[i], the last one maps to features[i - 1]
        self.decoder = nn.ModuleList(
            stage([features[i]] * n + [features[max(i - 1, 0)]]) for i, n in reversed(list(enumerate(convs_per_stage)))
        )
        self.head = Conv[Conv.CONV, spatial_dims](features[0], out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the same spatial size as ``x``."""
        first_dropout = len(self.encoder) - self.num_dropout_stages
        indices: list[torch.Tensor] = []
        for i, enc in enumerate(self.encoder):
            x, idx = self.pool(enc(x))
            indices.append(idx)
            if i >= first_dropout:
                x = self.dropout(x)
        for j, dec in enumerate(self.decoder):
            i = len(indices) - 1 - j  # level of this decoder stage
            x = dec(self.unpool(x, indices[i]))
            if i >= first_dropout:
                x = self.dropout(x)
        return self.head(x)


class _PreActResBlock(nn.Module):
    """Pre-activation residual block: [BN-ReLU]-Conv3x3(stride)-BN-ReLU-Conv3x3 + Conv1x1(stride)-BN shortcut."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, stride: int = 1, stem: bool = False):
        super().__init__()
        conv, norm = Conv[Conv.CONV, spatial_dims], Norm[Norm.BATCH, spatial_dims]
        pre = [] if stem else [norm(in_channels), nn.ReLU(inplace=True)]
        self.residual = nn.Sequential(
            *pre,
            conv(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False),
            norm(out_channels),
            nn.ReLU(inplace=True),
            conv(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
        )
        self.shortcut = nn.Sequential(
            conv(in_channels, out_channels, kernel_size=1, stride=stride, bias=False), norm(out_channels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.residual(x) + self.shortcut(x)


class ResUNet(nn.Module):
    """ResUNet of Zhang, Liu & Wang 2018 ("Road extraction by deep residual U-Net"), built from MONAI factories.

    Not MONAI's ``UNet`` with residual units (that is the ``unet`` entry, post-activation, transposed-conv
    upsampling): here every block is a pre-activation residual block with a 1x1 projection shortcut, the encoder
    downsamples with stride-2 convolutions, the decoder upsamples bilinearly and concatenates the skip. Zhang et al.
    use (64, 128, 256, 512); the default is narrower for small data and CPUs.

    Dropout: on the bridge output and on the output of every decoder block except the full-resolution one.
    H and W must be multiples of 2 ** (len(features) - 1) (16 by default).

    Args:
        spatial_dims: 2 or 3.
        in_channels: number of input channels.
        out_channels: number of output channels (classes).
        features: channels per resolution level; the last one is the bridge.
        dropout: dropout probability.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 2,
        features: Sequence[int] = (16, 32, 64, 128, 256),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.interp_mode = _interp_mode(spatial_dims)
        self.encoder = nn.ModuleList([_PreActResBlock(spatial_dims, in_channels, features[0], stem=True)])
        self.encoder.extend(_PreActResBlock(spatial_dims, a, b, stride=2) for a, b in pairwise(features))
        self.decoder = nn.ModuleList(
            _PreActResBlock(spatial_dims, features[i + 1] + features[i], features[i])
            for i in range(len(features) - 2, -1, -1)
        )
        self.dropout = Dropout[Dropout.DROPOUT, spatial_dims](dropout)
        self.head = nn.Sequential(
            Norm[Norm.BATCH, spatial_dims](features[0]),
            nn.ReLU(inplace=True),
            Conv[Conv.CONV, spatial_dims](features[0], out_channels, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the same spatial size as ``x``."""
        skips: list[torch.Tensor] = []
        for enc in self.encoder:
            x = enc(x)
            skips.append(x)
        x = self.dropout(skips.pop())
        last = len(self.decoder) - 1
        for i, dec in enumerate(self.decoder):
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[2:], mode=self.interp_mode, align_corners=False)
            x = dec(torch.cat([skip, x], dim=1))
            if i < last:
                x = self.dropout(x)
        return self.head(x)


class _SemanticBranch(nn.Sequential):
    """Panoptic-FPN semantic branch: (conv3x3-GN-ReLU, 2x bilinear upsampling) x n, ending at 1/4 resolution."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, num_upsamples: int) -> None:
        layers: list[nn.Module] = []
        for i in range(max(num_upsamples, 1)):
            c_in = in_channels if i == 0 else out_channels
            layers.append(_conv_norm_act(spatial_dims, c_in, out_channels, norm=_group_norm(out_channels)))
            if num_upsamples > 0:
                layers.append(nn.Upsample(scale_factor=2, mode=_interp_mode(spatial_dims), align_corners=False))
        super().__init__(*layers)


class SemanticFPN(nn.Module):
    """Semantic FPN (Kirillov et al. 2019, "Panoptic Feature Pyramid Networks", semantic segmentation branch).

    Encoder: any 5-output backbone of MONAI's ``FLEXUNET_BACKBONE`` (default ``resnet34``, never pretrained here);
    its 1/4..1/32 outputs (C2..C5) feed MONAI's ``FeaturePyramidNetwork`` (lateral 1x1 convs, nearest top-down
    pathway, 3x3 smoothing), giving P2..P5 with ``pyramid_channels``. Each P_k goes through its own branch of
    conv3x3-GN-ReLU + 2x bilinear upsampling stages down to 1/4 (one conv stage for P2), the four maps are summed,
    then dropout, a 1x1 classifier and bilinear upsampling (x4) to the input size.

    Dropout: once, on the summed 1/4-resolution features before the classifier. H and W: multiples of 32.

    Args:
        spatial_dims: 2 or 3.
        in_channels: number of input channels.
        out_channels: number of output channels (classes).
        backbone: encoder name in ``FLEXUNET_BACKBONE``.
        pyramid_channels: FPN width (256 in the paper).
        segmentation_channels: semantic-branch width (128 in the paper).
        dropout: dropout probability.
        pretrained: must be False.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 2,
        backbone: str = "resnet34",
        pyramid_channels: int = 256,
        segmentation_channels: int = 128,
        dropout: float = 0.0,
        pretrained: bool = False,
    ) -> None:
        super().__init__()
        self.encoder, encoder_channels = build_encoder(backbone, spatial_dims, in_channels, pretrained)
        self.fpn = FeaturePyramidNetwork(spatial_dims, list(encoder_channels[1:]), pyramid_channels)
        self.branches = nn.ModuleList(
            _SemanticBranch(spatial_dims, pyramid_channels, segmentation_channels, num_upsamples=k) for k in range(4)
        )
        self.dropout = Dropout[Dropout.DROPOUT, spatial_dims](dropout)
        self.classifier = Conv[Conv.CONV, spatial_dims](segmentation_channels, out_channels, kernel_size=1)
        self.interp_mode = _interp_mode(spatial_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the same spatial size as ``x``."""
        features = self.encoder(x)
        pyramid = list(self.fpn({"c2": features[1], "c3": features[2], "c4": features[3], "c5": features[4]}).values())
        out = torch.stack([branch(pyramid[k]) for k, branch in enumerate(self.branches)]).sum(dim=0)  # P2..P5
        out = self.classifier(self.dropout(out))
        return F.interpolate(out, size=x.shape[2:], mode=self.interp_mode, align_corners=False)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling of DeepLabV3 (Chen et al. 2017).

    Branches: 1x1 conv, one 3x3 atrous conv per rate, image pooling (global average, 1x1 conv, ReLU; no norm, so
    batch 1 trains), each conv-BN-ReLU, concatenated and projected by a 1x1 conv-BN-ReLU, then dropout.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: channels of every branch and of the output.
        rates: dilation rates of the 3x3 branches.
        dropout: dropout probability after the projection.
    """

    def __init__(
        self, spatial_dims: int, in_channels: int, out_channels: int, rates: Sequence[int], dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.convs = nn.ModuleList([_conv_norm_act(spatial_dims, in_channels, out_channels, kernel_size=1)])
        self.convs.extend(_conv_norm_act(spatial_dims, in_channels, out_channels, dilation=r) for r in rates)
        self.image_pool = nn.Sequential(
            Pool[Pool.ADAPTIVEAVG, spatial_dims](1),
            Conv[Conv.CONV, spatial_dims](in_channels, out_channels, kernel_size=1),
            nn.ReLU(inplace=True),
        )
        self.project = _conv_norm_act(spatial_dims, out_channels * (len(rates) + 2), out_channels, kernel_size=1)
        self.dropout = Dropout[Dropout.DROPOUT, spatial_dims](dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [conv(x) for conv in self.convs]
        branches.append(self.image_pool(x).expand_as(branches[0]))
        return self.dropout(self.project(torch.cat(branches, dim=1)))


class DeepLabV3Plus(nn.Module):
    """DeepLabV3 (ASPP) with the light DeepLabV3+ decoder (Chen et al. 2018) on a MONAI encoder.

    Encoder: a ``FLEXUNET_BACKBONE`` backbone (default ``resnet50``, never pretrained here). MONAI's ResNet has no
    dilation option; with ``output_stride=16`` (default) its ``layer4`` is converted in place (stride 1, dilation 2,
    as torchvision does), which needs a ResNet-family backbone; ``output_stride=32`` keeps the encoder as is and
    works with any backbone (cheaper, coarser). ASPP runs on the last feature map; the decoder upsamples it to 1/4,
    concatenates the 1/4 encoder features reduced to ``low_level_channels``, applies two conv3x3-BN-ReLU, dropout,
    a 1x1 classifier and bilinear upsampling to the input size.

    Dropout: after the ASPP projection and before the classifier. H and W: multiples of 32. At 256x256 and output
    stride 16 the ASPP map is 16x16, where rate 18 mostly samples padding; smaller ``atrous_rates`` may suit.

    Args:
        spatial_dims: 2 or 3.
        in_channels: number of input channels.
        out_channels: number of output channels (classes).
        backbone: encoder name in ``FLEXUNET_BACKBONE``.
        output_stride: 16 or 32.
        atrous_rates: ASPP rates; default (6, 12, 18) at output stride 16 and (3, 6, 9) at 32.
        aspp_channels: ASPP and decoder width (256 in the paper).
        low_level_channels: width of the reduced 1/4 skip (48 in the paper).
        dropout: dropout probability.
        pretrained: must be False.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 2,
        backbone: str = "resnet50",
        output_stride: int = 16,
        atrous_rates: Sequence[int] | None = None,
        aspp_channels: int = 256,
        low_level_channels: int = 48,
        dropout: float = 0.0,
        pretrained: bool = False,
    ) -> None:
        super().__init__()
        if output_stride not in (16, 32):
            raise ValueError(f"output_stride must be 16 or 32, got {output_stride}.")
        self.encoder, encoder_channels = build_encoder(backbone, spatial_dims, in_channels, pretrained)
        if output_stride == 16:
            _dilate_last_stage(self.encoder, spatial_dims)
        rates = tuple(atrous_rates) if atrous_rates is not None else tuple(r * 16 // output_stride for r in (6, 12, 18))
        self.aspp = ASPP(spatial_dims, encoder_channels[-1], aspp_channels, rates, dropout)
        self.low_level = _conv_norm_act(spatial_dims, encoder_channels[1], low_level_channels, kernel_size=1)
        self.decoder = nn.Sequential(
            _conv_norm_act(spatial_dims, aspp_channels + low_level_channels, aspp_channels),
            _conv_norm_act(spatial_dims, aspp_channels, aspp_channels),
            Dropout[Dropout.DROPOUT, spatial_dims](dropout),
            Conv[Conv.CONV, spatial_dims](aspp_channels, out_channels, kernel_size=1),
        )
        self.interp_mode = _interp_mode(spatial_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the same spatial size as ``x``."""
        features = self.encoder(x)
        low = self.low_level(features[1])
        high = F.interpolate(self.aspp(features[-1]), size=low.shape[2:], mode=self.interp_mode, align_corners=False)
        out = self.decoder(torch.cat([low, high], dim=1))
        return F.interpolate(out, size=x.shape[2:], mode=self.interp_mode, align_corners=False)


# --------------------------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------------------------


def _flexible_unet(**kwargs: Any) -> nn.Module:
    """MONAI ``FlexibleUNet`` with :func:`fix_monai_encoders` applied."""
    return fix_monai_encoders(FlexibleUNet(**kwargs))


def _segresnet(
    spatial_dims: int, in_channels: int, out_channels: int, dropout: float = 0.0, **kwargs: Any
) -> nn.Module:
    """MONAI ``SegResNet`` taking ``dropout`` (its ``dropout_prob``; no dropout layer at all when 0)."""
    return SegResNet(
        spatial_dims, in_channels=in_channels, out_channels=out_channels, dropout_prob=dropout or None, **kwargs
    )


_UNET_CHANNELS = (16, 32, 64, 128, 256)
_UNET_STRIDES = (2, 2, 2, 2)

#: name -> constructor taking ``spatial_dims``, ``in_channels``, ``out_channels``, ``dropout`` and extra keywords;
#: the bound defaults are the parameters of each entry (override any of them through ``build_network(**kwargs)``).
NETWORKS: dict[str, Callable[..., nn.Module]] = {
    "unet": partial(UNet, channels=_UNET_CHANNELS, strides=_UNET_STRIDES, num_res_units=2),
    "resunet": ResUNet,
    "segnet": SegNet,
    "attention_unet": partial(AttentionUnet, channels=_UNET_CHANNELS, strides=_UNET_STRIDES),
    "segresnet": partial(_segresnet, init_filters=16),
    "basic_unet": partial(BasicUNet, features=(32, 32, 64, 128, 256, 32)),
    "flexible_unet_resnet34": partial(_flexible_unet, backbone="resnet34", pretrained=False),
    "resnext50_unet": partial(_flexible_unet, backbone="resnext50_32x4d", pretrained=False),
    "fpn": partial(SemanticFPN, backbone="resnet34"),
    "deeplabv3": partial(DeepLabV3Plus, backbone="resnet50", output_stride=16),
}


class MeanEnsembleNet(nn.Module):
    """Several networks as one: the forward returns ``log(mean_k softmax(member_k(x)))``.

    These are logits whose softmax is exactly the members' mean class probability, so every single-network
    workflow (``evaluate``, ``inference``, ONNX export, the label app) runs a merged ensemble unchanged: its
    ``Activationsd(softmax=True)`` gives the mean probabilities and the argmax the mean-ensemble mask. The bundles
    build one with ``ensemble_size > 1``; ``scripts.ensemble.merge_members`` writes its checkpoint from fold or seed
    models.

    Args:
        members: the member networks (any architectures with the same output classes).
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("MeanEnsembleNet needs at least one member network.")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs: list[torch.Tensor] = []
        for member in self.members:  # a loop, not a comprehension: TorchScript (ckpt_export) scripts it
            probs.append(torch.softmax(member(x).float(), dim=1))
        return torch.log(torch.stack(probs).mean(0).clamp_min(1e-30))  # float32 logits; no log(0)


class PresenceClassifier(nn.Module):
    """Image-level "is any foreground present" classifier: a small strided CNN, mean+max pooling, one logit.

    Five stages of (3x3 stride-2 conv, 3x3 conv), each conv -> batch norm -> ReLU, with ``channels`` widths: 0.6 M
    parameters and 0.23 GMAC at 256x256 (the ``unet`` entry: 1.6 M, 0.76 GMAC). Its own weights, not the segmentation
    network's features, which are trained to see texture at a pixel rather than the image as a whole. Measured on
    C-TRUS it did not learn to tell empty scans from the others (see the TRUS bundle's model card).

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        channels: widths of the stages (each halves the resolution).
        dropout: dropout probability on the pooled features (sampled in train mode and by MC dropout).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        channels: Sequence[int] = (16, 32, 64, 128, 128),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_channels
        for out in channels:
            layers.append(Convolution(spatial_dims, width, out, strides=2, kernel_size=3, norm="batch", act="relu"))
            layers.append(Convolution(spatial_dims, out, out, kernel_size=3, norm="batch", act="relu"))
            width = out
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(2 * width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Presence logits ``(B, 1)``."""
        f = self.features(x).flatten(2)
        return self.fc(self.dropout(torch.cat([f.mean(2), f.amax(2)], dim=1)))


class PresenceGatedNet(nn.Module):
    """A segmentation network plus an image-level presence head that empties the masks of images it calls empty.

    For data where many images contain no structure (a third of the C-TRUS masks are empty): a per-pixel network
    keeps finding structure-like texture in them, and no threshold on its own output separates them (measured in
    ``benchmarks/results/empty_cases_trus_prostate.md``). The head (:class:`PresenceClassifier`) is trained with the
    segmentation (``presence_head`` / ``presence_weight`` in ``train.json``) by :class:`scripts.losses.PresenceLoss`.

    * train mode: ``(B, C + 1, *spatial)``: the C segmentation logits and, as one more channel, the presence logit
      (constant over the image). :class:`scripts.losses.PresenceLoss` splits them and
      :class:`scripts.transforms.DropPresenced` drops the extra channel before the training metrics.
    * eval mode: ``(B, C, *spatial)`` logits; where the presence probability is below ``threshold`` every
      foreground logit is lowered to 10 below the background logit, so the mask is empty and the foreground
      probability under 5e-5. Every inference path (evaluate, inference, ONNX, TorchScript, the label app) sees a
      plain segmentation network.

    Checkpoint keys are the segmentation network's prefixed ``net.`` plus the head's ``head.``.

    Args:
        net: the segmentation network (``C >= 2`` output channels, channel 0 the background).
        head: the presence classifier.
        threshold: presence probability under which the mask is emptied (eval mode).
    """

    def __init__(self, net: nn.Module, head: nn.Module, threshold: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"presence_threshold must be a probability in [0, 1], got {threshold}.")
        self.net = net
        self.head = head
        self.threshold = float(threshold)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x)
        presence = self.head(x).to(logits.dtype)  # (B, 1)
        view = [presence.shape[0], 1] + [1] * (logits.dim() - 2)
        if self.training:
            return torch.cat([logits, presence.view(view).expand_as(logits[:, :1])], dim=1)
        absent = (torch.sigmoid(presence.float()) < self.threshold).view(view)
        background = logits[:, :1]
        foreground = torch.where(absent, torch.minimum(logits[:, 1:], background - 10.0), logits[:, 1:])
        return torch.cat([background, foreground], dim=1)


def build_network(
    name: str,
    in_channels: int,
    out_channels: int,
    spatial_dims: int = 2,
    dropout: float = 0.0,
    ensemble_size: int = 1,
    presence_head: bool = False,
    presence_threshold: float = 0.5,
    network_kwargs: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered segmentation network.

    Args:
        name: a key of :data:`NETWORKS`.
        in_channels: number of input channels (1 for grey, 3 for RGB).
        out_channels: number of output channels (classes, background included).
        spatial_dims: 2 (3 works for every entry but is not what the bundles use).
        dropout: dropout probability, active in train mode and under :func:`enable_mc_dropout`; every plain
            ``nn.Dropout`` of the network is a :class:`FastDropout` (same layer, cheaper CPU mask).
        ensemble_size: above 1, a :class:`MeanEnsembleNet` of that many copies of the network (the shape of a
            merged fold or seed ensemble's checkpoint).
        presence_head: wrap each network in a :class:`PresenceGatedNet` (an image-level "structure present" head
            that empties the masks of images it calls empty; for sets with many empty images).
        presence_threshold: the head's probability under which a mask is emptied.
        network_kwargs: overrides of the entry's parameters (``channels``, ``strides``, ``num_res_units``,
            ``features``, ``backbone``, ...): the bundles' ``network_kwargs`` key, e.g. ``{"channels": [16, 32, 64,
            128, 256, 512], "strides": [2, 2, 2, 2, 2]}`` for a six-level ``unet``.
        kwargs: more such overrides, given one by one.

    Returns:
        The network; its forward maps ``(B, in_channels, H, W)`` to logits ``(B, out_channels, H, W)``.

    Raises:
        ValueError: unknown ``name``, ``ensemble_size < 1``, ``pretrained=True`` (weights are never downloaded), or
            ``presence_head`` with fewer than 2 output channels.
    """
    if name not in NETWORKS:
        raise ValueError(f"Unknown network {name!r}; valid names: {', '.join(NETWORKS)}.")
    kwargs = {**dict(network_kwargs or {}), **kwargs}
    if kwargs.get("pretrained"):
        raise ValueError("pretrained=True is not supported (nothing is downloaded); load a local checkpoint instead.")
    if int(ensemble_size) < 1:
        raise ValueError(f"ensemble_size must be 1 (one network) or more (a merged ensemble); got {ensemble_size}.")

    if presence_head and int(out_channels) < 2:
        raise ValueError(f"presence_head needs a background channel: out_channels (num_classes) is {out_channels}.")

    def one() -> nn.Module:
        try:
            net = NETWORKS[name](
                spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, dropout=dropout, **kwargs
            )
        except TypeError as err:  # a key the entry does not take: say which keys to fix
            raise ValueError(
                f"network {name!r} does not take the parameters {sorted(kwargs)} (network_kwargs): {err}. "
                "Use the parameter names of the entry's constructor (see scripts/networks.py)."
            ) from err
        if not presence_head:
            return net
        head = PresenceClassifier(spatial_dims, in_channels, dropout=dropout)
        return PresenceGatedNet(net, head, presence_threshold)

    net = one() if int(ensemble_size) == 1 else MeanEnsembleNet([one() for _ in range(int(ensemble_size))])
    return use_fast_dropout(net)


def has_dropout(model: nn.Module) -> bool:
    """True when ``model`` has a dropout layer with a non-zero probability (needed for MC dropout)."""
    return any(isinstance(m, _DROPOUT_TYPES) and m.p > 0 for m in model.modules())


def samples_dropout(model: Any) -> bool:
    """True when ``model`` (a module) has a dropout layer with ``p > 0`` in training mode, as under
    :func:`enable_mc_dropout`: each forward pass is then a sample, which an exported (ONNX) model cannot give."""
    return isinstance(model, nn.Module) and any(
        isinstance(m, _DROPOUT_TYPES) and m.training and m.p > 0 for m in model.modules()
    )


def enable_mc_dropout(model: nn.Module) -> nn.Module:
    """Put ``model`` in eval mode except its dropout layers (Monte-Carlo dropout, Gal & Ghahramani 2016).

    Normalisation layers then use their running statistics while dropout keeps sampling, so repeated forward
    passes give the samples that MONAI Label's epistemic scoring aggregates.

    Args:
        model: the network (modified in place).

    Returns:
        ``model``.
    """
    model.eval()
    for module in model.modules():
        if isinstance(module, _DROPOUT_TYPES):
            module.train()
    return model


def load_weights(model: nn.Module, path: str | None, device: str | torch.device = "cpu") -> list[str]:
    """Initialise ``model`` from a local checkpoint before training (``init_weights`` in ``train.json``).

    Accepts what the bundles save (``{"model": state_dict}`` from MONAI's ``CheckpointSaver``) or a bare
    ``state_dict``. Tensors whose name and shape match are copied; the others (e.g. a head trained for a different
    number of classes or input channels) keep their fresh initialisation and are listed in the log and the return
    value. A plain network's checkpoint loads into the same network with a presence head (its ``net.`` keys) and
    the other way round. Nothing is downloaded.

    Args:
        model: the bundle's network (modified in place).
        path: checkpoint file; ``None`` or ``""`` leaves the model as it is.
        device: where the checkpoint's tensors are mapped.

    Returns:
        The names of the model's tensors that were not loaded.
    """
    if not path:
        return []
    import logging
    import os

    if not os.path.isfile(path):
        raise FileNotFoundError(f"init_weights={path!r} does not exist; give a model.pt saved by a bundle or null.")
    state = torch.load(path, map_location=device, weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    own = model.state_dict()
    loaded = {}
    for key, value in state.items():
        # a plain network's checkpoint into a PresenceGatedNet (keys "net.*") and back
        name = next((k for k in (key, f"net.{key}", key.removeprefix("net.")) if k in own), None)
        if name is not None and own[name].shape == value.shape:
            loaded[name] = value
    if not loaded:
        raise ValueError(
            f"init_weights={path!r} has no tensor matching this network ({type(model).__name__}): "
            "was it trained with another --network?"
        )
    model.load_state_dict(loaded, strict=False)
    skipped = sorted(set(own) - set(loaded))
    logging.getLogger(__name__).info(
        "init_weights: loaded %d of %d tensors from %s%s",
        len(loaded),
        len(own),
        path,
        f"; kept fresh: {', '.join(skipped)}" if skipped else "",
    )
    return skipped
