"""Cross-validation folds, ensembles of fold models and of architectures, per-pixel uncertainty."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_utils import (
    ROOT,
    SMALL,
    run_workflow,
    single_thread_module,  # noqa: F401  (autouse fixture: one torch thread)
    train,
    use_bundle,
)
from PIL import Image

from lesiondata.crossval import train_folds
from lesiondata.maskstats import mask_agreement

NAME = "ph2_melanoma"
EPOCHS = 3


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """Folds 0 and 1 trained by ``train_folds`` (as the CLI does) and a SegResNet on fold 0, on synthetic data."""
    from lesiondata.synthetic import make_demo_dataset

    root = tmp_path_factory.mktemp("ensemble")
    data = make_demo_dataset(NAME, root / "data", n=20, seed=1)
    models = root / "models"
    # fp32 fixed in training and in every evaluation below: with amp true a CPU with native bf16 picks each
    # evaluator's precision by timing it, and a member must score exactly its training record
    summary = train_folds(
        NAME, fold=[0, 1], models_dir=models, quiet=True, dataset_dir=str(data), max_epochs=EPOCHS, amp=False, **SMALL
    )
    train(NAME, data, models / "segresnet", epochs=EPOCHS, network="segresnet", amp=False)
    (models / "unet").mkdir()
    (models / "unet" / "model.pt").write_bytes((models / "fold0" / "model.pt").read_bytes())  # the default network
    images = root / "images"
    images.mkdir()
    for path in sorted((data / "imagesTr").iterdir())[:4]:
        (images / path.name).write_bytes(path.read_bytes())
    return {"root": root, "data": data, "models": models, "images": images, "summary": summary}


def _common(trained: dict[str, Path], out: str) -> dict:
    return {
        "dataset_dir": str(trained["data"]),
        "ckpt_dir": str(trained["models"]),
        "output_dir": str(trained["root"] / out),
        "spatial_size": SMALL["spatial_size"],
        "amp": False,
    }


def _infer(trained: dict[str, Path], out: str, configs: list[str], **overrides) -> Path:
    values = {**_common(trained, out), "input_dir": str(trained["images"]), **overrides}
    assert not run_workflow(NAME, configs, "infer", **values)
    return trained["root"] / out


def test_train_folds_keeps_each_best_model_and_summarises(trained: dict[str, Path]) -> None:
    summary, models = trained["summary"], trained["models"]
    assert summary["n_folds"] == 2 and [f["fold"] for f in summary["folds"]] == [0, 1]
    assert json.loads((models / "folds_summary.json").read_text()) == json.loads(json.dumps(summary))
    for fold in summary["folds"]:
        ckpt = models / f"fold{fold['fold']}"
        best = json.loads((ckpt / "model.json").read_text())
        history = json.loads((ckpt / "history.json").read_text())
        assert (ckpt / "model.pt").is_file() and fold["epochs_run"] == EPOCHS == len(history)
        assert fold["best_epoch"] == best["epoch"] and fold["best"]["val_mean_iou"] == best["val_mean_iou"]
        assert best["val_mean_iou"] == max(h["val_mean_iou"] for h in history)
        assert fold["best"]["val_mean_dice"] == history[best["epoch"] - 1]["val_mean_dice"]
    ious = [f["best"]["val_mean_iou"] for f in summary["folds"]]
    assert summary["mean"]["val_mean_iou"] == pytest.approx(sum(ious) / 2)


@pytest.mark.parametrize("mode", ["mean", "vote"])
def test_fold_ensemble_reports_members_and_ensemble_on_the_same_cases(trained: dict[str, Path], mode: str) -> None:
    out = f"eval_{mode}"
    assert not run_workflow(
        NAME, ["train.json", "ensemble_evaluate.json"], "eval", ensemble_mode=mode, **_common(trained, out)
    )
    report = json.loads((trained["root"] / out / "ensemble_metrics.json").read_text())
    val = [d["case"] for d in json.loads((trained["data"] / "datalist.json").read_text())["training"] if d["fold"] == 0]
    assert report["mode"] == mode and report["n_cases"] == len(val) == len(report["cases"])
    assert [c["case"] for c in report["cases"]] == val
    assert [m["name"] for m in report["members"]] == ["fold0", "fold1"]
    # a member is scored exactly as in training's validation: fold 0's best checkpoint on fold 0 gives its record
    best = json.loads((trained["models"] / "fold0" / "model.json").read_text())
    assert report["members"][0]["mean_iou"] == pytest.approx(best["val_mean_iou"], abs=1e-5)
    dices = [m["mean_dice"] for m in report["members"]]
    assert report["gain"]["mean_dice_vs_best_member"] == pytest.approx(report["ensemble"]["mean_dice"] - max(dices))
    assert all(set(c) == {"case", "ensemble_dice", "fold0_dice", "fold1_dice"} for c in report["cases"])


def test_ensemble_inference_of_architectures_and_folds(trained: dict[str, Path]) -> None:
    single = _infer(
        trained, "pred_single", ["inference.json"], network="segresnet", ckpt_dir=str(trained["models"] / "segresnet")
    )
    configs = ["inference.json", "ensemble_inference.json"]
    ensemble1 = _infer(trained, "pred_ens1", configs, ensemble_members="networks", ensemble_networks=["segresnet"])
    assert mask_agreement(single, ensemble1)["agreement"] == 1.0  # a one-member ensemble is that member
    archs = _infer(  # bf16 autocast on the CPU: the members' outputs reach the post-processing as float32
        trained, "pred_archs", configs, ensemble_members="networks", ensemble_networks=["unet", "segresnet"], amp="bf16"
    )
    folds = _infer(trained, "pred_folds", configs, ensemble_mode="vote")
    for out in (archs, folds):
        for image in sorted(trained["images"].iterdir()):
            mask = np.asarray(Image.open(out / f"{image.stem}_seg.png"))
            assert mask.shape == np.asarray(Image.open(image)).shape[:2]
            assert set(np.unique(mask)) <= {0, 1}
            assert json.loads((out / f"{image.stem}_findings.json").read_text())["summary"]


def test_ensemble_inference_runs_every_member_beside_an_export(trained: dict[str, Path], tmp_path: Path) -> None:
    """``backend: auto`` serves ``<ckpt_dir>/model.onnx`` for ``<ckpt_dir>/model.pt`` alone: an ensemble from that
    folder runs each member's own network, never that export in place of each."""
    import shutil

    from lesiondata.bundles import BUNDLES_DIR

    use_bundle(NAME)
    from scripts.onnx_inferer import export_onnx

    ckpt = tmp_path / "models"
    shutil.copytree(trained["models"], ckpt)
    shutil.copy(ckpt / "fold1" / "model.pt", ckpt / "model.pt")
    configs = ["inference.json", "ensemble_inference.json"]
    alone = _infer(trained, "pred_folds_alone", configs, ckpt_dir=str(ckpt))
    export_onnx(BUNDLES_DIR / NAME, ckpt / "model.pt", ckpt / "model.onnx", spatial_size=SMALL["spatial_size"])
    beside = _infer(trained, "pred_folds_beside", configs, ckpt_dir=str(ckpt))
    assert mask_agreement(alone, beside)["agreement"] == 1.0


