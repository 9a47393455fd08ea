"""Each bundle end to end on tiny synthetic data: train -> evaluate -> infer through ConfigWorkflow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from bundle_utils import BUNDLES, ROOT, SMALL, use_bundle
from bundle_utils import make_workflow as _workflow
from PIL import Image

NAMES = ["ph2_melanoma", "brain_tumor", "trus_prostate", "ipmn_histology"]


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory) -> dict[str, Path]:
    """A small synthetic dataset per bundle, made by the converters from raw files in each source's format."""
    from lesiondata.synthetic import make_demo_dataset

    root = tmp_path_factory.mktemp("demo")
    return {name: make_demo_dataset(name, root / name, n=20, seed=1) for name in NAMES}


@pytest.mark.parametrize("name", NAMES)
def test_train_evaluate_infer(name: str, demo_data, tmp_path: Path) -> None:
    data = demo_data[name]
    ckpt, out = tmp_path / "models", tmp_path / "eval"
    labels = json.loads((data / "dataset.json").read_text())["labels"]
    # the synthetic IPMN set is the 3-class colour-map variant: the label keys are the way to train it
    common = {
        "dataset_dir": str(data),
        "ckpt_dir": str(ckpt),
        "output_dir": str(out),
        "labels": labels,
        "num_classes": len(labels),
        **SMALL,
    }
    epochs = 12 if name == "ph2_melanoma" else 3
    train = _workflow(name, ["train.json"], "train", max_epochs=epochs, **common)
    train.initialize()
    assert not train.check_properties()
    train.run()
    train.finalize()
    assert (ckpt / "model.pt").is_file()
    history = json.loads((ckpt / "history.json").read_text())
    assert [h["epoch"] for h in history] == list(range(1, epochs + 1))
    assert all(np.isfinite(h["loss"]) for h in history)
    assert {h["precision"] for h in history} <= {"fp32", "bf16"}  # what amp resolved to on this CPU

    evaluate = _workflow(name, ["train.json", "evaluate.json"], "eval", **common)
    evaluate.initialize()
    assert not evaluate.check_properties()
    evaluate.run()
    evaluate.finalize()
    summary = json.loads((out / "metrics_summary.json").read_text())
    val_items = [d for d in json.loads((data / "datalist.json").read_text())["training"] if d["fold"] == 0]
    assert summary["n_images"] == len(val_items)
    for picture in ("curves.png", "confusion_matrix.png"):
        assert (out / picture).is_file()
    if name == "ph2_melanoma":
        # the easy synthetic lesion is learnt: true Dice at the original size
        assert summary["classes"]["1"]["dice_nonempty"]["mean"] > 0.8
        # evaluation-time options: 4-view flip TTA, largest component, hole filling (one lesion per image)
        post = {"tta_views": 4, "keep_largest_component": True, "fill_holes": True}
        evaluate = _workflow(
            name, ["train.json", "evaluate.json"], "eval", **{**common, **post, "output_dir": str(out / "post")}
        )
        evaluate.initialize()
        evaluate.run()
        evaluate.finalize()
        cleaned = json.loads((out / "post" / "metrics_summary.json").read_text())
        assert cleaned["classes"]["1"]["dice_nonempty"]["mean"] > 0.8
        for mask_file in (out / "post" / "predictions").glob("*.png"):
            from scipy import ndimage

            assert ndimage.label(np.asarray(Image.open(mask_file)) > 0)[1] <= 1, f"{mask_file.name}: >1 component"

    images = data / "imagesTr"
    infer_out = tmp_path / "pred"
    infer = _workflow(
        name,
        ["inference.json"],
        "infer",
        input_dir=str(images),
        output_dir=str(infer_out),
        ckpt_dir=str(ckpt),
        dataset_dir=str(data),
        spatial_size=SMALL["spatial_size"],
        labels=labels,
        num_classes=len(labels),
    )
    infer.initialize()
    assert not infer.check_properties()
    infer.run()
    infer.finalize()
    for image in sorted(images.iterdir())[:3]:
        mask = np.asarray(Image.open(infer_out / f"{image.stem}_seg.png"))
        assert mask.shape == np.asarray(Image.open(image)).shape[:2], "mask must have the original size"
        assert set(np.unique(mask)) <= set(range(len(labels)))
        findings = json.loads((infer_out / f"{image.stem}_findings.json").read_text())
        assert findings["image_size"] == list(Image.open(image).size)
        assert findings["summary"]


