"""Unit tests of the bundles' shared Python package (losses, optimizers, transforms, findings, handlers)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

SHARED = Path(__file__).resolve().parents[1] / "bundles" / "_shared"
for mod in [m for m in sys.modules if m == "scripts" or m.startswith("scripts.")]:
    del sys.modules[mod]
sys.path.insert(0, str(SHARED))

from scripts.engines import amp_mode  # noqa: E402
from scripts.findings import summarise  # noqa: E402
from scripts.handlers import atomic_write_bytes  # noqa: E402
from scripts.losses import LOSSES, build_loss  # noqa: E402
from scripts.optim import build_optimizer, build_scheduler, scheduler_step_input  # noqa: E402
from scripts.report import image_scores, summarise_scores  # noqa: E402
from scripts.transforms import (  # noqa: E402
    ArgmaxChanneld,
    EnsureChannelsd,
    RandElasticd,
    argmax_channels,
    clean_mask,
    diffusion_filter,
    fill_enclosed,
    threshold_channels,
)
from scripts.uncertainty import FlipTTAInferer  # noqa: E402


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_is_finite_differentiable_and_lower_for_the_right_answer(name: str) -> None:
    label = torch.zeros(2, 1, 16, 24, dtype=torch.long)
    label[:, :, 4:12, 6:18] = 1
    right = torch.cat([1 - label, label], 1).float() * 8 - 4
    wrong = -right
    loss = build_loss(name)
    logits = right.clone().requires_grad_(True)
    value = loss(logits, label)
    value.backward()
    assert torch.isfinite(value) and logits.grad is not None and logits.grad.abs().sum() > 0
    assert loss(right, label) < loss(wrong, label)


def test_a_loss_switch_must_be_a_boolean() -> None:
    assert build_loss("dicece", batch_dice=False).dice.batch is False  # per-image Dice
    with pytest.raises(ValueError, match="batch_dice must be true or false; got 'false'"):
        build_loss("dicece", batch_dice="false")  # truthy: would silently keep batch Dice


def test_unknown_names_list_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="dicece"):
        build_loss("nope")
    with pytest.raises(ValueError, match="adamw"):
        build_optimizer("nope", [torch.nn.Parameter(torch.zeros(1))], 1e-3)
    with pytest.raises(ValueError, match="plateau"):
        build_scheduler("nope", torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), 10)


def test_plateau_scheduler_steps_on_the_validation_metric() -> None:
    opt = build_optimizer("adam", [torch.nn.Parameter(torch.zeros(1))], 1.0)
    sched = build_scheduler("plateau", opt, 10, patience=1, factor=0.5)

    class _State:
        metrics = {"val_mean_iou": 0.5}

    class _Evaluator:
        state = _State()

    step_input = scheduler_step_input(sched, _Evaluator(), "val_mean_iou")
    for _ in range(3):
        sched.step(*step_input(None))
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)


def test_cosine_scheduler_anneals_to_min_lr() -> None:
    opt = build_optimizer("adamw", [torch.nn.Parameter(torch.zeros(1))], 1.0)
    sched = build_scheduler("cosine", opt, 4, min_lr=0.0)
    assert scheduler_step_input(sched, None, "x")(None) == ()
    for _ in range(4):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-9)


def test_diffusion_filter() -> None:
    rng = np.random.default_rng(0)
    img = torch.zeros(1, 32, 48)
    img[:, :, 24:] = 1.0
    noisy = img + torch.as_tensor(rng.normal(0, 0.05, img.shape), dtype=torch.float32)
    assert torch.equal(diffusion_filter(noisy, 0), noisy)
    iso = diffusion_filter(noisy, 10, step=0.2, mode="isotropic")
    pm = diffusion_filter(noisy, 10, step=0.2, kappa=0.2, mode="perona_malik")
    flat = (slice(None), slice(4, 28), slice(4, 20))
    assert iso[flat].std() < noisy[flat].std() / 2  # speckle smoothed
    edge = lambda x: float((x[:, :, 25] - x[:, :, 22]).mean())  # noqa: E731
    assert edge(pm) > edge(iso)  # Perona-Malik keeps the edge sharper
    assert iso.mean() == pytest.approx(noisy.mean(), abs=1e-4)  # diffusion conserves intensity
    with pytest.raises(ValueError, match="step"):
        diffusion_filter(noisy, 1, step=0.5)


def test_diffusion_transform_filters_a_metatensor_and_keeps_its_metadata() -> None:
    """The dictionary transform filters the plain data (fast) and hands back a MetaTensor with the same metadata and
    recorded operations, the values of :func:`diffusion_filter`."""
    from monai.data import MetaTensor

    from scripts.transforms import DiffusionFilterd

    img = MetaTensor(torch.rand(1, 20, 30), meta={"filename_or_obj": "case.png"})
    img.applied_operations = [{"class": "CropForeground"}]
    out = DiffusionFilterd("image", iterations=3)({"image": img})["image"]
    assert isinstance(out, MetaTensor) and torch.equal(out.as_tensor(), diffusion_filter(img.as_tensor(), 3))
    assert out.meta["filename_or_obj"] == "case.png" and out.applied_operations == img.applied_operations
    assert DiffusionFilterd("image", iterations=0)({"image": img})["image"] is img


def test_ensure_channels() -> None:
    grey = torch.arange(6.0).reshape(1, 2, 3)
    rgb = EnsureChannelsd("image", 3)({"image": grey})["image"]
    assert rgb.shape == (3, 2, 3) and torch.equal(rgb[2], grey[0])
    back = EnsureChannelsd("image", 1)({"image": rgb})["image"]
    assert torch.allclose(back, grey)


def test_elastic_deformation_moves_image_and_label_together_and_costs_nothing_when_off() -> None:
    yy, xx = torch.meshgrid(torch.arange(96.0), torch.arange(96.0), indexing="ij")
    label = torch.zeros(1, 96, 96, dtype=torch.uint8)
    label[0, 30:60, 20:70] = 1
    data = {"image": torch.stack([yy, xx]), "label": label}
    kwargs = {"keys": ["image", "label"], "spacing": 32, "magnitude_range": (2.0, 4.0), "mode": ["bilinear", "nearest"]}
    off = RandElasticd(prob=0.0, **kwargs)
    assert off(data)["image"] is data["image"]  # untouched, not resampled through an identity grid
    on = RandElasticd(prob=1.0, **kwargs)
    on.set_random_state(0)
    out = on(data)
    shift = (torch.as_tensor(out["image"]) - data["image"]).norm(dim=0)[16:-16, 16:-16]
    assert 0.5 < float(shift.mean()) < 10.0  # pixels moved by a few pixels, not scrambled
    moved = torch.as_tensor(out["label"])
    assert set(torch.unique(moved).tolist()) == {0, 1}  # nearest: labels stay labels
    assert not torch.equal(moved.to(torch.uint8), label) and abs(float(moved.sum()) / float(label.sum()) - 1) < 0.2
    half = RandElasticd(prob=0.5, **kwargs)
    half.set_random_state(1)
    fired = sum(half(data)["image"] is not data["image"] for _ in range(200))
    assert 70 < fired < 130  # fires with its own probability (not prob squared)


def test_elastic_deformation_is_monais_without_its_discarded_full_size_draw() -> None:
    """With MONAI's wasted full-size draw of offsets skipped on MONAI's own grid too, both transforms consume the
    same random numbers and deform alike, to the bit, over several calls (with an affine part in the grid)."""
    from monai.transforms import RandDeformGrid

    torch.manual_seed(0)
    data = {"image": torch.rand(2, 40, 56), "label": (torch.rand(1, 40, 56) > 0.5).to(torch.uint8)}
    kwargs = {"keys": ["image", "label"], "spacing": 8, "magnitude_range": (1.0, 3.0), "mode": ["bilinear", "nearest"]}
    kwargs |= {"rotate_range": 0.3, "scale_range": 0.1}
    ours, reference = RandElasticd(prob=1.0, **kwargs), RandElasticd(prob=1.0, **kwargs)
    monai_grid = RandDeformGrid(spacing=8, magnitude_range=(1.0, 3.0))
    draws = []
    full_size_draw = monai_grid.randomize

    def only_at_control_size(grid_size):  # MONAI's first call asks for the image's (40, 56): skip it
        draws.append(tuple(grid_size))
        if tuple(grid_size) != (40, 56):
            full_size_draw(grid_size)

    monai_grid.randomize = only_at_control_size
    reference.rand_2d_elastic.deform_grid = monai_grid
    ours.set_random_state(3)
    reference.set_random_state(3)
    for _ in range(3):
        a, b = ours(data), reference(data)
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    assert draws.count((40, 56)) == 3 and len(draws) == 6  # MONAI asked for the full size each time


def test_clean_mask_keeps_largest_component_and_fills_holes() -> None:
    mask = np.zeros((20, 30), dtype=np.int64)
    mask[2:12, 2:12] = 1
    mask[5:7, 5:7] = 0  # hole
    mask[15:17, 25:27] = 1  # small island
    out = clean_mask(mask, 2, keep_largest=True, fill_holes=True)
    assert out[15:17, 25:27].sum() == 0 and out[5:7, 5:7].all() and out[2:12, 2:12].all()
    assert np.array_equal(clean_mask(mask, 2), mask)


def test_fill_enclosed_equals_scipys_binary_fill_holes() -> None:
    from scipy import ndimage

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:97, :130]
    disc = (yy - 48) ** 2 + (xx - 60) ** 2 < 35**2
    for density in (0.2, 0.5, 0.8):
        noise = ndimage.binary_opening(rng.random(disc.shape) < density)
        for region in (noise, disc & ~noise, disc | noise, disc, np.zeros_like(disc), np.ones_like(disc)):
            np.testing.assert_array_equal(fill_enclosed(region), ndimage.binary_fill_holes(region))


def _clean_mask_on_the_whole_image(mask, num_classes, keep_largest, fill_holes, fraction):
    """The clean-up written plainly on the whole image with SciPy's own hole filling: the reference."""
    from scipy import ndimage

    out, eight = mask.copy(), np.ones((3, 3))
    for value in range(1, num_classes):
        region = mask == value
        if not region.any():
            continue
        if fraction > 0:
            components, n = ndimage.label(region, structure=eight)
            sizes = np.bincount(components.ravel(), minlength=n + 1)
            region = np.isin(components, np.flatnonzero(sizes >= fraction * mask.size)) & region
        if keep_largest and region.any():
            components, n = ndimage.label(region, structure=eight)
            if n > 1:
                region = components == np.argmax(np.bincount(components.ravel())[1:]) + 1
        if fill_holes:
            region = ndimage.binary_fill_holes(region)
        out[(mask == value) & ~region] = 0
        out[region] = value
    return out