def test_merged_fold_ensemble_runs_in_the_single_network_workflows(trained: dict[str, Path]) -> None:
    """``ensemble_merge.json`` writes the fold models as one checkpoint; ``inference`` with ``--ensemble_size 2``
    gives the masks of the mean ``EnsembleEvaluator`` and ``evaluate`` scores it at the original size."""
    merged = trained["models"] / "merged"
    assert not run_workflow(
        NAME, ["train.json", "ensemble_merge.json"], None, **_common(trained, "merge"), merged_dir=str(merged)
    )
    record = json.loads((merged / "ensemble.json").read_text())
    assert record["ensemble_size"] == 2 and [m["name"] for m in record["members"]] == ["fold0", "fold1"]
    one = _infer(trained, "pred_merged", ["inference.json"], ensemble_size=2, ckpt_dir=str(merged))
    evaluator = _infer(trained, "pred_folds_mean", ["inference.json", "ensemble_inference.json"], ensemble_mode="mean")
    assert mask_agreement(one, evaluator)["agreement"] >= 0.999  # the same mean probabilities (float rounding apart)
    values = {**_common(trained, "eval_merged"), "ckpt_dir": str(merged), "ensemble_size": 2}
    assert not run_workflow(NAME, ["train.json", "evaluate.json"], "eval", **values)
    summary = json.loads((trained["root"] / "eval_merged" / "metrics_summary.json").read_text())
    assert 0.0 <= summary["classes"]["1"]["dice_nonempty"]["mean"] <= 1.0

    # the merged checkpoint exports like a single network (TorchScript + ONNX) and gives the same probabilities
    import onnxruntime

    from lesiondata.export import export_bundle

    use_bundle(NAME)
    from scripts.networks import build_network

    out = trained["root"] / "exported_merged"
    files = export_bundle(NAME, ckpt_dir=merged, out_dir=out, quiet=True, ensemble_size=2, spatial_size=[64, 64])
    eager = build_network("unet", 3, 2, ensemble_size=2).eval()
    eager.load_state_dict(torch.load(merged / "model.pt", weights_only=True))
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = torch.softmax(eager(x), 1)
        scripted = torch.softmax(torch.jit.load(str(files["torchscript"]))(x), 1)
    session = onnxruntime.InferenceSession(str(files["onnx"]), providers=["CPUExecutionProvider"])
    onnx = torch.softmax(torch.as_tensor(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]), 1)
    assert torch.allclose(scripted, expected, atol=1e-5) and torch.allclose(onnx, expected, atol=1e-4)