def test_init_weights_loads_a_checkpoint_before_training(demo_data, tmp_path: Path) -> None:
    """``--init_weights`` (fine-tuning, weak-supervision pre-training) copies every matching tensor into ``net``."""
    common = {"dataset_dir": str(demo_data["brain_tumor"]), "ckpt_dir": str(tmp_path / "m"), **SMALL}
    donor = _workflow("brain_tumor", ["train.json"], "train", seed=7, **common).parser.get_parsed_content("net")
    torch.save({"model": donor.state_dict()}, tmp_path / "donor.pt")
    fresh = _workflow("brain_tumor", ["train.json"], "train", **common)
    fresh.initialize()
    tuned = _workflow("brain_tumor", ["train.json"], "train", init_weights=str(tmp_path / "donor.pt"), **common)
    tuned.initialize()
    donor_state, tuned_state = donor.state_dict(), tuned.parser.get_parsed_content("net").state_dict()
    assert all(torch.equal(donor_state[k], tuned_state[k]) for k in donor_state)
    fresh_state = fresh.parser.get_parsed_content("net").state_dict()
    assert not all(torch.equal(fresh_state[k], tuned_state[k]) for k in donor_state)
    # a 3-class head from a 2-class checkpoint: the body is loaded, the head stays fresh and is named
    three = _workflow(
        "brain_tumor",
        ["train.json"],
        "train",
        init_weights=str(tmp_path / "donor.pt"),
        num_classes=3,
        labels={"background": 0, "a": 1, "b": 2},
        **common,
    )
    three.initialize()
    three_state = three.parser.get_parsed_content("net").state_dict()
    same = [k for k in donor_state if three_state[k].shape == donor_state[k].shape]
    assert 0 < len(same) < len(donor_state)
    assert all(torch.equal(donor_state[k], three_state[k]) for k in same)
    with pytest.raises(RuntimeError) as error:  # MONAI wraps the config expression's error
        _workflow("brain_tumor", ["train.json"], "train", init_weights=str(tmp_path / "nope.pt"), **common).initialize()
    assert "nope.pt' does not exist" in str(error.value.__cause__)


def _network_summary(name: str, configs: list[str]) -> tuple[str, int]:
    wf = _workflow(name, configs, "infer" if configs == ["inference.json"] else "train")
    net = wf.parser.get_parsed_content("network_def")
    return str(net), sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_configs_build_the_same_network(name: str) -> None:
    reference = _network_summary(name, ["train.json"])
    for configs in (["train.json", "evaluate.json"], ["train.json", "multi_gpu_train.json"], ["inference.json"]):
        assert _network_summary(name, configs) == reference, configs


def test_augmentation_keys_reach_the_training_transforms_and_keep_labels_valid(demo_data) -> None:
    """``colour_aug`` (channel-wise intensity scaling) and ``elastic_prob`` switch their transforms on; off (the
    default) they never fire; validation is never augmented; augmented samples keep shape and label values."""
    common = {"dataset_dir": str(demo_data["ph2_melanoma"]), **SMALL, "cache_rate": 0.0}

    def transforms(wf, section: str) -> dict:
        return {type(t).__name__: t for t in wf.parser.get_parsed_content(f"{section}#preprocessing").transforms}

    default = transforms(_workflow("ph2_melanoma", ["train.json"], "train", **common), "train")
    assert default["RandScaleIntensityd"].prob == 0.0 and default["RandElasticd"].apply_prob == 0.0
    aug_wf = _workflow("ph2_melanoma", ["train.json"], "train", colour_aug=0.3, elastic_prob=1.0, **common)
    aug = transforms(aug_wf, "train")
    assert aug["RandScaleIntensityd"].prob > 0 and aug["RandScaleIntensityd"].scaler.factors == (-0.3, 0.3)
    assert aug["RandScaleIntensityd"].scaler.channel_wise and aug["RandElasticd"].apply_prob == 1.0
    assert not {"RandScaleIntensityd", "RandElasticd"} & set(transforms(aug_wf, "validate"))
    sample = aug_wf.parser.get_parsed_content("train#dataset")[0]
    assert sample["image"].shape == (3, 64, 64) and torch.isfinite(torch.as_tensor(sample["image"])).all()
    assert set(torch.unique(torch.as_tensor(sample["label"])).tolist()) <= {0, 1}