@pytest.mark.parametrize("num_classes", [2, 4])
def test_clean_mask_inside_bounding_boxes_equals_the_whole_image_clean_up(num_classes: int) -> None:
    """Cleaning each label inside its bounding box gives the whole-image result: labels touching the border, small
    ones, scattered noise, nested labels, holes at the box edge."""
    from scipy import ndimage

    rng = np.random.default_rng(num_classes)
    yy, xx = np.mgrid[:61, :83]
    for trial in range(40):
        mask = np.zeros((61, 83), dtype=np.int64)
        for value in range(1, num_classes):
            cy, cx, r = rng.integers(0, 61), rng.integers(0, 83), rng.integers(3, 30)
            mask[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = value
            mask[ndimage.binary_opening(rng.random(mask.shape) < rng.uniform(0.2, 0.7))] = value * (trial % 3 == 0)
            mask[rng.random(mask.shape) < 0.02] = value
        for keep, fill, fraction in [(True, True, 0.0), (True, False, 0.0), (False, True, 0.0), (True, True, 0.005)]:
            expected = _clean_mask_on_the_whole_image(mask, num_classes, keep, fill, fraction)
            np.testing.assert_array_equal(clean_mask(mask, num_classes, keep, fill, fraction), expected)


def test_clean_mask_drops_small_components_and_can_empty_a_mask() -> None:
    mask = np.zeros((40, 60), dtype=np.int64)
    mask[5:25, 5:25] = 1  # 400 px = 1/6 of the image
    mask[30:32, 50:52] = 1  # 4 px
    out = clean_mask(mask, 2, min_component_fraction=0.01)  # 24 px threshold
    assert out[5:25, 5:25].all() and not out[30:32, 50:52].any()
    only_small = np.zeros_like(mask)
    only_small[30:32, 50:52] = 1
    assert not clean_mask(only_small, 2, min_component_fraction=0.01).any()


def test_flip_tta_inferer_averages_probabilities_over_flips() -> None:
    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 2, 3, padding=1).eval()
    x = torch.rand(2, 1, 8, 12)
    with torch.no_grad():
        assert torch.equal(FlipTTAInferer(1)(x, net), net(x))
        out = FlipTTAInferer(4)(x, net)
        expected = torch.stack(
            [
                torch.softmax(net(x), 1),
                torch.softmax(net(x.flip(3)), 1).flip(3),
                torch.softmax(net(x.flip(2)), 1).flip(2),
                torch.softmax(net(x.flip((2, 3))), 1).flip((2, 3)),
            ]
        ).mean(0)
    # the bundle's Activationsd(softmax=True) turns the returned log-probabilities back into the mean
    assert torch.allclose(torch.softmax(out, 1), expected, atol=1e-6)
    batches = []

    def counting(inputs, network):  # a base inferer (ONNX Runtime in the bundles) sees the views as one batch
        batches.append(inputs.shape[0])
        return network(inputs)

    with torch.no_grad():
        assert torch.allclose(FlipTTAInferer(4, base=counting)(x, net), out, atol=1e-6) and batches == [8]
    with pytest.raises(ValueError, match="square"):
        FlipTTAInferer(8)(x, net)
    with pytest.raises(ValueError, match="tta_views"):
        FlipTTAInferer(0)