def test_mean_ensemble_net_gives_the_members_mean_probabilities() -> None:
    use_bundle(NAME)
    from scripts.networks import MeanEnsembleNet, build_network

    torch.manual_seed(0)
    members = [build_network("unet", 3, 3).eval() for _ in range(3)]
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        mean = torch.stack([torch.softmax(m(x), 1) for m in members]).mean(0)
        merged = torch.softmax(MeanEnsembleNet(members)(x), 1)
        single = torch.softmax(MeanEnsembleNet(members[:1])(x), 1)
    assert torch.allclose(merged, mean, atol=1e-6)
    assert torch.allclose(single, torch.softmax(members[0](x), 1), atol=1e-6)
    shaped = build_network("unet", 3, 3, ensemble_size=3)
    shaped.load_state_dict(MeanEnsembleNet(members).state_dict())  # the checkpoint shape ensemble_size builds
    with pytest.raises(ValueError, match="ensemble_size"):
        build_network("unet", 3, 3, ensemble_size=0)


def test_architecture_ensemble_needs_each_checkpoint(trained: dict[str, Path]) -> None:
    use_bundle(NAME)
    from scripts.ensemble import find_members

    members = find_members(trained["models"], "networks", networks=["segresnet"])
    assert members == [
        {"name": "segresnet", "network": "segresnet", "checkpoint": str(trained["models"] / "segresnet" / "model.pt")}
    ]
    with pytest.raises(FileNotFoundError, match=r"deeplabv3/model\.pt.*--network <name> --ckpt_dir models/<name>"):
        find_members(trained["models"], "networks", networks=["segresnet", "deeplabv3"])
    with pytest.raises(FileNotFoundError, match="train_folds.py"):
        find_members(trained["root"] / "nowhere", "folds")
    with pytest.raises(ValueError, match="folds, networks"):
        find_members(trained["models"], "fold")


def test_ensemble_inference_postprocessing_follows_the_template() -> None:
    """``ensemble_inference.json`` repeats ``inference.json``'s post-processing after its own first two steps."""
    configs = ROOT / "bundles" / "_shared" / "configs"
    single = json.loads((configs / "inference.json").read_text())["postprocessing"]["transforms"]
    ensemble = json.loads((configs / "ensemble_inference.json").read_text())["postprocessing"]["transforms"]
    assert single[0] == {"_target_": "Activationsd", "keys": "pred", "softmax": True}
    assert [t["_target_"] for t in ensemble[:2]] == ["Activationsd", "scripts.ensemble.Ensembled"]
    assert ensemble[2:] == single[1:], "inference.json's postprocessing changed: update ensemble_inference.json"
    for overlay in (
        "ensemble_evaluate.json",
        "ensemble_inference.json",
        "inference_onnx.json",
        "inference_uncertainty.json",
    ):
        keys = {k.lstrip("+").split("#")[0] for k in json.loads((configs / overlay).read_text())}
        assert not keys & {"network_def", "network", "in_channels", "num_classes", "spatial_size"}, overlay


