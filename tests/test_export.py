"""Exported models give the eager masks: TorchScript and ONNX via ``scripts/export_bundle.py``, ONNX Runtime inference."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from bundle_utils import (
    SMALL,
    run_workflow,
    single_thread_module,  # noqa: F401  (autouse fixture: one torch thread)
    train,
    use_bundle,
)

from lesiondata.export import export_bundle, export_commands
from lesiondata.maskstats import mask_agreement, mean_dice

NAME = "ph2_melanoma"


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    """A PH2 model trained for a few epochs on synthetic data (non-trivial masks), exported by the bundle commands."""
    from lesiondata.synthetic import make_demo_dataset

    root = tmp_path_factory.mktemp("export")
    data = make_demo_dataset(NAME, root / "data", n=20, seed=1)
    train(NAME, data, root / "models", epochs=8)
    files = export_bundle(NAME, ckpt_dir=root / "models", out_dir=root / "exported", quiet=True, spatial_size=[64, 64])
    return {"root": root, "data": data, "models": root / "models", **files}


def _infer(exported: dict[str, Path], out: str, configs: list[str], **overrides) -> Path:
    out_dir = exported["root"] / out
    common = {
        "input_dir": str(exported["data"] / "imagesTr"),
        "output_dir": str(out_dir),
        "dataset_dir": str(exported["data"]),
        "ckpt_dir": str(exported["models"]),
        "spatial_size": SMALL["spatial_size"],
    }
    assert not run_workflow(NAME, configs, "infer", **{**common, **overrides})
    return out_dir


def test_export_commands_are_the_monai_bundle_commands(tmp_path: Path) -> None:
    commands = export_commands(NAME, tmp_path / "model.pt", tmp_path, spatial_size=[64, 64])
    assert commands["torchscript"][:4] == ["ckpt_export", "network_def", "--filepath", str(tmp_path / "model.ts")]
    assert commands["onnx"][:4] == ["onnx_export", "network_def", "--filepath", str(tmp_path / "model.onnx")]
    onnx = commands["onnx"]
    assert onnx[onnx.index("--input_shape") + 1] == "[1, 3, 64, 64]"
    assert onnx[onnx.index("--use_trace") + 1] == "True"
    for args in commands.values():
        assert args[args.index("--config_file") + 1] == "configs/inference.json"
        assert args[args.index("--meta_file") + 1] == "configs/metadata.json"


def test_exported_models_match_eager_inference(exported: dict[str, Path]) -> None:
    eager = _infer(exported, "eager", ["inference.json"], backend="torch")
    script = _infer(
        exported,
        "torchscript",
        ["inference.json"],
        net=f"$torch.jit.load('{exported['torchscript']}')",
        handlers=[{"_target_": "StatsHandler", "iteration_log": False}],
        backend="torch",
    )
    onnx = _infer(exported, "onnx", ["inference.json", "inference_onnx.json"], onnx_file=str(exported["onnx"]))
    openvino = _infer(exported, "openvino", ["inference.json"], backend="openvino", onnx_file=str(exported["onnx"]))
    auto = _infer(exported, "auto", ["inference.json"], onnx_file=str(exported["onnx"]))  # the default backend
    labels = exported["data"] / "labelsTr"
    runs = (("eager", eager), ("ts", script), ("onnx", onnx), ("openvino", openvino), ("auto", auto))
    dice = {name: mean_dice(folder, labels) for name, folder in runs}
    assert dice["eager"] > 0.75, f"the masks must be non-trivial for the comparison to mean anything: {dice}"
    for name, folder in runs[1:]:
        agreement = mask_agreement(eager, folder)
        print(f"{name}: agreement {agreement}, dice {dice[name]:.5f} vs eager {dice['eager']:.5f}")
        assert agreement["n_images"] == 20
        assert agreement["agreement"] >= 0.995
        assert abs(dice[name] - dice["eager"]) <= 0.002
    findings = json.loads(next(onnx.glob("*_findings.json")).read_text())
    assert findings["summary"]


def test_torchscript_file_carries_the_bundle_configs(exported: dict[str, Path]) -> None:
    # written in a staging folder and renamed into place (a running inference never reads a partial file)
    assert sorted(p.name for p in (exported["root"] / "exported").iterdir()) == ["model.onnx", "model.ts"]
    extra = {"inference.json": "", "metadata.json": ""}
    torch.jit.load(str(exported["torchscript"]), _extra_files=extra)
    assert json.loads(extra["inference.json"])["network_def"]["_target_"] == "scripts.networks.build_network"
    assert json.loads(extra["metadata.json"])["name"] == "PH2 dermoscopy melanoma segmentation"


@pytest.mark.parametrize(("network", "channels"), [("fpn", 1), ("attention_unet", 3), ("unet", 1)])
def test_default_networks_export_with_dynamic_shapes(network: str, channels: int) -> None:
    """UNet (every bundle's default) and the selectable FPN and AttentionUnet script and export to ONNX; both match
    eager logits at a size other than the export size (dynamic axes)."""
    import onnxruntime as ort
    from monai.networks.utils import convert_to_onnx, convert_to_torchscript

    use_bundle("trus_prostate")
    from scripts.networks import build_network
    from scripts.onnx_inferer import ONNX_CONVERTER_KWARGS

    torch.manual_seed(0)
    net = build_network(network, channels, 2, dropout=0.1).eval()
    sample, other = torch.rand(1, channels, 64, 64), torch.rand(2, channels, 96, 128)
    with torch.no_grad():
        expected = net(other).numpy()
        scripted = convert_to_torchscript(net, use_trace=False)(other).numpy()
    model = convert_to_onnx(net, [sample], use_trace=True, **ONNX_CONVERTER_KWARGS)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"image": other.numpy()})
    assert logits.shape == expected.shape == (2, 2, 96, 128)
    np.testing.assert_allclose(scripted, expected, atol=1e-5)
    np.testing.assert_allclose(logits, expected, atol=1e-4)


def test_onnx_inferer_names_what_is_wrong(exported: dict[str, Path], tmp_path: Path) -> None:
    use_bundle(NAME)
    from scripts.onnx_inferer import OnnxInferer

    with pytest.raises(FileNotFoundError, match="export_bundle.py"):
        OnnxInferer(tmp_path / "missing.onnx")
    for runtime in ("onnxruntime", "openvino"):
        with pytest.raises(ValueError, match="takes 3-channel images but in_channels is 1"):
            OnnxInferer(exported["onnx"], in_channels=1, runtime=runtime)
        logits = OnnxInferer(exported["onnx"], threads=1, runtime=runtime)(torch.zeros(2, 3, 64, 64))
        assert logits.shape == (2, 2, 64, 64) and logits.dtype == torch.float32
    with pytest.raises(ValueError, match="runtime must be one of onnxruntime, openvino"):
        OnnxInferer(exported["onnx"], runtime="tensorrt")
    with pytest.raises(ValueError, match=r"precision must be one of f32, bf16 \(bf16: openvino only\)"):
        OnnxInferer(exported["onnx"], runtime="onnxruntime", precision="bf16")


def test_openvino_in_bf16_gives_nearly_the_masks_of_fp32(exported: dict[str, Path]) -> None:
    """OpenVINO with ``precision="bf16"`` (``backend: auto`` measures it where ``amp`` allows bf16): float32 logits
    whose argmax is the fp32 one at nearly every pixel (a CPU without native bf16 runs it in fp32)."""
    use_bundle(NAME)
    from scripts.onnx_inferer import OnnxInferer

    batch = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    fp32 = OnnxInferer(exported["onnx"], threads=1, runtime="openvino")(batch)
    bf16 = OnnxInferer(exported["onnx"], threads=1, runtime="openvino", precision="bf16")(batch)
    assert bf16.dtype == torch.float32 and bf16.shape == fp32.shape
    assert (bf16.argmax(1) == fp32.argmax(1)).float().mean() >= 0.99
    assert torch.allclose(bf16, fp32, atol=0.1 * float(fp32.abs().max()))


def test_openvino_runs_the_export_as_onnx_runtime_does(exported: dict[str, Path], tmp_path: Path) -> None:
    """The same stamped file in OpenVINO (fp32, also on a CPU where its default precision would be bf16): the logits
    of ONNX Runtime at another size than the export's (dynamic axes), and the same refusal of a stale export."""
    use_bundle(NAME)
    from scripts.onnx_inferer import OnnxInferer, checkpoint_sha256

    checkpoint = exported["models"] / "model.pt"
    batch = torch.rand(2, 3, 96, 128, generator=torch.Generator().manual_seed(0))
    onnxruntime = OnnxInferer(exported["onnx"], threads=1, checkpoint=checkpoint)
    openvino = OnnxInferer(exported["onnx"], threads=1, checkpoint=checkpoint, runtime="openvino")
    assert openvino.source == onnxruntime.source == checkpoint_sha256(checkpoint)
    np.testing.assert_allclose(openvino(batch).numpy(), onnxruntime(batch).numpy(), atol=1e-4)
    retrained = tmp_path / "model.pt"
    _retrain(checkpoint, retrained)
    with pytest.raises(ValueError, match="exported from another checkpoint"):
        OnnxInferer(exported["onnx"], checkpoint=retrained, runtime="openvino")
    fallback = OnnxInferer(exported["onnx"], checkpoint=retrained, on_stale="torch", runtime="openvino")
    assert "exported from another checkpoint" in fallback.stale
    assert torch.all(fallback(batch, lambda x: torch.full((len(x), 2, *x.shape[2:]), 7.0)) == 7.0)


def _retrain(checkpoint: Path, target: Path) -> None:
    """Write other weights of the same network to ``target`` (as a retraining would), atomically."""
    state = torch.load(checkpoint, map_location="cpu")
    state = {k: v + 1 if torch.is_floating_point(v) else v for k, v in state.items()}
    torch.save(state, target.with_suffix(".tmp"))
    target.with_suffix(".tmp").replace(target)


def test_onnx_inferer_refuses_an_export_of_another_checkpoint(
    exported: dict[str, Path], tmp_path: Path, caplog
) -> None:
    """A model retrained after its export must not run silently from the stale ``model.onnx``."""
    use_bundle(NAME)
    import onnx

    from scripts.onnx_inferer import SOURCE_KEY, OnnxInferer, checkpoint_sha256

    checkpoint = exported["models"] / "model.pt"
    recorded = {p.key: p.value for p in onnx.load(str(exported["onnx"])).metadata_props}
    assert recorded[SOURCE_KEY] == checkpoint_sha256(checkpoint)
    OnnxInferer(exported["onnx"], checkpoint=checkpoint)  # the matching pair loads

    retrained = tmp_path / "model.pt"
    _retrain(checkpoint, retrained)
    with pytest.raises(ValueError, match="exported from another checkpoint.*export_bundle.py"):
        OnnxInferer(exported["onnx"], checkpoint=retrained)
    OnnxInferer(exported["onnx"], checkpoint=tmp_path / "absent.pt")  # ONNX-only deployment: nothing to check

    # packaging refuses to ship the stale export beside the new weights
    from lesiondata.packaging import bundle_files

    stale = tmp_path / "models"
    stale.mkdir()
    shutil.copy(retrained, stale / "model.pt")
    shutil.copy(exported["onnx"], stale / "model.onnx")
    with pytest.raises(ValueError, match="re-export"):
        bundle_files(NAME, models_dir=stale)
    shutil.copy(checkpoint, stale / "model.pt")
    assert "models/model.onnx" in bundle_files(NAME, models_dir=stale)

    unstamped = tmp_path / "old.onnx"
    model = onnx.load(str(exported["onnx"]))
    del model.metadata_props[:]
    onnx.save(model, str(unstamped))
    with caplog.at_level("WARNING"):
        OnnxInferer(unstamped, checkpoint=retrained)
    assert "does not record the checkpoint" in caplog.text


def test_backend_auto_measures_the_matching_export_in_each_runtime(exported: dict[str, Path], tmp_path: Path) -> None:
    """``backend: auto`` on a CPU: an :class:`AutoBackend` over both runtimes (each serving only a matching export)
    and PyTorch bf16 where ``amp`` allows it; PyTorch on CUDA and with ``amp: "bf16"``; ``onnx`` and ``openvino``
    force one runtime."""
    use_bundle(NAME)
    from scripts.engines import cpu_supports_bf16
    from scripts.onnx_inferer import AutoBackend, OnnxInferer, select_base

    checkpoint = exported["models"] / "model.pt"
    auto = select_base("auto", exported["onnx"], checkpoint, "cpu", 3, 1, amp=True)
    bf16 = ["openvino-bf16"] if cpu_supports_bf16() else []  # OpenVINO bf16 where amp allows bf16 on this CPU
    assert isinstance(auto, AutoBackend) and sorted(auto.runtimes) == ["onnxruntime", "openvino", *bf16]
    assert all(inferer.stale is None for inferer in auto.runtimes.values())
    assert auto.bf16 == cpu_supports_bf16()
    assert [auto.runtimes[name].precision for name in bf16] == ["bf16"] * len(bf16)
    fp32_only = select_base("auto", exported["onnx"], checkpoint, "cpu", 3, 1, amp=False)
    assert not fp32_only.bf16 and sorted(fp32_only.runtimes) == ["onnxruntime", "openvino"]
    assert select_base("auto", exported["onnx"], checkpoint, "cpu", 3, 1, amp="bf16") is None
    assert select_base("auto", exported["onnx"], checkpoint, "cuda:0", 3, 1) is None  # built only where it runs
    assert select_base("torch", exported["onnx"], checkpoint) is None
    for backend, runtime in (("onnx", "onnxruntime"), ("openvino", "openvino")):
        forced = select_base(backend, exported["onnx"], checkpoint, threads=1)
        assert isinstance(forced, OnnxInferer) and forced.runtime == runtime and forced.precision == "f32"
        # amp "bf16" forces bf16 as it does for PyTorch, where the runtime has it (OpenVINO)
        forced = select_base(backend, exported["onnx"], checkpoint, threads=1, amp="bf16")
        assert forced.precision == ("bf16" if runtime == "openvino" else "f32")
    nothing = select_base("auto", tmp_path / "none.onnx", checkpoint)  # nothing exported (yet): PyTorch
    assert all(inferer.stale.startswith("no ") for inferer in nothing.runtimes.values())
    retrained = tmp_path / "model.pt"
    _retrain(checkpoint, retrained)
    stale = select_base("auto", exported["onnx"], retrained)  # stale export: PyTorch, not the old weights
    assert all("exported from another checkpoint" in inferer.stale for inferer in stale.runtimes.values())
    with pytest.raises(ValueError, match="exported from another checkpoint"):
        select_base("openvino", exported["onnx"], retrained)
    with pytest.raises(ValueError, match="backend must be one of auto, torch, onnx, openvino"):
        select_base("tensorrt", exported["onnx"], checkpoint)


def test_a_running_onnx_inferer_follows_retraining_and_re_export(exported: dict[str, Path], tmp_path: Path) -> None:
    """A long-running process (the label app) whose ``model.pt`` is retrained never runs the stale export: ``auto``
    falls back to the PyTorch network until the re-export, which it then picks up; ``onnx`` stops with the
    re-export message."""
    use_bundle(NAME)
    from scripts.onnx_inferer import OnnxInferer, stamp_source

    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(exported["models"] / "model.pt", models / "model.pt")
    auto = OnnxInferer(models / "model.onnx", threads=1, checkpoint=models / "model.pt", on_stale="torch")
    calls: list[int] = []

    def network(x: torch.Tensor) -> torch.Tensor:
        calls.append(len(x))
        return torch.full((len(x), 2, *x.shape[2:]), 7.0)

    batch = torch.rand(2, 3, 64, 64)
    assert torch.all(auto(batch, network) == 7.0) and calls == [2] and auto.stale.startswith("no ")  # not exported
    shutil.copy(exported["onnx"], models / "model.onnx")  # exported while the process runs
    forced = OnnxInferer(models / "model.onnx", threads=1, checkpoint=models / "model.pt")
    assert not torch.all(auto(batch, network) == 7.0) and calls == [2] and auto.stale is None

    _retrain(models / "model.pt", models / "model.pt")  # the label app publishes new weights
    assert torch.all(auto(batch, network) == 7.0) and calls == [2, 2]
    assert "exported from another checkpoint" in auto.stale
    with pytest.raises(ValueError, match="exported from another checkpoint.*export_bundle.py"):
        forced(batch, network)

    stamp_source(models / "model.onnx", models / "model.pt")  # stands in for the re-export of the new weights
    assert not torch.all(auto(batch, network) == 7.0) and calls == [2, 2] and auto.stale is None
    assert forced(batch).shape == (2, 2, 64, 64)
    (models / "model.pt").unlink()  # nothing to check against: auto runs PyTorch, forced ONNX-only serves
    assert torch.all(auto(batch, network) == 7.0) and "no checkpoint" in auto.stale
    assert forced(batch).shape == (2, 2, 64, 64)
    with pytest.raises(RuntimeError, match="no PyTorch network"):
        auto(batch)


def test_onnx_inferer_hands_mc_dropout_sampling_to_pytorch(exported: dict[str, Path]) -> None:
    """A network sampling dropout (Monte-Carlo dropout for epistemic scoring) runs in PyTorch even where a matching
    export serves: the export has no dropout, so every sample (and every entropy) would be the same."""
    use_bundle(NAME)
    from scripts.networks import enable_mc_dropout, samples_dropout
    from scripts.onnx_inferer import OnnxInferer

    inferer = OnnxInferer(exported["onnx"], threads=1, checkpoint=exported["models"] / "model.pt", on_stale="torch")
    assert inferer.stale is None
    calls: list[int] = []

    class Sampling(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.drop = torch.nn.Dropout2d(0.5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(len(x))
            return self.drop(torch.ones(len(x), 2, *x.shape[2:]))

    network, batch = Sampling().eval(), torch.rand(2, 3, 64, 64)
    assert not samples_dropout(network)
    inferer(batch, network)
    assert calls == []  # eval mode: the export serves
    enable_mc_dropout(network)
    assert samples_dropout(network)
    first, second = inferer(batch, network), inferer(batch, network)
    assert calls == [2, 2] and not torch.equal(first, second)


def test_a_bundle_exports_itself_in_process_as_the_cli_does(exported: dict[str, Path], tmp_path: Path) -> None:
    """``scripts.onnx_inferer.export_onnx`` (the label app's re-export after retraining, no repository needed) gives
    the model of ``scripts/export_bundle.py``, stamped, and leaves no partial file."""
    import onnxruntime as ort

    from lesiondata.bundles import BUNDLES_DIR, run_monai_bundle

    use_bundle(NAME)
    from scripts.onnx_inferer import ONNX_CONVERTER_KWARGS, OnnxInferer, checkpoint_sha256, export_onnx, recorded_source

    checkpoint = exported["models"] / "model.pt"
    target = tmp_path / "model.onnx"
    sha = export_onnx(BUNDLES_DIR / NAME, checkpoint, target, spatial_size=[64, 64])  # in_channels: the config's
    assert sha == checkpoint_sha256(checkpoint) and sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    assert "inputs" not in ONNX_CONVERTER_KWARGS  # MONAI's onnx_export adds its sample to the dict it is given
    assert OnnxInferer(target, threads=1, checkpoint=checkpoint, on_stale="torch").stale is None
    # MONAI's plain `onnx_export` command with the same recipe (export_commands) gives the same model, unstamped
    plain = tmp_path / "plain"
    plain.mkdir()
    run_monai_bundle(NAME, export_commands(NAME, checkpoint, plain, spatial_size=[64, 64])["onnx"], quiet=True)
    batch = np.random.default_rng(0).random((1, 3, 80, 96), dtype=np.float32)
    files = (target, exported["onnx"], plain / "model.onnx")  # in process, export_bundle (the bundle's CLI), MONAI's
    ours, bundle_cli, monai_cli = (ort.InferenceSession(str(p)).run(None, {"image": batch})[0] for p in files)
    np.testing.assert_allclose(ours, bundle_cli, atol=1e-5)
    np.testing.assert_allclose(ours, monai_cli, atol=1e-5)
    assert recorded_source(plain / "model.onnx") is None and recorded_source(exported["onnx"]) == sha
    with pytest.raises(RuntimeError, match="nothing.pt not found: train the bundle first"):
        run_monai_bundle(NAME, ["--ckpt_file", tmp_path / "nothing.pt"], quiet=True, module="scripts.onnx_inferer")