@pytest.mark.parametrize("channels", [1, 2, 3, 5])
def test_fast_argmax_equals_torch_argmax_with_ties_and_metadata(channels: int) -> None:
    from monai.data import MetaTensor
    from monai.transforms import AsDiscreted

    torch.manual_seed(channels)
    x = torch.randn(channels, 37, 23)
    x[:, :5, :5] = 0.5  # ties go to the lowest channel, as in torch.argmax
    assert torch.equal(argmax_channels(x), x.argmax(0, keepdim=True).to(x.dtype))
    meta = MetaTensor(x, meta={"filename_or_obj": "case.png"})
    ours = ArgmaxChanneld("pred")({"pred": meta})["pred"]
    monai_way = AsDiscreted("pred", argmax=True)({"pred": meta})["pred"]
    assert torch.equal(ours.as_tensor(), monai_way.as_tensor()) and ours.meta["filename_or_obj"] == "case.png"
    kept = ArgmaxChanneld("pred", input_keys="prob")({"pred": meta})  # the input kept under "prob", as it was
    assert kept["prob"] is meta and torch.equal(kept["pred"].as_tensor(), ours.as_tensor())


def test_foreground_threshold_trims_or_grows_the_mask_and_keeps_the_class() -> None:
    # two classes: the threshold applies to the foreground probability; 0.5 is the argmax
    fg = torch.tensor([[0.2, 0.45, 0.55, 0.7, 0.9]])
    probs = torch.stack([1 - fg, fg])
    assert threshold_channels(probs, 0.5).tolist() == argmax_channels(probs).tolist() == [[[0, 0, 1, 1, 1]]]
    assert threshold_channels(probs, 0.6).tolist() == [[[0, 0, 0, 1, 1]]]
    assert threshold_channels(probs, 0.4).tolist() == [[[0, 1, 1, 1, 1]]]
    # three classes: foreground where 1 - p(background) passes, labelled with the likelier foreground class
    probs3 = torch.tensor([[0.5, 0.7, 0.2], [0.3, 0.1, 0.3], [0.2, 0.2, 0.5]])[..., None]  # (C=3, 3 pixels, 1)
    assert argmax_channels(probs3)[0, :, 0].tolist() == [0, 0, 2]
    assert threshold_channels(probs3, 0.45)[0, :, 0].tolist() == [1, 0, 2]  # pixel 0: 0.5 foreground, class 1
    assert threshold_channels(probs3, 0.9)[0, :, 0].tolist() == [0, 0, 0]
    out = ArgmaxChanneld("pred", threshold=0.6)({"pred": probs})["pred"]
    assert out.tolist() == [[[0, 0, 0, 1, 1]]]
    with pytest.raises(ValueError, match="foreground_threshold 1.5 must lie strictly between 0 and 1"):
        ArgmaxChanneld("pred", threshold=1.5)