def test_a_non_square_spatial_size_trains_without_rot90(demo_data) -> None:
    """``rot90_prob`` turns training images by 90 degrees only at a square ``spatial_size``: a turn of a
    non-square one changes its shape, and a batch of mixed shapes cannot be stacked."""
    common = {"dataset_dir": str(demo_data["ph2_melanoma"]), **SMALL, "cache_rate": 0.0, "batch_size": 4}

    def rot90(**values) -> float:
        wf = _workflow("ph2_melanoma", ["train.json"], "train", **{**common, **values})
        transforms = {type(t).__name__: t for t in wf.parser.get_parsed_content("train#preprocessing").transforms}
        return transforms["RandRotate90d"].prob, wf

    assert rot90()[0] == 0.5 and rot90(rot90_prob=0.2)[0] == 0.2
    prob, wf = rot90(spatial_size=[64, 48], rot90_prob=1.0)
    assert prob == 0.0
    batch = next(iter(wf.parser.get_parsed_content("train#dataloader")))
    assert batch["image"].shape[2:] == (64, 48) and batch["label"].shape[2:] == (64, 48)


def test_validation_can_score_empty_cases_and_clean_masks_as_the_evaluation_does(demo_data) -> None:
    """``val_ignore_empty`` false scores a case with an empty truth 1 when predicted empty, else 0 (true: left out,
    MONAI's default); ``val_postprocess`` applies the evaluation's mask cleaning (here ``min_component_fraction``)
    before the metrics that choose the checkpoint and drive the plateau schedule. Both off: the old behaviour."""
    common = {"dataset_dir": str(demo_data["trus_prostate"]), **SMALL, "cache_rate": 0.0}
    truth = torch.zeros(2, 1, 32, 32)
    truth[1, 0, 8:24, 8:24] = 1  # case 0: nothing to find; case 1: a square
    logits = torch.zeros(2, 2, 32, 32)
    logits[:, 0] = 1.0
    logits[0, 1, 0:2, 0:2] = 2.0  # a 4-pixel speck on the empty case (0.4 % of the image)
    logits[1, 1, 8:24, 8:24] = 2.0

    def scores(**values) -> tuple[float, float]:
        wf = _workflow("trus_prostate", ["train.json"], "train", min_component_fraction=0.02, **common, **values)
        post = wf.parser.get_parsed_content("validate#postprocessing")
        metrics = wf.parser.get_parsed_content("validate#key_metric")
        items = [post({"pred": logits[i], "label": truth[i]}) for i in range(2)]
        pred = torch.stack([torch.as_tensor(x["pred"]) for x in items])
        label = torch.stack([torch.as_tensor(x["label"]) for x in items])
        fn = metrics["val_mean_iou"].metric_fn
        fn.reset()
        fn(pred, label)
        return fn.aggregate().item(), float(pred[0, 1].sum())

    off = {"val_ignore_empty": True, "val_postprocess": False}  # the template's default
    assert scores(**off) == (1.0, 4.0)  # the empty case is left out, the speck kept
    assert scores(**{**off, "val_ignore_empty": False}) == (0.5, 4.0)  # the speck on the empty case scores 0
    assert scores(val_ignore_empty=False, val_postprocess=True) == (1.0, 0.0)  # cleaned away: scores 1
    assert scores() == (1.0, 0.0)  # the TRUS bundle's default (C-TRUS has empty scans)


def test_bundles_are_in_sync_with_the_template() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "sync_bundles.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", NAMES)
def test_metadata_follows_the_bundle_spec(name: str) -> None:
    meta = json.loads((BUNDLES / name / "configs" / "metadata.json").read_text())
    for key in (
        "version",
        "changelog",
        "monai_version",
        "pytorch_version",
        "numpy_version",
        "task",
        "description",
        "authors",
        "copyright",
        "network_data_format",
    ):
        assert key in meta, key
    fmt = meta["network_data_format"]
    assert len(fmt["inputs"]["image"]["spatial_shape"]) == 2
    assert fmt["outputs"]["pred"]["channel_def"]["0"] == "background"
    for doc in ("docs/README.md", "LICENSE", "configs/logging.conf"):
        assert (BUNDLES / name / doc).is_file(), doc


