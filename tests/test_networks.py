"""Tests of the shared network registry ``bundles/_shared/scripts/networks.py``."""

from __future__ import annotations

import copy
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import verify_net_in_out
from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE
from monai.networks.nets.resnet import ResNetFeatures
from monai.networks.utils import eval_mode, train_mode
from torch import nn

SHARED_DIR = Path(__file__).resolve().parents[1] / "bundles" / "_shared"
if str(SHARED_DIR) not in sys.path:
    sys.path.insert(0, str(SHARED_DIR))

from scripts.networks import (  # noqa: E402
    NETWORKS,
    FastDropout,
    MaxUnpool,
    PresenceGatedNet,
    ResNeXtEncoder,
    ZeroPadShortcut,
    build_encoder,
    build_network,
    enable_mc_dropout,
    fix_monai_encoders,
    load_weights,
    use_fast_dropout,
)

NAMES = [
    "unet",
    "resunet",
    "segnet",
    "attention_unet",
    "segresnet",
    "basic_unet",
    "flexible_unet_resnet34",
    "resnext50_unet",
    "fpn",
    "deeplabv3",
]
# narrower variants (same structure) for the slower checks: export, dropout sampling
SMALL: dict[str, dict] = {
    "unet": {"channels": (4, 8, 16, 32, 64)},
    "resunet": {"features": (4, 8, 16, 32, 64)},
    "segnet": {"features": (4, 8, 16, 32, 64)},
    "attention_unet": {"channels": (4, 8, 16, 32, 64)},
    "segresnet": {"init_filters": 8},
    "basic_unet": {"features": (8, 8, 16, 32, 64, 8)},
    "flexible_unet_resnet34": {"decoder_channels": (32, 16, 16, 8, 8)},
    "resnext50_unet": {"decoder_channels": (32, 16, 16, 8, 8)},
    "fpn": {"pyramid_channels": 32, "segmentation_channels": 16},
    # resnet34: a random-init ResNet50 drifts ~2e-4 from its own float64 result (fp32 rounding through 16
    # un-normalised bottleneck sums), above the 1e-4 export tolerance; the bottleneck path is exported by resnext50_unet
    "deeplabv3": {"aspp_channels": 32, "low_level_channels": 8, "backbone": "resnet34"},
}
H, W = 64, 96  # non-square, multiples of 32


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: these inputs are tiny, and on a shared CPU two threads waiting for each other are slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _calibrate(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Set batch-norm running statistics from one batch, then eval mode.

    With fresh statistics (mean 0, var 1) deep plain-conv networks output an almost constant map in eval mode,
    which would make an export parity check vacuous.
    """
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = 1.0
    with train_mode(model), torch.no_grad():
        model(x)
    return model.eval()


def test_registry_names():
    assert list(NETWORKS) == NAMES


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="Unknown network 'vnet'") as err:
        build_network("vnet", 1, 2)
    assert all(name in str(err.value) for name in NAMES)


def test_pretrained_is_refused():
    with pytest.raises(ValueError, match="local checkpoint"):
        build_network("flexible_unet_resnet34", 3, 2, pretrained=True)


def test_kwargs_override_entry_defaults():
    net = build_network("unet", 1, 2, channels=(4, 8, 16), strides=(2, 2))
    assert net(torch.zeros(1, 1, 32, 32)).shape == (1, 2, 32, 32)
    assert build_network("fpn", 1, 2, backbone="resnet18").encoder.layer1[0].conv1.in_channels == 64


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("name", NAMES)
def test_shape_and_backward(name, in_channels):
    torch.manual_seed(0)
    out_channels = 4 - in_channels  # 3 for grey, 1 for RGB
    net = build_network(name, in_channels, out_channels, **(SMALL[name] if in_channels == 1 else {}))  # RGB: defaults
    x = torch.randn(2, in_channels, H, W)
    with eval_mode(net):
        assert net(x).shape == (2, out_channels, H, W)
    net.train()
    y = net(x)
    assert y.shape == (2, out_channels, H, W)
    (y**2).mean().backward()
    grads = {n: p.grad for n, p in net.named_parameters()}
    missing = [n for n, g in grads.items() if g is None]
    assert not missing, f"no gradient for {missing[:5]}"
    assert all(torch.isfinite(g).all() for g in grads.values())


@pytest.mark.parametrize("name", NAMES)
def test_verify_net_in_out_bundle_contract(name, tmp_path):
    """The check ``python -m monai.bundle verify_net_in_out`` runs on a bundle, with ``network_def`` built by name."""
    io_format = {"type": "image", "spatial_shape": ["32*n", "32*n"], "dtype": "float32", "is_patch_data": False}
    meta = {
        "network_data_format": {
            "inputs": {"image": {**io_format, "format": "magnitude", "num_channels": 3, "value_range": [0, 1]}},
            "outputs": {
                "pred": {
                    **io_format,
                    "format": "segmentation",
                    "num_channels": 2,
                    "value_range": [0, 1],
                    "channel_def": {"0": "background", "1": "lesion"},
                }  # fmt: skip
            },
        }
    }
    config = {
        "network_def": {
            "_target_": "scripts.networks.build_network", "name": name, "in_channels": 3, "out_channels": 2,
            **SMALL[name],
        }
    }  # fmt: skip
    (tmp_path / "metadata.json").write_text(json.dumps(meta))
    (tmp_path / "inference.json").write_text(json.dumps(config))
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(tmp_path / "metadata.json"),
        config_file=str(tmp_path / "inference.json"),
        device="cpu",
        n=2,
    )


@pytest.mark.parametrize("name", NAMES)
def test_dropout_sampling(name):
    # seeded: at random init the last ReLU of this tiny SegNet (4 channels) is dead for about one seed in twenty,
    # and its output is then the classifier's bias whatever the input or the dropout (seen with seeds 42 and 43)
    torch.manual_seed(0)
    net = build_network(name, 1, 2, dropout=0.5, **SMALL[name])
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        net.train()
        assert not torch.allclose(net(x), net(x)), "dropout inactive in train mode"
        net.eval()
        assert torch.equal(net(x), net(x))
        enable_mc_dropout(net)
        assert not torch.allclose(net(x), net(x)), "enable_mc_dropout did not activate dropout"
    assert not any(m.training for m in net.modules() if isinstance(m, nn.modules.batchnorm._NormBase))
    assert any(m.training for m in net.modules())


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_fast_dropout_keeps_each_element_with_probability_one_minus_p(p):
    """Keep fraction, scale, independence of neighbours, gradient and seeding, as ``nn.Dropout``."""
    layer = FastDropout(p).train()
    x = torch.ones(399, 1001, requires_grad=True)  # 399399 = 4k + 3 elements: the last int64 is partly used
    torch.manual_seed(0)
    y = layer(x)
    kept = y.detach() > 0
    n = kept.numel()
    # binomial: 5 standard deviations
    assert abs(kept.float().mean().item() - (1 - p)) < 5 * (p * (1 - p) / n) ** 0.5
    # scaled by the inverse of the exact keep probability, 1 - round(p * 2**16) / 2**16 (within 2**-17 of 1 - p)
    assert abs(round(p * 2**16) / 2**16 - p) <= 2**-17
    scale = 1 / (1 - round(p * 2**16) / 2**16)
    assert torch.allclose(y.detach()[kept], torch.full_like(y.detach()[kept], scale))
    assert torch.equal(y.detach()[~kept], torch.zeros_like(y.detach()[~kept]))
    # the four 16-bit lanes of each 64-bit draw are independent: lanes kept together at (1 - p)^2
    lanes = kept.flatten()[: n - n % 4].float().view(-1, 4)
    for a, b in [(0, 1), (0, 2), (0, 3), (1, 2), (2, 3)]:
        both = (lanes[:, a] * lanes[:, b]).mean().item()
        assert abs(both - (1 - p) ** 2) < 5 * ((1 - p) ** 2 / (n / 4)) ** 0.5, (a, b)
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # d(x * mask * s)/dx = mask * s, and x is ones
    torch.manual_seed(0)
    assert torch.equal(layer(x.detach()), y.detach()), "not reproducible from the seeded generator"


def test_fast_dropout_is_nn_dropout_where_it_does_not_sample():
    x = torch.randn(3, 4, 8, 8)
    assert torch.equal(FastDropout(0.3).eval()(x), x)
    assert torch.equal(FastDropout(0.0).train()(x), x)
    assert torch.equal(FastDropout(1.0).train()(x), torch.zeros_like(x))
    assert FastDropout(1 - 2**-20).train()(torch.ones(64, 1024)).max() <= 2**16  # no division by zero near p = 1
    net = build_network("unet", 1, 2, dropout=0.2, **SMALL["unet"])
    layers = [m for m in net.modules() if isinstance(m, nn.Dropout)]
    assert layers and all(type(m) is FastDropout and m.p == 0.2 for m in layers)
    plain = build_network("unet", 1, 2, dropout=0.2, **SMALL["unet"])
    plain.load_state_dict(net.state_dict())  # no parameters or buffers added
    torch.jit.script(net.eval())  # what ckpt_export runs
    use_fast_dropout(plain, enable=False)  # what bench_speed floor --plain_dropout times against
    assert [(type(m), m.p) for m in plain.modules() if isinstance(m, nn.Dropout)] == [(nn.Dropout, 0.2)] * len(layers)


@pytest.mark.parametrize("name", NAMES)
def test_no_dropout_builds_no_active_dropout(name):
    net = build_network(name, 1, 2, dropout=0.0, **SMALL[name])
    assert all(m.p == 0 for m in net.modules() if isinstance(m, nn.modules.dropout._DropoutNd))


@pytest.mark.parametrize("name", NAMES)
def test_torchscript(name):
    """``torch.jit.script`` (what ``monai.bundle ckpt_export`` uses); tracing is covered by the ONNX export."""
    net = _calibrate(build_network(name, 3, 2, **SMALL[name]), torch.randn(2, 3, H, W))
    x = torch.randn(1, 3, H, W)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.script(net)(x), net(x))


@pytest.mark.parametrize("name", NAMES)
def test_onnx_export_parity(name):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    net = _calibrate(build_network(name, 3, 2, **SMALL[name]), torch.randn(2, 3, H, W))
    buffer = io.BytesIO()
    axes = {0: "batch", 2: "height", 3: "width"}
    torch.onnx.export(
        net, (torch.randn(1, 3, H, W),), buffer, dynamo=False, opset_version=17, input_names=["image"],
        output_names=["logits"], dynamic_axes={"image": axes, "logits": axes},
    )  # fmt: skip
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    for shape in [(1, 3, H, W), (2, 3, W, H)]:  # other values, batch size and orientation than the traced input
        x = torch.randn(shape)
        with torch.no_grad():
            expected = net(x).numpy()
        assert expected.std(axis=(2, 3)).min() > 1e-3, "near-constant output: the comparison would be vacuous"
        got = session.run(None, {"image": x.numpy()})[0]
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["resunet", "segnet", "fpn", "deeplabv3"])
def test_3d(name):
    kwargs = {**SMALL[name], **({"backbone": "resnet10"} if name in ("fpn", "deeplabv3") else {})}
    net = build_network(name, 1, 2, spatial_dims=3, **kwargs)
    assert net(torch.randn(1, 1, 32, 32, 64)).shape == (1, 2, 32, 32, 64)


# --- FPN ------------------------------------------------------------------------------------------------------------


def test_fpn_pyramid_and_branches():
    net = build_network("fpn", 3, 2, pyramid_channels=32, segmentation_channels=16).eval()
    levels = []
    net.fpn.register_forward_hook(lambda _m, _i, out: levels.extend(out.values()))
    with torch.no_grad():
        net(torch.randn(1, 3, H, W))
    assert [tuple(p.shape) for p in levels] == [(1, 32, H // s, W // s) for s in (4, 8, 16, 32)]
    assert [sum(isinstance(m, nn.Upsample) for m in b) for b in net.branches] == [0, 1, 2, 3]
    assert all(tuple(b(p).shape[2:]) == (H // 4, W // 4) for b, p in zip(net.branches, levels, strict=True))


@pytest.mark.parametrize("backbone", ["resnet34", "resnet18", "resnet50", "efficientnet-b0", "resnext50_32x4d"])
def test_fpn_backbones_and_encoder_gradients(backbone):
    torch.manual_seed(0)
    net = build_network("fpn", 1, 3, backbone=backbone, pyramid_channels=32, segmentation_channels=16).train()
    y = net(torch.randn(2, 1, H, W))
    assert y.shape == (2, 3, H, W)
    y.logsumexp(dim=1).mean().backward()
    encoder_grads = {n: p.grad for n, p in net.encoder.named_parameters()}
    assert all(g is not None for g in encoder_grads.values()), "encoder parameters without gradient"
    stem = next(g for n, g in encoder_grads.items() if g.dim() == 4)  # first conv weight
    assert stem.abs().sum() > 0
    assert sum(bool(g.abs().sum() > 0) for g in encoder_grads.values()) / len(encoder_grads) > 0.95


def test_fpn_unknown_backbone_lists_names():
    with pytest.raises(ValueError, match="resnext50_32x4d"):
        build_network("fpn", 1, 2, backbone="vgg16")


# --- DeepLabV3+ -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("backbone", "output_stride"), [("resnet50", 16), ("resnet50", 32), ("resnet34", 16)])
def test_deeplab_output_stride(backbone, output_stride):
    net = build_network("deeplabv3", 3, 2, backbone=backbone, output_stride=output_stride, aspp_channels=16).eval()
    seen = []
    net.aspp.register_forward_hook(lambda _m, inp, _o: seen.append(tuple(inp[0].shape[2:])))
    with torch.no_grad():
        assert net(torch.randn(1, 3, H, W)).shape == (1, 2, H, W)
    assert seen == [(H // output_stride, W // output_stride)]
    dilations = {
        m.dilation for m in net.encoder.layer4[1:].modules() if isinstance(m, nn.Conv2d) and m.kernel_size[0] > 1
    }
    assert dilations == {(2, 2) if output_stride == 16 else (1, 1)}


def test_deeplab_dilation_keeps_parameters_and_needs_resnet():
    n16, n32 = (
        sum(p.numel() for p in build_network("deeplabv3", 3, 2, output_stride=s).parameters()) for s in (16, 32)
    )
    assert n16 == n32
    with pytest.raises(ValueError, match="ResNet-family"):
        build_network("deeplabv3", 3, 2, backbone="efficientnet-b0", output_stride=16)
    net = build_network("deeplabv3", 3, 2, backbone="efficientnet-b0", output_stride=32, aspp_channels=16)
    assert net(torch.randn(2, 3, H, W)).shape == (2, 2, H, W)


# --- encoders and blocks --------------------------------------------------------------------------------------------


def test_resnext_encoder():
    assert "resnext50_32x4d" in FLEXUNET_BACKBONE.register_dict
    encoder = ResNeXtEncoder(in_channels=3)
    assert sum(p.numel() for p in encoder.parameters()) == 22_979_904  # torchvision resnext50_32x4d minus its fc
    assert encoder.layer1[0].conv2.groups == 32 and encoder.layer1[0].conv2.out_channels == 128
    with torch.no_grad():
        features = encoder(torch.randn(1, 3, H, W))
    expected = [(c, H // s, W // s) for c, s in zip((64, 256, 512, 1024, 2048), (2, 4, 8, 16, 32), strict=True)]
    assert [tuple(f.shape[1:]) for f in features] == expected
    with pytest.raises(ValueError, match="pretrained"):
        ResNeXtEncoder(pretrained=True)


def test_zero_pad_shortcut_matches_monai_and_keeps_gradient():
    reference = ResNetFeatures("resnet34", pretrained=False, spatial_dims=2, in_channels=1).eval()
    fixed = fix_monai_encoders(copy.deepcopy(reference))
    assert isinstance(fixed.layer2[0].downsample, ZeroPadShortcut)
    x = torch.randn(1, 1, H, W)
    with torch.no_grad():
        for a, b in zip(reference(x), fixed(x), strict=True):
            torch.testing.assert_close(a, b)
    inp = torch.randn(1, 64, 8, 8, requires_grad=True)
    assert not reference.layer2[0].downsample(inp).requires_grad  # MONAI's concatenates ``out.data``
    fixed.layer2[0].downsample(inp).sum().backward()
    assert inp.grad[:, :, ::2, ::2].eq(1).all()


def test_build_encoder_does_not_mutate_registry():
    before = copy.deepcopy(FLEXUNET_BACKBONE.register_dict["resnet34"]["parameter"])
    build_encoder("resnet34", spatial_dims=2, in_channels=5)
    assert FLEXUNET_BACKBONE.register_dict["resnet34"]["parameter"] == before


@pytest.mark.parametrize("shape", [(2, 3, 8, 12), (1, 2, 4, 6, 8)])
def test_max_unpool_matches_torch(shape):
    x = torch.randn(*shape)
    pool, unpool = {4: (nn.MaxPool2d, nn.MaxUnpool2d), 5: (nn.MaxPool3d, nn.MaxUnpool3d)}[len(shape)]
    y, indices = pool(2, 2, return_indices=True)(x)
    assert torch.equal(MaxUnpool()(y, indices), unpool(2, 2)(y, indices))


def test_efficientnet_head_is_pruned():
    """MONAI's EfficientNet encoder keeps an unused classifier head; every remaining parameter must train."""
    net = build_network("flexible_unet_resnet34", 1, 2, backbone="efficientnet-b0", decoder_channels=(16, 8, 8, 8, 8))
    assert not hasattr(net.encoder, "_fc") and not hasattr(net.encoder, "_conv_head")
    net(torch.randn(2, 1, H, W)).mean().backward()
    assert all(p.grad is not None for p in net.parameters())


# --------------------------------------------------------------------------------------------------------------------
# presence head
# --------------------------------------------------------------------------------------------------------------------


def _gated(bias: float | None = None) -> nn.Module:
    net = build_network("unet", 1, 2, dropout=0.0, presence_head=True, **SMALL["unet"])
    net = _calibrate(net, torch.randn(2, 1, H, W))
    if bias is not None:  # force the head's verdict: a huge bias drowns the image's contribution
        nn.init.zeros_(net.head.fc.weight)
        nn.init.constant_(net.head.fc.bias, bias)
    return net


def test_presence_head_outputs_in_train_and_eval_mode():
    net = _gated()
    assert isinstance(net, PresenceGatedNet)
    x = torch.randn(2, 1, H, W)
    with train_mode(net):
        out = net(x)
    assert out.shape == (2, 3, H, W)  # two classes + the presence logit
    assert torch.equal(out[:, 2], out[:, 2, :1, :1].expand(2, H, W)), "presence logit: one value per image"
    with eval_mode(net), torch.no_grad():
        assert net(x).shape == (2, 2, H, W)


def test_presence_head_empties_the_mask_only_where_it_says_absent():
    x = torch.randn(2, 1, H, W)
    present, absent = _gated(bias=20.0), _gated(bias=-20.0)
    absent.load_state_dict(
        present.state_dict() | {k: v for k, v in absent.state_dict().items() if k.startswith("head")}
    )
    with torch.no_grad():
        plain = present.net(x)
        assert torch.equal(present(x), plain), "a present verdict must leave the logits untouched"
        gated = absent(x)
    assert (plain.argmax(1) == 1).any(), "the comparison needs some foreground to remove"
    assert (gated.argmax(1) == 0).all()
    assert torch.equal(gated[:, 0], plain[:, 0])
    assert torch.softmax(gated, 1)[:, 1].max() < 1e-4


def test_presence_threshold_and_channels_are_checked():
    with pytest.raises(ValueError, match="presence_threshold"):
        build_network("unet", 1, 2, presence_head=True, presence_threshold=1.5)
    with pytest.raises(ValueError, match="background channel"):
        build_network("unet", 1, 1, presence_head=True)


def test_presence_head_exports():
    """TorchScript (``ckpt_export``) and the traced ONNX export keep the gate, for either verdict."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    for bias in (20.0, -20.0):
        net = _gated(bias)
        x = torch.randn(1, 1, H, W)
        with torch.no_grad():
            expected = net(x)
            torch.testing.assert_close(torch.jit.script(net)(x), expected)
        buffer = io.BytesIO()
        torch.onnx.export(net, (x,), buffer, dynamo=False, opset_version=17, input_names=["image"])
        session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
        np.testing.assert_allclose(session.run(None, {"image": x.numpy()})[0], expected.numpy(), atol=1e-4, rtol=1e-4)


def test_presence_loss_adds_the_image_level_bce():
    from scripts.losses import PresenceLoss, build_loss, with_presence
    from scripts.transforms import DropPresenced

    seg = build_loss("dice_bce")
    assert with_presence(seg, False) is seg
    loss = with_presence(seg, True, weight=0.5)
    assert isinstance(loss, PresenceLoss)
    logits = torch.randn(2, 3, 8, 8)
    logits[:, 2] = torch.tensor([2.0, -1.0]).view(2, 1, 1)
    label = torch.zeros(2, 1, 8, 8)
    label[0, 0, 2:4, 2:4] = 1  # image 0 has foreground, image 1 is empty
    bce = torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor([2.0, -1.0]), torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(loss(logits, label), seg(logits[:, :2], label) + 0.5 * bce)
    drop = DropPresenced("pred", num_classes=2)
    assert drop({"pred": logits[0]})["pred"].shape == (2, 8, 8)
    assert torch.equal(drop({"pred": logits[0, :2]})["pred"], logits[0, :2])


def test_plain_checkpoint_loads_into_a_presence_network_and_back(tmp_path):
    plain = build_network("unet", 1, 2, **SMALL["unet"])
    torch.save({"model": plain.state_dict()}, tmp_path / "plain.pt")
    gated = build_network("unet", 1, 2, presence_head=True, **SMALL["unet"])
    fresh = load_weights(gated, str(tmp_path / "plain.pt"))
    assert fresh and all(k.startswith("head.") for k in fresh)
    assert all(torch.equal(v, gated.net.state_dict()[k]) for k, v in plain.state_dict().items())
    torch.save(gated.state_dict(), tmp_path / "gated.pt")
    again = build_network("unet", 1, 2, **SMALL["unet"])
    assert load_weights(again, str(tmp_path / "gated.pt")) == []


def test_network_kwargs_change_the_architecture_and_unknown_ones_say_which_key():
    """``network_kwargs`` (the bundles' key) reaches the entry's constructor: a six-level ``unet`` has a 512-channel
    bottleneck and still maps the input to logits of its size; a parameter the entry lacks is named in the error."""
    six = {"channels": [16, 32, 64, 128, 256, 512], "strides": [2, 2, 2, 2, 2]}
    net = build_network("unet", 3, 2, network_kwargs=six).eval()
    plain = build_network("unet", 3, 2).eval()
    assert tuple(net.channels) == (16, 32, 64, 128, 256, 512) and tuple(plain.channels) == (16, 32, 64, 128, 256)
    with torch.no_grad():
        assert net(torch.randn(1, 3, 64, 64)).shape == (1, 2, 64, 64)
    with pytest.raises(ValueError, match="network_kwargs"):
        build_network("segnet", 3, 2, network_kwargs={"strides": [2, 2]})