def test_findings_on_a_non_square_mask() -> None:
    # MONAI's reverse-indexed order: axis 0 is x (width 40), axis 1 is y (height 30)
    mask = np.zeros((40, 30), dtype=np.int64)
    mask[10:20, 5:8] = 1
    prob = np.stack([1 - mask * 0.9, mask * 0.9]).astype(np.float32)
    result = summarise(mask, prob, {"background": 0, "lesion": 1}, spacing_mm=(0.5, 0.5))
    item = result["findings"][0]
    assert result["image_size"] == [40, 30]
    assert item["found"] and item["pixels"] == 30 and item["bbox_xyxy"] == [10, 5, 19, 7]
    assert item["area_fraction"] == pytest.approx(30 / 1200) and item["area_mm2"] == pytest.approx(7.5)
    assert item["mean_confidence"] == pytest.approx(0.9)
    assert "columns 10-19 and rows 5-7" in result["summary"]
    empty = summarise(np.zeros((40, 30), dtype=np.int64), None, {"background": 0, "lesion": 1})
    assert not empty["findings"][0]["found"] and empty["summary"].startswith("No lesion found.")


def test_true_scores_and_empty_cases() -> None:
    truth = np.zeros((10, 10), dtype=np.uint8)
    truth[0:4, 0:5] = 1  # 20 px
    pred = np.zeros_like(truth)
    pred[0:4, 0:4] = 1  # 16 px, all inside
    s = image_scores(truth, pred, 2)["1"]
    assert s["dice"] == pytest.approx(32 / 36) and s["jaccard"] == pytest.approx(16 / 20)
    empty = image_scores(np.zeros_like(truth), np.zeros_like(truth), 2)
    summary = summarise_scores({"a": image_scores(truth, pred, 2), "b": empty}, 2)["classes"]["1"]
    assert summary["dice_nonempty"]["n"] == 1 and summary["dice_all"]["n"] == 2
    assert summary["empty_truth_cases"] == 1 and summary["empty_predicted_empty"] == 1
    assert summary["pooled_dice"] == pytest.approx(32 / 36)
    assert summary["false_positive_fraction"] == 0.0 and summary["false_negative_fraction"] == pytest.approx(4 / 20)
    grown = truth.copy()
    grown[4, 0:5] = 1  # 5 px outside the truth, none missed
    over = summarise_scores({"a": image_scores(truth, grown, 2)}, 2)["classes"]["1"]
    assert over["false_positive_fraction"] == pytest.approx(5 / 20) and over["false_negative_fraction"] == 0.0


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    target = tmp_path / "model.pt"
    target.write_text(json.dumps({"old": True}))

    def broken(tmp: str) -> None:
        Path(tmp).write_text("partial")
        raise RuntimeError("killed midway")

    with pytest.raises(RuntimeError):
        atomic_write_bytes(target, broken)
    assert json.loads(target.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_amp_mode() -> None:
    assert amp_mode(False, "cpu") is None
    assert amp_mode("bf16", "cpu") == "cpu"
    assert amp_mode(True, "cuda:0") == "cuda"


def test_weight_averager_validates_and_saves_the_average_and_puts_the_training_weights_back() -> None:
    from ignite.engine import Engine, Events

    from scripts.handlers import WeightAverager

    net = torch.nn.Linear(1, 1, bias=False)
    seen = []
    evaluator = Engine(lambda e, b: seen.append(float(net.weight)))

    def step(engine, batch):  # the "optimizer" sets the weight to the batch value
        with torch.no_grad():
            net.weight.fill_(float(batch))

    trainer = Engine(step)
    averager = WeightAverager(net, decay=0.5, evaluator=evaluator)
    averager.attach(trainer)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: evaluator.run([0]))
    trainer.run([2.0, 4.0], max_epochs=1)
    # step 0: the average starts at the first weights (2); step 1: d = min(0.5, 2/11) -> 2 * 2/11 + 4 * 9/11
    expected = 2.0 * 2 / 11 + 4.0 * 9 / 11
    assert seen == [pytest.approx(expected)]  # the evaluator saw the average
    assert float(net.weight) == 4.0  # and training goes on from its own weights
    off = torch.nn.Linear(1, 1)
    plain = Engine(lambda e, b: None)
    WeightAverager(off, decay=0.0, evaluator=evaluator).attach(plain)
    assert not plain._event_handlers  # 0: nothing attached
    with pytest.raises(ValueError, match="ema_decay"):
        WeightAverager(net, decay=1.0)


def test_members_with_a_presence_head_take_the_bundles_threshold(tmp_path: Path) -> None:
    """``load_members`` builds a presence member with ``presence_threshold`` (the bundle key), not a fixed 0.5."""
    from scripts.ensemble import load_members
    from scripts.networks import PresenceGatedNet, build_network

    net = build_network("unet", 1, 2, presence_head=True)
    torch.save(net.state_dict(), tmp_path / "model.pt")
    member = [{"name": "a", "network": "unet", "checkpoint": str(tmp_path / "model.pt")}]
    (loaded,) = load_members(member, 1, 2, presence_threshold=0.8)
    assert isinstance(loaded, PresenceGatedNet) and loaded.threshold == 0.8
    (default,) = load_members(member, 1, 2)
    assert default.threshold == 0.5


def test_choose_cpu_amp_keeps_bf16_only_when_clearly_faster() -> None:
    from scripts.engines import BF16_MIN_GAIN, choose_cpu_amp

    assert choose_cpu_amp([1.0, 1.0], [0.5, 0.6]) == "cpu"
    assert choose_cpu_amp([1.0, 1.0], [1.0 / BF16_MIN_GAIN + 0.01] * 2) is None  # a near tie stays fp32
    assert choose_cpu_amp([0.8, 0.9], [1.0, 1.0]) is None  # bf16 slower: the Xeon of the README