def test_missing_dataset_dir_is_named_before_training(tmp_path: Path) -> None:
    from monai.bundle import ConfigWorkflow  # noqa: F401

    missing = tmp_path / "nowhere"
    wf = _workflow(
        "ph2_melanoma", ["train.json"], "train", dataset_dir=str(missing), ckpt_dir=str(tmp_path / "m"), **SMALL
    )
    with pytest.raises(Exception) as info:  # raised while the trainer is built, before any epoch
        wf.initialize()
        wf.run()
    chain, err = [], info.value
    while err is not None:
        chain.append(err)
        err = err.__cause__ or err.__context__
    assert any(type(e).__name__ == "DataListError" and str(missing) in str(e) for e in chain)
    assert not (tmp_path / "m" / "model.pt").exists()


def test_empty_datalist_and_unreadable_image_are_named(demo_data, tmp_path: Path) -> None:
    use_bundle("ph2_melanoma")
    from scripts.data import DataListError, load_split

    src = demo_data["ph2_melanoma"]
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "datalist.json").write_text(json.dumps({"training": []}))
    with pytest.raises(DataListError, match="empty"):
        load_split(empty, "train", 0)
    broken = tmp_path / "broken"
    (broken / "imagesTr").mkdir(parents=True)
    items = json.loads((src / "datalist.json").read_text())["training"][:3]
    for d in items:
        target = broken / d["image"]
        target.write_bytes((src / d["image"]).read_bytes())
        (broken / d["label"]).parent.mkdir(exist_ok=True)
        (broken / d["label"]).write_bytes((src / d["label"]).read_bytes())
        d["fold"] = 1
    (broken / items[0]["image"]).write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (broken / "datalist.json").write_text(json.dumps({"training": items}))
    with pytest.raises(DataListError, match=Path(items[0]["image"]).name):
        load_split(broken, "train", 0)
    # a PNG cut off inside its data, or one flipped byte: both fail before training, not in the middle of it
    whole = (src / items[0]["image"]).read_bytes()
    flipped = bytearray(whole)
    flipped[len(whole) // 2] ^= 0xFF
    for damaged in (whole[: len(whole) // 2], bytes(flipped)):
        (broken / items[0]["image"]).write_bytes(damaged)
        with pytest.raises(DataListError, match="cannot be read as an image"):
            load_split(broken, "train", 0)
    (broken / items[0]["image"]).write_bytes(whole)
    assert len(load_split(broken, "val", 1)) == 3


def test_multi_gpu_config_runs_with_torchrun_on_cpu(demo_data, tmp_path: Path) -> None:
    bundle = BUNDLES / "ph2_melanoma"
    configs = f"['{bundle}/configs/train.json','{bundle}/configs/multi_gpu_train.json']"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        configs,
        "--bundle_root",
        str(bundle),
        "--dataset_dir",
        str(demo_data["ph2_melanoma"]),
        "--ckpt_dir",
        str(tmp_path / "models"),
        "--output_dir",
        str(tmp_path / "eval"),
        "--max_epochs",
        "2",
        "--spatial_size",
        "[64,64]",
        "--num_workers",
        "0",
        "--batch_size",
        "2",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(bundle)}
    for _attempt in range(2):
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
        # gloo can abort a rank at interpreter exit ("terminate called without an active exception") after the
        # run has finished; that teardown race, and only that, gets one more try.
        if (
            result.returncode == 0
            or "terminate called without an active exception" not in result.stdout + result.stderr
        ):
            break
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (tmp_path / "models" / "model.pt").is_file()
    assert len(json.loads((tmp_path / "models" / "history.json").read_text())) == 2


def test_mlflow_tracking_records_metrics(demo_data, tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "mlruns.db"
    wf = _workflow(
        "ph2_melanoma",
        ["train.json"],
        "train",
        tracking="mlflow",
        tracking_uri=f"sqlite:///{db}",
        dataset_dir=str(demo_data["ph2_melanoma"]),
        ckpt_dir=str(tmp_path / "m"),
        output_dir=str(tmp_path / "e"),
        max_epochs=1,
        **SMALL,
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    keys = {k for (k,) in sqlite3.connect(db).execute("select distinct key from metrics")}
    assert {"train_loss", "val_mean_iou", "val_mean_dice"} <= keys


def test_inference_in_bf16_writes_nifti_masks_at_the_original_size(demo_data, tmp_path: Path) -> None:
    import nibabel as nib

    data = demo_data["ph2_melanoma"]
    ckpt = tmp_path / "models"
    ckpt.mkdir()
    wf = _workflow(
        "ph2_melanoma",
        ["inference.json"],
        "infer",
        input_dir=str(data / "imagesTr"),
        output_dir=str(tmp_path / "o"),
        ckpt_dir=str(ckpt),
        dataset_dir=str(data),
        spatial_size=[64, 64],
        amp="bf16",
        output_ext=".nii.gz",
    )
    torch.save(wf.parser.get_parsed_content("network_def").state_dict(), ckpt / "model.pt")
    wf.initialize()
    wf.run()
    wf.finalize()
    image = sorted((data / "imagesTr").iterdir())[0]
    width, height = Image.open(image).size
    mask = nib.load(str(tmp_path / "o" / f"{image.stem}_seg.nii.gz")).get_fdata()
    assert mask.shape[:2] == (width, height) and set(np.unique(mask)) <= {0.0, 1.0}


def test_presence_head_trains_evaluates_and_gates_inference(demo_data, tmp_path: Path) -> None:
    """``presence_head``: trained through the bundle's own loss and metrics, its verdict reaches the written masks."""
    from bundle_utils import run_workflow, train

    data = demo_data["trus_prostate"]
    ckpt = train("trus_prostate", data, tmp_path / "models", epochs=2, presence_head=True)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert any(k.startswith("head.") for k in state) and any(k.startswith("net.") for k in state)
    history = json.loads((tmp_path / "models" / "history.json").read_text())
    assert all(np.isfinite(h["loss"]) for h in history)
    common = {"ckpt_dir": str(tmp_path / "models"), "dataset_dir": str(data), "presence_head": True}
    assert not run_workflow(
        "trus_prostate", ["train.json", "evaluate.json"], "eval", output_dir=str(tmp_path / "eval"), **SMALL, **common
    )
    assert json.loads((tmp_path / "eval" / "metrics_summary.json").read_text())["n_images"] > 0
    images = sorted((data / "imagesTr").iterdir())[:4]
    for threshold, out in ((0.0, tmp_path / "kept"), (1.0, tmp_path / "emptied")):  # every image present / absent
        run_workflow(
            "trus_prostate", ["inference.json"], "infer", input_dir=str(data / "imagesTr"), output_dir=str(out),
            spatial_size=SMALL["spatial_size"], presence_threshold=threshold, **common,
        )  # fmt: skip
    for image in images:
        assert not np.asarray(Image.open(tmp_path / "emptied" / f"{image.stem}_seg.png")).any()
    assert any(np.asarray(Image.open(tmp_path / "kept" / f"{image.stem}_seg.png")).any() for image in images), (
        "with every image called present some mask must be non-empty, or the gate test is vacuous"
    )


@pytest.fixture
def trained(demo_data, tmp_path: Path):
    """``trained(folder, **keys)``: the best checkpoint's weights of a 2-epoch PH2 training on the demo data in
    ``tmp_path / folder``, with bundle ``keys`` overridden. fp32 fixed: with amp true a CPU with native bf16 picks
    the precision by timing, which may differ per run."""
    from bundle_utils import train

    def run(folder: str, **keys) -> dict:
        ckpt = train("ph2_melanoma", demo_data["ph2_melanoma"], tmp_path / folder, epochs=2, amp=False, **keys)
        return torch.load(ckpt, map_location="cpu", weights_only=True)

    return run


def test_ema_decay_trains_and_saves_the_averaged_weights(trained) -> None:
    """``--ema_decay``: the saved best model is the moving average, not the training weights (training itself is
    deterministic, so two plain runs agree and the averaged one differs)."""
    plain, again, averaged = trained("plain"), trained("again"), trained("ema", ema_decay=0.9)
    assert plain.keys() == again.keys() == averaged.keys()
    assert all(torch.equal(plain[k], again[k]) for k in plain)
    assert any(not torch.equal(plain[k], averaged[k]) for k in plain)


def test_training_runs_without_metadata_tracking_and_trains_the_same_weights(trained) -> None:
    """With every item cached, the trainer turns MONAI's metadata tracking off while it runs (the augmentation then
    skips ``MetaTensor`` bookkeeping) and back on afterwards; the weights it trains are the same as with tracking on.
    With items loaded during training it keeps tracking on (``EnsureChannelFirstd`` needs it)."""
    from monai.data import MetaTensor, get_track_meta
    from monai.engines import SupervisedTrainer

    seen: list[tuple[bool, bool]] = []
    original = SupervisedTrainer._iteration

    def spy(self, engine, batchdata):
        seen.append((get_track_meta(), isinstance(batchdata["image"], MetaTensor)))
        return original(self, engine, batchdata)

    SupervisedTrainer._iteration = spy
    try:
        plain = trained("plain")
        assert seen and all(not tracking and not meta for tracking, meta in seen), seen
        assert get_track_meta(), "tracking must be back on after training"
        seen.clear()
        tracked = trained("tracked", **{"train#trainer#track_meta": True})
        assert seen and all(tracking for tracking, _ in seen)
        seen.clear()
        # items loaded during training (not all cached, as in the label app's tests) need it: tracking stays on
        trained("uncached", cache_rate=0.5)
        assert seen and all(tracking for tracking, _ in seen)
    finally:
        SupervisedTrainer._iteration = original
    assert plain.keys() == tracked.keys() and all(torch.equal(plain[k], tracked[k]) for k in plain)


def test_gpu_loading_path_trains_the_same_weights_where_it_can_run(trained) -> None:
    """On CUDA the bundles cache the items on the GPU (``cache_on_device``: the last load transform moves them) and
    feed them through MONAI's ``ThreadDataLoader`` with no worker processes (``thread_loader``), MONAI's fast-training
    recipe. Both keys are off on a CPU; switched on here (``device`` cpu) the same weights must come out, so the
    path is the same training, only fed differently. No GPU here: the move to CUDA itself is not exercised."""
    from monai.data import ThreadDataLoader
    from monai.engines import SupervisedTrainer

    loaders: list[str] = []
    original = SupervisedTrainer.run

    def spy(self):
        loaders.append(type(self.data_loader).__name__)
        return original(self)

    SupervisedTrainer.run = spy
    try:
        plain = trained("plain")
        fed = trained("threaded", thread_loader=True, cache_on_device=True)
    finally:
        SupervisedTrainer.run = original
    assert loaders == ["DataLoader", ThreadDataLoader.__name__], loaders
    assert plain.keys() == fed.keys() and all(torch.equal(plain[k], fed[k]) for k in plain)


def test_augmentation_never_changes_the_cached_items(demo_data) -> None:
    """On a CPU the training loader has no worker processes (``num_workers`` resolves to 0), so the random
    transforms run on the ``CacheDataset``'s own items (``copy_cache: false``): none may change them in place,
    with every augmentation on and metadata tracking off as during training."""
    from monai.data import set_track_meta

    keys = {"colour_aug": 0.3, "elastic_prob": 1.0, "augment_prob": 1.0, "rot90_prob": 1.0, "cache_rate": 1.0}
    small = {k: v for k, v in SMALL.items() if k != "num_workers"}  # the config's own value
    wf = _workflow("ph2_melanoma", ["train.json"], "train", dataset_dir=str(demo_data["ph2_melanoma"]), **small)
    wf.parser.update({"device": "$torch.device('cpu')", **keys})
    assert wf.parser.get_parsed_content("num_workers") == 0
    dataset = wf.parser.get_parsed_content("train#dataset")
    before = [
        {k: torch.as_tensor(v).clone() for k, v in item.items() if k in ("image", "label")} for item in dataset._cache
    ]
    set_track_meta(False)
    try:
        for _ in range(3):
            for i in range(len(dataset)):
                sample = dataset[i]
                assert sample["image"].shape == (3, 64, 64)
    finally:
        set_track_meta(True)
    after = dataset._cache
    assert all(torch.equal(torch.as_tensor(a[k]), b[k]) for a, b in zip(after, before, strict=True) for k in b)