def test_ensembled_mean_and_vote() -> None:
    use_bundle(NAME)
    from scripts.ensemble import Ensembled

    def probs(*foreground: float) -> torch.Tensor:
        fg = torch.tensor(foreground).reshape(1, 1, -1)
        return torch.cat([1 - fg, fg])

    data = {
        "pred_a": probs(0.9, 0.6, 0.2, 0.4),
        "pred_b": probs(0.7, 0.3, 0.1, 0.6),
        "pred_c": probs(0.8, 0.2, 0.9, 0.4),
    }
    mean = Ensembled(["pred_a", "pred_b", "pred_c"], num_classes=2)(data)["pred"]
    torch.testing.assert_close(mean[1, 0], torch.tensor([0.8, 1.1 / 3, 0.4, 1.4 / 3]))
    vote = Ensembled(["pred_a", "pred_b", "pred_c"], num_classes=2, mode="vote")(data)["pred"]
    assert vote[1, 0].tolist() == [1.0, 0.0, 0.0, 0.0] and vote.sum(0).eq(1).all()
    tie = Ensembled(["pred_a", "pred_b"], num_classes=2, mode="vote")(data)["pred"]
    assert tie[1, 0].tolist() == [1.0, 0.0, 0.0, 0.0]  # (1, 0) and (0, 1) votes go to the lower class
    single = Ensembled(["pred_a"], num_classes=2)(data)["pred"]
    torch.testing.assert_close(single, data["pred_a"])
    with pytest.raises(ValueError, match="mean, vote"):
        Ensembled(["pred_a"], num_classes=2, mode="median")


def test_uncertainty_maps_beside_unchanged_masks(trained: dict[str, Path]) -> None:
    fold0 = str(trained["models"] / "fold0")
    plain = _infer(trained, "pred_plain", ["inference.json"], ckpt_dir=fold0)
    configs = ["inference.json", "inference_uncertainty.json"]
    maps = {}
    for mode, samples in (("flip_tta", 8), ("mc_dropout", 4)):
        out = _infer(trained, f"pred_{mode}", configs, ckpt_dir=fold0, uncertainty=mode, uncertainty_samples=samples)
        assert mask_agreement(plain, out)["agreement"] == 1.0
        for image in sorted(trained["images"].iterdir()):
            variance = nib.load(out / f"{image.stem}_uncertainty.nii.gz").get_fdata()
            width, height = Image.open(image).size
            assert variance.shape == (width, height, 1, 1)  # MONAI's 2D NIfTI: x (columns), y, z, channel
            assert variance.min() >= 0.0 and variance.max() <= 0.25
        maps[mode] = variance
        assert maps[mode].max() > 0
    none = _infer(trained, "pred_none", configs, ckpt_dir=fold0, uncertainty="none")
    assert not list(none.glob("*_uncertainty*")) and mask_agreement(plain, none)["agreement"] == 1.0


def test_uncertainty_options_are_checked() -> None:
    use_bundle(NAME)
    from scripts.networks import build_network
    from scripts.uncertainty import UncertaintyMapd, foreground_variance, sample_probabilities

    net = build_network("unet", 3, 2, dropout=0.0)
    with pytest.raises(ValueError, match="needs dropout layers"):
        UncertaintyMapd("image", net, mode="mc_dropout")
    with pytest.raises(ValueError, match="none, mc_dropout, flip_tta"):
        UncertaintyMapd("image", net, mode="ensemble")
    with pytest.raises(ValueError, match="4 distinct views"):
        sample_probabilities(net, torch.rand(1, 3, 32, 64), "flip_tta", 8)
    probs = torch.tensor([[0.2, 0.8], [0.6, 0.4]]).reshape(2, 1, 2, 1, 1)  # two samples, p(background) 0.2 and 0.6
    assert foreground_variance(probs).flatten().tolist() == pytest.approx([0.04])
    assert net.training  # sampling restores the network's flags
    sample_probabilities(net, torch.rand(1, 3, 32, 32), "flip_tta", 8)
    assert net.training