def test_trainer_measures_amp_on_the_first_batch_and_leaves_the_run_untouched(monkeypatch, caplog) -> None:
    """``amp: true`` on a CPU with native bf16: the first iteration times the training step of a copy of the
    network in both precisions, keeps the faster (logged), and the weights, norm statistics and random stream
    are those of a run without the probe."""
    from monai.data import DataLoader

    import scripts.engines as engines

    monkeypatch.setattr(engines, "cpu_supports_bf16", lambda: True)  # the probe runs on any CPU (bf16 emulated)

    def make(amp):
        torch.manual_seed(0)
        net = torch.nn.Sequential(
            torch.nn.Conv2d(1, 4, 3, padding=1),
            torch.nn.BatchNorm2d(4),
            torch.nn.Dropout(0.5),
            torch.nn.Conv2d(4, 2, 1),
        )
        data = [{"image": torch.rand(1, 16, 16), "label": (torch.rand(1, 16, 16) > 0.5).long()} for _ in range(4)]
        trainer = engines.Trainer(
            max_epochs=1,
            device=torch.device("cpu"),
            train_data_loader=DataLoader(data, batch_size=2),
            network=net,
            optimizer=torch.optim.SGD(net.parameters(), 0.1),
            loss_function=lambda p, y: torch.nn.functional.cross_entropy(p, y[:, 0]),
            amp=amp,
        )
        return trainer, net

    probed, net_a = make(True)
    assert probed._measure_amp
    with caplog.at_level("INFO", logger="scripts.engines"):
        probed.run()
    assert not probed._measure_amp and probed.amp_device in ("cpu", None)
    message = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("amp: a training step"))
    assert "s in fp32 and" in message and ("training in bf16" in message or "training in fp32" in message)
    assert f"training in {probed.precision}" in message  # what the history and the benchmark records say
    # the same run with the chosen precision fixed from the start, no probe: identical weights and statistics
    chosen, net_b = make("bf16" if probed.amp_device == "cpu" else False)
    assert not chosen._measure_amp
    chosen.run()
    for (name, a), (_, b) in zip(net_a.state_dict().items(), net_b.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_evaluator_measures_amp_in_eval_mode_without_touching_the_network(monkeypatch, caplog) -> None:
    from monai.data import DataLoader

    import scripts.engines as engines

    monkeypatch.setattr(engines, "cpu_supports_bf16", lambda: True)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.Conv2d(4, 2, 1))
    net.train()  # as after a training epoch: the probe must switch to eval mode before its forward passes
    before = {k: v.clone() for k, v in net.state_dict().items()}
    data = [{"image": torch.rand(1, 16, 16), "label": torch.zeros(1, 16, 16)} for _ in range(3)]
    evaluator = engines.Evaluator(
        device=torch.device("cpu"), val_data_loader=DataLoader(data, batch_size=1), network=net, amp=True
    )
    with caplog.at_level("INFO", logger="scripts.engines"):
        evaluator.run()
    assert evaluator.amp_device in ("cpu", None)
    assert any(r.getMessage().startswith("amp: inference on this CPU took") for r in caplog.records)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # running statistics untouched


class _Runtime:
    """Stands in for an :class:`scripts.onnx_inferer.OnnxInferer` of ``backend: auto``: takes ``seconds`` a batch,
    serves while ``stale`` is None."""

    def __init__(self, seconds: float, value: float) -> None:
        self.seconds, self.value, self.stale, self.calls = seconds, value, None, 0

    def refresh(self):
        return self.stale

    def __call__(self, inputs, network=None):
        import time

        self.calls += 1
        time.sleep(self.seconds)
        return torch.full((len(inputs), 2, *inputs.shape[2:]), self.value)


def _slow_network(seconds: float):
    import time

    def network(x: torch.Tensor) -> torch.Tensor:
        time.sleep(seconds)
        return torch.zeros(len(x), 2, *x.shape[2:], dtype=torch.bfloat16 if torch.is_autocast_cpu_enabled() else None)

    return network


def test_auto_backend_runs_the_fastest_candidate_and_measures_again_when_the_exports_change(caplog) -> None:
    from scripts.onnx_inferer import BACKEND_PROBE_REPEATS, AutoBackend

    fast, slow = _Runtime(0.002, 1.0), _Runtime(0.03, 2.0)
    auto = AutoBackend({"fast": fast, "slow": slow})
    network, batch = _slow_network(0.02), torch.rand(1, 3, 8, 8)
    with caplog.at_level("INFO", logger="scripts.onnx_inferer"):
        assert torch.all(auto(batch, network) == 1.0) and auto.choice == "fast"
    assert "backend auto: on the first batch torch" in caplog.text and "running fast" in caplog.text
    # a warm-up and the timed runs each, then the batch itself in the chosen one
    assert fast.calls == BACKEND_PROBE_REPEATS + 2 and slow.calls == BACKEND_PROBE_REPEATS + 1
    auto(batch, network)
    assert fast.calls == BACKEND_PROBE_REPEATS + 3 and slow.calls == BACKEND_PROBE_REPEATS + 1  # measured once
    fast.stale = "exported from another checkpoint"  # retrained: the old export must not serve, measure again
    out = auto(batch, network)
    assert auto.choice == "torch" and torch.all(out == 0.0) and out.dtype == torch.float32
    slow.stale = "retrained"  # nothing exported serves: PyTorch fp32, nothing to time
    assert torch.all(auto(batch, network) == 0.0) and auto.choice == "torch" and auto.seconds == {}


def test_auto_backend_stays_with_pytorch_near_a_tie_and_owns_the_precision() -> None:
    from scripts.onnx_inferer import AutoBackend

    auto = AutoBackend({"tie": _Runtime(0.02, 1.0)}, bf16=True)
    network = _slow_network(0.02)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the caller's autocast does not decide: the measurement does
        out = auto(torch.rand(1, 3, 8, 8), network)
    assert auto.choice in ("torch", "torch-bf16") and sorted(auto.seconds) == ["tie", "torch", "torch-bf16"]
    assert out.dtype == torch.float32


@pytest.mark.parametrize(
    ("shape", "size", "sigma", "dtype"),
    [
        ((3, 560, 768), (256, 256), None, torch.float32),  # PH2's downsizing, two sigmas
        ((1, 97, 64), (48, 64), None, torch.uint8),  # one axis downsized, an integer image
        ((3, 40, 50), (80, 25), 0.8, torch.float32),  # a given sigma applies to the downsized axis only
        ((1, 32, 32), (64, 64), None, torch.float32),  # upsizing: no filter
    ],
)
def test_fast_resized_is_monais_resized_and_inverts_the_same(shape, size, sigma, dtype) -> None:
    """``FastResized`` (the bundles' ``Resized``) gives MONAI's anti-aliased ``Resized`` output exactly, keeps the
    metadata and earlier operations of its input, and ``Invertd`` undoes it as MONAI's."""
    from monai.transforms import Compose, CropForegroundd, Resized

    from scripts.transforms import FastResized, gaussian_smooth

    generator = torch.Generator().manual_seed(0)
    image = (torch.rand(shape, generator=generator) * 255).to(dtype)
    kwargs = {"keys": "image", "spatial_size": size, "mode": "bilinear", "anti_aliasing": True}
    if sigma is not None:
        kwargs["anti_aliasing_sigma"] = sigma
    crop = {"keys": "image", "source_key": "image", "select_fn": lambda x: x >= 0, "margin": 0}
    ours, monais = (Compose([CropForegroundd(**crop), t(**kwargs)]) for t in (FastResized, Resized))
    out, expected = ours({"image": image.clone()})["image"], monais({"image": image.clone()})["image"]
    assert out.dtype == expected.dtype and out.shape == expected.shape
    assert torch.equal(out.as_tensor(), expected.as_tensor())
    assert [op["class"] for op in out.applied_operations] == ["CropForeground", "FastResize"]
    assert torch.equal(ours.inverse({"image": out})["image"], monais.inverse({"image": expected})["image"])

    from monai.transforms import GaussianSmooth, Resize

    from scripts.transforms import FastResize

    array = image.numpy()  # a NumPy array in, as MONAI's Resize takes one
    np.testing.assert_array_equal(
        np.asarray(FastResize(size, mode="bilinear", anti_aliasing=True)(array)),
        np.asarray(Resize(size, mode="bilinear", anti_aliasing=True)(array)),
    )

    smooth = torch.rand(2, 30, 41, generator=generator)
    assert torch.equal(gaussian_smooth(smooth, [0.7, 1.3]), GaussianSmooth(sigma=[0.7, 1.3])(smooth))
    assert torch.equal(gaussian_smooth(smooth, [0.0, 1.3]), GaussianSmooth(sigma=[0.0, 1.3])(smooth))


def test_ensemble_evaluator_measures_amp_over_its_members(monkeypatch, caplog) -> None:
    """The ensemble evaluator decides ``amp: true`` as the single-model one does: both precisions timed over all
    members' forward passes on the first batch, the choice logged, the members' weights untouched."""
    from monai.data import DataLoader

    import scripts.engines as engines
    from scripts.ensemble import EnsembleEvaluator

    monkeypatch.setattr(engines, "cpu_supports_bf16", lambda: True)
    torch.manual_seed(0)
    nets = [torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4)) for _ in range(2)]
    before = [{k: v.clone() for k, v in net.state_dict().items()} for net in nets]
    data = [{"image": torch.rand(1, 16, 16), "label": torch.zeros(1, 16, 16)} for _ in range(2)]
    evaluator = EnsembleEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(data, batch_size=1),
        networks=nets,
        pred_keys=["pred_a", "pred_b"],
        amp=True,
    )
    with caplog.at_level("INFO", logger="scripts.engines"):
        evaluator.run()
    assert evaluator.amp_device in ("cpu", None)
    assert any(r.getMessage().startswith("amp: inference of the 2 members on this CPU took") for r in caplog.records)
    assert all(torch.equal(b[k], v) for net, b in zip(nets, before, strict=True) for k, v in net.state_dict().items())
    assert all(evaluator.state.output[0][key].dtype == torch.float32 for key in ("pred_a", "pred_b"))


def test_auto_backend_leaves_out_a_runtime_that_fails_and_keeps_serving(caplog) -> None:
    """A runtime that cannot run the model (an operator it lacks, an input it refuses) is logged and left out; the
    measurement goes on with the others and is not repeated at every call."""
    from scripts.onnx_inferer import AutoBackend

    class Failing(_Runtime):
        def __call__(self, inputs, network=None):
            self.calls += 1
            raise RuntimeError("unsupported operator")

    broken, fast = Failing(0.0, 0.0), _Runtime(0.002, 1.0)
    auto = AutoBackend({"broken": broken, "fast": fast})
    network, batch = _slow_network(0.02), torch.rand(1, 3, 8, 8)
    with caplog.at_level("WARNING", logger="scripts.onnx_inferer"):
        assert torch.all(auto(batch, network) == 1.0) and auto.choice == "fast"
    assert "broken failed on the first batch, not using it: unsupported operator" in caplog.text
    assert sorted(auto.seconds) == ["fast", "torch"] and broken.calls == 1
    auto(batch, network)
    assert broken.calls == 1  # not measured again while the exports stay the same


def test_members_and_merged_ensembles_take_the_bundles_network_kwargs(tmp_path: Path) -> None:
    """A member trained with ``network_kwargs`` loads (strictly) and merges only when given the same keys."""
    from scripts.ensemble import load_members, merge_members
    from scripts.networks import MeanEnsembleNet, build_network

    six = {"channels": [16, 32, 64, 128, 256, 512], "strides": [2, 2, 2, 2, 2]}
    torch.save(build_network("unet", 1, 2, network_kwargs=six).state_dict(), tmp_path / "model.pt")
    member = [{"name": "a", "network": "unet", "checkpoint": str(tmp_path / "model.pt")}]
    (loaded,) = load_members(member, 1, 2, network_kwargs=six)
    assert loaded.channels[-1] == 512
    with pytest.raises(RuntimeError, match="does not fit"):
        load_members(member, 1, 2)
    merged = torch.load(merge_members(member, 1, 2, tmp_path / "merged", network_kwargs=six), weights_only=True)
    ensemble = build_network("unet", 1, 2, ensemble_size=1, network_kwargs=six)
    MeanEnsembleNet([ensemble]).load_state_dict(merged)


PNG_FLAVOURS = {  # PIL mode -> (array shape suffix, dtype, extra save arguments)
    "L": ((), np.uint8, {}),
    "LA": ((2,), np.uint8, {}),
    "RGB": ((3,), np.uint8, {}),
    "RGBA": ((4,), np.uint8, {}),
    "I;16": ((), np.uint16, {}),  # 16-bit grey: left to PIL
    "P": ((), np.uint8, {}),  # palette: PIL gives the indices, libspng would expand the colours
    "RGB+tRNS": ((3,), np.uint8, {"transparency": (0, 0, 0)}),  # transparency key: left to PIL
    "RGB interlaced": ((3,), np.uint8, {"interlace": 1}),
}


@pytest.mark.parametrize("flavour", sorted(PNG_FLAVOURS))
def test_fast_png_reader_gives_pil_readers_array_and_metadata(tmp_path: Path, flavour: str, monkeypatch) -> None:
    """Every PNG flavour loads to the very array and metadata of MONAI's ``PILReader`` (libspng decodes the 8-bit
    ones, PIL the rest), alone and as a stack of several files, and a JPEG still loads."""
    from monai.data import PILReader
    from monai.transforms import LoadImage
    from PIL import Image

    from scripts.data import FastPNGReader

    suffix, dtype, save = PNG_FLAVOURS[flavour]
    rng = np.random.default_rng(0)
    files = []
    for k in range(2):
        pixels = rng.integers(0, np.iinfo(dtype).max, size=(23, 37, *suffix), dtype=dtype)
        mode = flavour.split()[0].split("+")[0]
        image = Image.fromarray(pixels, mode="L").convert("P") if mode == "P" else Image.fromarray(pixels, mode=mode)
        files.append(tmp_path / f"{k}.png")
        image.save(files[-1], **save)
    Image.fromarray(rng.integers(0, 255, size=(23, 37, 3), dtype=np.uint8)).save(tmp_path / "photo.jpg")
    import scripts.data

    decoded = []  # files libspng decoded: the 8-bit grey, RGB and RGBA flavours, nothing else
    monkeypatch.setattr(
        scripts.data.pyspng, "load", lambda b, load=scripts.data.pyspng.load: decoded.append(1) or load(b)
    )
    for source in [str(files[0]), [str(f) for f in files], str(tmp_path / "photo.jpg")]:
        fast, plain = FastPNGReader(), PILReader()
        (a, meta_a), (b, meta_b) = fast.get_data(fast.read(source)), plain.get_data(plain.read(source))
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
        assert repr(meta_a) == repr(meta_b)  # NaN channel dims of grey images compare equal as text
    assert len(decoded) == (3 if flavour in ("L", "RGB", "RGBA", "RGB interlaced") else 0)  # 1 + 2 files, no JPEG
    loaded = LoadImage(reader=FastPNGReader(), image_only=True)(str(files[0]))
    assert torch.equal(loaded, LoadImage(reader="PILReader", image_only=True)(str(files[0])))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float64])
@pytest.mark.parametrize("clip", [True, False])
def test_fast_scale_intensity_range_is_monais_to_the_bit(dtype: torch.dtype, clip: bool) -> None:
    """Same values, dtype and metadata as MONAI's ``ScaleIntensityRanged`` for images beyond the range, on a
    MetaTensor and a plain tensor, with tracking on and off; a NumPy array goes through MONAI's own path."""
    from monai.data import MetaTensor, set_track_meta
    from monai.transforms import ScaleIntensityRanged

    from scripts.transforms import FastScaleIntensityRanged

    torch.manual_seed(0)
    raw = torch.randint(0, 256, (3, 17, 29)).to(dtype)
    kwargs = {"keys": "image", "a_min": 20.0, "a_max": 200.0, "b_min": -1.0, "b_max": 2.5, "clip": clip}
    ours, monai_way = FastScaleIntensityRanged(**kwargs), ScaleIntensityRanged(**kwargs)
    for track in (True, False):
        set_track_meta(track)
        try:
            for img in (MetaTensor(raw.clone(), meta={"filename_or_obj": "a.png"}), raw.clone(), raw.numpy()):
                a, b = ours({"image": img})["image"], monai_way({"image": img})["image"]
                assert type(a) is type(b) and a.dtype == b.dtype
                assert np.array_equal(np.asarray(a), np.asarray(b))
                if isinstance(img, MetaTensor) and track:
                    assert a.meta["filename_or_obj"] == b.meta["filename_or_obj"] == "a.png"
        finally:
            set_track_meta(True)


def test_shades_of_grey_removes_a_colour_cast_and_leaves_grey_alone() -> None:
    from monai.data import MetaTensor

    from scripts.transforms import ColourConstancyd, shades_of_grey

    torch.manual_seed(0)
    scene = torch.rand(1, 32, 48).repeat(3, 1, 1) * 0.6  # a grey scene ...
    cast = scene * torch.tensor([1.0, 0.8, 0.6]).view(3, 1, 1)  # ... under a warm light
    corrected = shades_of_grey(cast, 6)
    means = corrected.mean(dim=(1, 2))
    assert float(means.max() - means.min()) < 0.02 < float(cast.mean(dim=(1, 2)).max() - cast.mean(dim=(1, 2)).min())
    assert torch.allclose(shades_of_grey(scene, 6), scene, atol=1e-6)  # grey light: unchanged
    assert shades_of_grey(cast, 0) is cast and shades_of_grey(cast[:1], 6) is not None  # off; grey image
    assert torch.equal(shades_of_grey(cast[:1], 6), cast[:1])
    img = MetaTensor(cast, meta={"filename_or_obj": "a.png"})
    out = ColourConstancyd("image", power=6)({"image": img})["image"]
    assert out.meta["filename_or_obj"] == "a.png" and torch.allclose(out.as_tensor(), corrected)
    assert ColourConstancyd("image", power=0)({"image": img})["image"] is img
    with pytest.raises(ValueError, match="colour_constancy_power"):
        ColourConstancyd("image", power=-1)


def test_hair_removal_takes_out_thin_dark_lines_and_keeps_a_lesion() -> None:
    from monai.data import MetaTensor

    from scripts.transforms import HairRemovald, remove_hair

    rows, cols = torch.meshgrid(torch.arange(96.0), torch.arange(112.0), indexing="ij")
    radius = ((rows - 48) ** 2 + (cols - 56) ** 2).sqrt()
    skin = (0.8 - 0.5 * torch.sigmoid((28 - radius) / 1.5)).expand(3, -1, -1).clone()  # a round lesion, soft edge
    assert torch.equal(remove_hair(skin, threshold=0.1, length=11), skin)  # no hair: nothing changes
    hairy = skin.clone()
    hairy[:, 10, :] = 0.1  # a horizontal hair
    for t in range(90):  # a diagonal one, crossing the lesion
        hairy[:, 4 + t // 2, 5 + t] = 0.15
    hairy[:, 88:90, 60:75] = 0.2  # a short thick one
    cleaned = remove_hair(hairy, threshold=0.1, length=11)
    assert cleaned.shape == hairy.shape and cleaned.dtype == hairy.dtype
    error = (cleaned - skin).abs().amax(0)
    hair = (hairy - skin).abs().amax(0) > 0
    assert float(error[hair & (radius > 32)].max()) < 0.02  # hair over the skin: the skin is back
    near_hair = torch.nn.functional.max_pool2d(hair[None, None].float(), 5, 1, 2)[0, 0] > 0
    assert float(error[~near_hair].max()) == 0.0  # the lesion and the skin away from the hairs: untouched
    assert remove_hair(hairy, threshold=0.0) is hairy
    assert torch.equal(remove_hair(hairy[:1], threshold=0.1), cleaned[:1])  # a grey image works the same
    img = MetaTensor(hairy, meta={"filename_or_obj": "a.png"})
    out = HairRemovald("image", threshold=0.1)({"image": img})["image"]
    assert out.meta["filename_or_obj"] == "a.png" and torch.equal(out.as_tensor(), cleaned)
    assert HairRemovald("image", threshold=0.0)({"image": img})["image"] is img
    with pytest.raises(ValueError, match="hair_removal_threshold"):
        HairRemovald("image", threshold=-0.1)
    with pytest.raises(ValueError, match="hair_removal_length"):
        HairRemovald("image", threshold=0.1, length=1)


def test_mask_png_writer_saves_fast_and_lossless(tmp_path, monkeypatch) -> None:
    import numpy as np
    from monai.data import MetaTensor
    from monai.transforms import SaveImaged
    from PIL import Image

    from scripts.data import MaskPNGWriter, mask_writer

    assert mask_writer(".png") is MaskPNGWriter and mask_writer(".PNG") is MaskPNGWriter
    assert mask_writer(".nii.gz") is None  # MONAI picks NIfTI's writer by extension
    levels = []
    save = Image.Image.save
    monkeypatch.setattr(
        Image.Image, "save", lambda self, fp, *a, **k: levels.append(k.get("compress_level")) or save(self, fp, *a, **k)
    )
    mask = np.zeros((1, 40, 30), dtype=np.float32)
    mask[0, 5:20, 8:25] = 1
    mask[0, 25:35, 2:6] = 2
    img = MetaTensor(torch.as_tensor(mask), meta={"filename_or_obj": str(tmp_path / "case.png")})
    saver = SaveImaged(
        "pred",
        output_dir=str(tmp_path / "out"),
        output_ext=".png",
        output_postfix="seg",
        output_dtype=np.uint8,
        separate_folder=False,
        print_log=False,
        writer=mask_writer(".png"),
    )
    saver({"pred": img})
    assert levels == [1]
    written = np.asarray(Image.open(tmp_path / "out" / "case_seg.png"))
    assert np.array_equal(written, mask[0].T.astype(np.uint8))  # MONAI's axis order: x first


@pytest.mark.parametrize("length", [3, 5, 11, 15, 31])
def test_line_dilation_by_doubling_equals_the_pixel_by_pixel_reduction(length: int) -> None:
    import torch.nn.functional as F

    from scripts.transforms import _LINE_DIRECTIONS, _line_extreme

    torch.manual_seed(length)
    x = torch.rand(1, 3, 37, 53)
    radius = length // 2
    padded = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    for dy, dx in _LINE_DIRECTIONS:
        views = [
            padded[..., radius + dy * t : radius + dy * t + 37, radius + dx * t : radius + dx * t + 53]
            for t in range(-radius, radius + 1)
        ]
        for reduce, stacked in (
            (torch.maximum, torch.stack(views).amax(0)),
            (torch.minimum, torch.stack(views).amin(0)),
        ):
            assert torch.equal(_line_extreme(x, (dy, dx), radius, reduce), stacked), (dy, dx)
