"""End-to-end tests of ``labelapp`` (the MONAI Label app) over real HTTP.

A session fixture starts the real server (``python -m monailabel.main start_server``) on a free loopback port with a
small synthetic study folder (non-square RGB PNGs and JPEGs: a dark disc, the "lesion", on a skin-coloured
background) and a copy of ``bundles/ph2_melanoma`` without weights, shrunk for CPU through ``--conf
bundle_overrides``. The tests drive it like 3D Slicer's MONAI Label plugin does (``MONAILabelClient``, Slicer's
inference parameters, labels exported as one-slice NIfTI / ``.seg.nrrd`` on the image geometry) and check the
answers: geometry, lesion position, stored training labels, training, scoring and 4xx answers to bad input.
The server is always stopped at the end (its whole process group: training subprocesses included).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nrrd
import numpy as np
import pytest
import requests
import SimpleITK as sitk
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `labelapp` is imported from the repository (it is not an installed package)

from labelapp.lib.errors import UnprocessableLabel  # noqa: E402
from labelapp.lib.labels import read_label, to_training_label  # noqa: E402
from labelapp.lib.launcher import LocalServer  # noqa: E402
from labelapp.lib.server import InferPool  # noqa: E402
from labelapp.lib.writer import to_row_major  # noqa: E402

BUNDLE = "ph2_melanoma"
#: Small and fast for CPU tests: 64x64 network input, no loader workers or cache, no random affine/intensity.
OVERRIDES = {"spatial_size": [64, 64], "num_workers": 0, "cache_rate": 0, "augment_prob": 0, "learning_rate": 0.01}
WIDTH, HEIGHT = 96, 64  # non-square: a transposed label cannot pass
N_CASES = 10
LABELLED = [f"case{i:02d}" for i in range(6)]  # saved as Slicer would, then trained on
HELD_OUT = ["case08", "case09"]  # never labelled: inference is checked on these (a PNG and a JPEG)
TRAIN_EPOCHS = 12
START_TIMEOUT_S = 180
TRAIN_TIMEOUT_S = 300


# ---------------------------------------------------------------------------------------------------------------
# Synthetic data and Slicer-style label files
# ---------------------------------------------------------------------------------------------------------------


def make_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """An RGB (H, W, 3) image with a dark disc on a skin-coloured background, and its (H, W) uint8 mask."""
    cx, cy = int(rng.integers(16, WIDTH - 16)), int(rng.integers(16, HEIGHT - 16))
    radius = int(rng.integers(9, 14))
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    mask = ((xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2).astype(np.uint8)
    image = np.empty((HEIGHT, WIDTH, 3), dtype=float)
    image[:] = (205, 160, 140)
    image[mask == 1] = (90, 50, 35)
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def slicer_nifti(image_path: Path, mask_hw: np.ndarray, out: Path) -> Path:
    """Write ``mask_hw`` as Slicer exports a label map of a 2D image: a 3D one-slice volume on the image geometry."""
    ref = sitk.ReadImage(str(image_path))
    label = sitk.GetImageFromArray(mask_hw[None].astype(np.uint8))
    label.SetSpacing((*ref.GetSpacing(), 1.0))
    label.SetOrigin((*ref.GetOrigin(), 0.0))
    direction = np.eye(3)
    direction[:2, :2] = np.reshape(ref.GetDirection(), (2, 2))
    label.SetDirection(direction.ravel().tolist())
    sitk.WriteImage(label, str(out))
    return out


def slicer_seg_nrrd(mask_hw: np.ndarray, out: Path, name: str = "lesion") -> Path:
    """Write ``mask_hw`` as a Slicer ``.seg.nrrd`` cropped to the segment's extent (with its extent offset)."""
    ys, xs = np.nonzero(mask_hw)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    data = mask_hw[y0:y1, x0:x1].T[..., None].astype(np.uint8)  # (x, y, z)
    header = {
        "type": "unsigned char",
        "dimension": 3,
        "space": "left-posterior-superior",
        "space directions": np.eye(3),
        "space origin": np.array([float(x0), float(y0), 0.0]),
        "kinds": ["domain", "domain", "domain"],
        "encoding": "gzip",
        "Segment0_ID": "Segment_1",
        "Segment0_Name": name,
        "Segment0_LabelValue": "1",
        "Segment0_Layer": "0",
        "Segmentation_ReferenceImageExtentOffset": f"{x0} {y0} 0",
    }
    nrrd.write(str(out), data, header)
    return out


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# Fixtures: study folder, bundle copy, server
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The studies folder (5 PNG + 5 JPEG, non-square RGB) and the true masks by image id."""
    folder = tmp_path_factory.mktemp("studies")
    rng = np.random.default_rng(7)
    masks, paths = {}, {}
    for i in range(N_CASES):
        image, mask = make_case(rng)
        image_id = f"case{i:02d}"
        path = folder / f"{image_id}{'.png' if i % 2 == 0 else '.jpg'}"
        Image.fromarray(image).save(path, quality=95)
        masks[image_id], paths[image_id] = mask, path
    return {"folder": folder, "masks": masks, "paths": paths, "work": tmp_path_factory.mktemp("work")}


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the repository's bundle, ``scripts`` resolved, without weights or outputs."""
    source = REPO / "bundles" / BUNDLE
    if not (source / "configs" / "inference.json").exists():
        pytest.skip(f"{source} is not in this checkout")
    target = tmp_path_factory.mktemp("bundles") / BUNDLE
    ignore = shutil.ignore_patterns("*.pt", "*.ts", "*.onnx", "eval", "outputs", "runs", "__pycache__")
    shutil.copytree(source, target, symlinks=False, ignore=ignore)
    return target.parent


@pytest.fixture(scope="session")
def server(study: dict, bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Start the real server on 127.0.0.1:<free port>; stop it (and its children) at the end, whatever happens."""
    app_dir = tmp_path_factory.mktemp("app") / "labelapp"  # a copy, so the tests never touch labelapp/model
    shutil.copytree(REPO / "labelapp", app_dir, ignore=shutil.ignore_patterns("model", "logs", "__pycache__"))
    local = LocalServer(
        study["folder"],
        {"models": BUNDLE, "bundle_dir": str(bundle_dir), "bundle_overrides": OVERRIDES},
        app_dir=app_dir,
        log=tmp_path_factory.mktemp("logs") / "server.log",
        env={
            "MONAI_LABEL_AUTO_UPDATE_SCORING": "false",  # scoring is requested explicitly below
            "OMP_NUM_THREADS": "1",  # the test machine is small and shared; see labelapp/README.md
            # Any attempt to reach the internet fails fast: the server must start and work offline.
            "HTTP_PROXY": "http://127.0.0.1:9",
            "HTTPS_PROXY": "http://127.0.0.1:9",
            "NO_PROXY": "127.0.0.1,localhost",
        },
        start_timeout=START_TIMEOUT_S,
    )
    try:
        try:
            local.start()
        except RuntimeError as e:
            pytest.fail(str(e))
        yield {
            "url": local.url,
            "log": local.log,
            "model": bundle_dir / BUNDLE / "models" / "model.pt",
            "app_dir": app_dir,
        }
    finally:
        local.stop()


def _log_tail(server: dict, lines: int = 60) -> str:
    return "\n".join(server["log"].read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="session")
def client(server: dict, study: dict):
    """``MONAILabelClient``, the class 3D Slicer's plugin uses."""
    from monailabel.client import MONAILabelClient

    tmp = study["work"] / "client"
    tmp.mkdir(exist_ok=True)
    return MONAILabelClient(server["url"], tmpdir=str(tmp))


def wait_for_training(server: dict, timeout: float = TRAIN_TIMEOUT_S) -> dict:
    """Poll ``GET /train/`` until the last task is no longer running; return it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task = requests.get(f"{server['url']}/train/", timeout=10).json()
        if task.get("status") not in ("SUBMITTED", "RUNNING"):
            return task
        time.sleep(1)
    pytest.fail(f"training still running after {timeout} s:\n{_log_tail(server)}")


def train(server: dict, epochs: int) -> dict:
    response = requests.post(f"{server['url']}/train/{BUNDLE}", json={"max_epochs": epochs, "val_split": 0.2})
    assert response.status_code == 200, response.text
    task = wait_for_training(server)
    assert task["status"] == "DONE", f"{task}\n{_log_tail(server)}"
    return requests.get(f"{server['url']}/info/", timeout=10).json()["train_stats"][BUNDLE]


@pytest.fixture(scope="session")
def labelled(client, study: dict) -> list[str]:
    """Save labels for ``LABELLED`` as Slicer does: one-slice NIfTI, and one cropped ``.seg.nrrd``."""
    work = study["work"]
    for image_id in LABELLED:
        mask = study["masks"][image_id]
        if image_id == LABELLED[-1]:
            label = slicer_seg_nrrd(mask, work / f"{image_id}.seg.nrrd")
        else:
            label = slicer_nifti(study["paths"][image_id], mask, work / f"{image_id}.nii.gz")
        client.save_label(image_id, str(label), params={"label_info": [{"name": "lesion", "idx": 1}]})
    return LABELLED


@pytest.fixture(scope="session")
def trained(server: dict, labelled: list[str]) -> dict:
    """Train the served model from scratch on the saved labels; return the run's stats."""
    return train(server, TRAIN_EPOCHS)


# ---------------------------------------------------------------------------------------------------------------
# Unit checks of the pieces most likely to transpose or mislabel
# ---------------------------------------------------------------------------------------------------------------


def test_to_row_major_uses_the_image_size_not_a_guess() -> None:
    label_xy = np.zeros((WIDTH, HEIGHT))  # MONAI / ITK order: x first
    label_xy[70, 10] = 1
    row_major = to_row_major(label_xy[None], (WIDTH, HEIGHT))
    assert row_major.shape == (HEIGHT, WIDTH) and row_major[10, 70] == 1
    assert to_row_major(row_major, (WIDTH, HEIGHT)) is row_major  # already (H, W): unchanged
    with pytest.raises(ValueError):
        to_row_major(np.zeros((WIDTH, WIDTH)), (WIDTH, HEIGHT))


def test_labels_are_mapped_by_segment_name_and_position(tmp_path: Path) -> None:
    mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    mask[20:30, 50:70] = 1
    read, names = read_label(str(slicer_seg_nrrd(mask, tmp_path / "x.seg.nrrd", name="Lesion")), (HEIGHT, WIDTH))
    np.testing.assert_array_equal(to_training_label(read, {"lesion": 1}, names), mask)
    # Slicer numbers exported segments 1..N in label_info order ("idx" also counts skipped ones).
    two = mask * 2
    out = to_training_label(two, {"lesion": 1}, label_info=[{"name": "other"}, {"name": "lesion", "idx": 3}])
    np.testing.assert_array_equal(out, mask)
    with pytest.raises(UnprocessableLabel, match="not a label of the served models"):
        to_training_label(mask, {"lesion": 1}, label_info=[{"name": "tumour"}])
    np.testing.assert_array_equal(to_training_label(mask * 255, {"lesion": 1}), mask)  # 0/255 mask, one label


def test_infer_pool_runs_workers_queues_the_next_and_refuses_the_rest() -> None:
    from fastapi import HTTPException

    pool, release = InferPool(workers=1, queue=1), threading.Event()

    async def scenario() -> list:
        running = asyncio.ensure_future(pool.run(release.wait, 30))  # occupies the worker
        waiting = asyncio.ensure_future(pool.run(lambda: "queued ran"))  # waits for it
        await asyncio.sleep(0.05)
        with pytest.raises(HTTPException) as refused:
            await pool.run(lambda: "never")
        assert refused.value.status_code == 503 and "busy" in refused.value.detail
        assert refused.value.headers == {"Retry-After": "1"}
        release.set()
        results = await asyncio.gather(running, waiting)
        assert await pool.run(lambda: "free again") == "free again"  # slots were given back
        return results

    assert asyncio.run(scenario()) == [True, "queued ran"]


# ---------------------------------------------------------------------------------------------------------------
# Server
# ---------------------------------------------------------------------------------------------------------------


class _StubInferTask:
    """The parts of ``LesionInferTask`` that scoring calls: a random two-class softmax per pass, calls counted."""

    threads, _config, output_label_key = 0, {"device": "cpu"}, "pred"

    def __init__(self) -> None:
        self.pre_calls, self.passes = 0, 0

    def pre_transforms(self, data: dict) -> list:
        return []

    def post_transforms(self, data: dict) -> list:
        return []

    def run_pre_transforms(self, data: dict, transforms: list) -> dict:
        self.pre_calls += 1
        return {**data, "image": torch.zeros(3, 8, 8)}

    def run_inferer(self, data: dict, device: str) -> dict:
        self.passes += 1
        return {**data, "pred": torch.softmax(torch.randn(2, 8, 8), 0)}

    def run_post_transforms(self, data: dict, transforms: list) -> dict:
        return data


class _StubDatastore:
    def __init__(self) -> None:
        self.info: dict[str, dict] = {}

    def get_image_uri(self, image_id: str) -> str:
        return f"/studies/{image_id}.png"

    def update_image_info(self, image_id: str, info: dict) -> None:
        self.info.setdefault(image_id, {}).update(info)


def test_epistemic_scoring_reads_each_image_once_and_samples_every_pass() -> None:
    from labelapp.lib.scoring import LesionEpistemicScoring

    scoring = object.__new__(LesionEpistemicScoring)  # no bundle needed: the infer task is a stub
    scoring.infer_task, scoring.dimension, scoring.model = _StubInferTask(), 2, BUNDLE
    scoring.key_output_entropy, scoring.key_output_ts = f"epistemic_entropy_{BUNDLE}", f"epistemic_ts_{BUNDLE}"
    datastore = _StubDatastore()
    scoring.run_scoring("img", simulation_size=4, model_ts=123, datastore=datastore)
    assert (scoring.infer_task.pre_calls, scoring.infer_task.passes) == (1, 4)
    info = datastore.info["img"]
    assert info[f"epistemic_ts_{BUNDLE}"] == 123
    # mean entropy of the mean of 4 random two-class softmaxes: above 0, at most ln 2
    assert 0 < info[f"epistemic_entropy_{BUNDLE}"] <= np.log(2) + 1e-6


def test_info_lists_models_with_labels(client) -> None:
    info = client.info()
    model = info["models"][BUNDLE]
    assert model["labels"] == {"lesion": 1}
    assert model["dimension"] == 2 and model["type"] == "segmentation"
    assert BUNDLE in info["trainers"]
    assert {"random", "first", "epistemic", f"epistemic_{BUNDLE}"} <= set(info["strategies"])
    assert f"epistemic_{BUNDLE}" in info["scoring"]
    assert info["labels"] == ["lesion"]


def test_activelearning_random_returns_an_unlabelled_sample(client, study: dict) -> None:
    sample = client.next_sample("random", {})
    assert sample["id"] in study["paths"]
    assert Path(sample["path"]) == study["paths"][sample["id"]].resolve()


def test_slicer_labels_are_stored_as_training_pngs(labelled: list[str], study: dict) -> None:
    for image_id in labelled:
        stored = study["folder"] / "labels" / "final" / f"{image_id}.png"
        with Image.open(stored) as label:
            assert label.mode == "L" and label.size == (WIDTH, HEIGHT)
            np.testing.assert_array_equal(np.asarray(label), study["masks"][image_id])
    assert not list((study["folder"] / "labels" / "final").glob("*.nii.gz"))


def test_training_publishes_a_model_trained_on_the_saved_labels(server: dict, trained: dict, client) -> None:
    used = {Path(name).stem for name in trained["train_images"] + trained["val_images"]}
    assert used == set(LABELLED)
    assert server["model"].exists()
    assert client.info()["models"][BUNDLE]["trained"] is True


@pytest.mark.parametrize("image_id", HELD_OUT)
def test_infer_with_slicer_params_returns_nrrd_on_the_image_geometry(client, trained, study: dict, image_id) -> None:
    result, params = client.infer(BUNDLE, image_id, {"result_extension": ".nrrd", "result_dtype": "uint8"})
    assert result.endswith(".nrrd")
    label, image = sitk.ReadImage(result), sitk.ReadImage(str(study["paths"][image_id]))  # as Slicer reads both
    assert label.GetSize() == image.GetSize() == (WIDTH, HEIGHT)
    assert label.GetSpacing() == image.GetSpacing()
    assert label.GetOrigin() == image.GetOrigin()
    assert label.GetDirection() == image.GetDirection()
    assert label.GetPixelID() == sitk.sitkUInt8
    predicted, truth = sitk.GetArrayFromImage(label), study["masks"][image_id]
    assert set(np.unique(predicted)) <= {0, 1}
    dice = 2 * np.sum(predicted * truth) / (predicted.sum() + truth.sum())
    centre_error = np.abs(np.argwhere(predicted).mean(0) - np.argwhere(truth).mean(0))
    assert dice > 0.5 and centre_error.max() < 5, f"dice {dice:.2f}, centre error (rows, cols) {centre_error}"
    assert params["label_names"] == {"lesion": 1}
    assert params["findings"]["findings"][0]["found"] is True


def test_infer_png_result_for_web_clients(client, trained) -> None:
    result, _ = client.infer(BUNDLE, HELD_OUT[1], {"result_extension": ".png"})
    with Image.open(result) as label:
        assert label.format == "PNG" and label.mode == "L" and label.size == (WIDTH, HEIGHT)


def test_concurrent_infers_are_answered_or_refused_as_busy(server: dict, trained) -> None:
    def infer(i: int) -> requests.Response:
        image = HELD_OUT[i % 2]
        data = {"params": json.dumps({"result_extension": ".nrrd", "result_dtype": "uint8"})}
        return requests.post(f"{server['url']}/infer/{BUNDLE}?image={image}", data=data, timeout=120)

    with ThreadPoolExecutor(max_workers=16) as clients:
        responses = list(clients.map(infer, range(32)))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503}, statuses
    assert statuses.count(200) >= 1
    for r in responses:
        if r.status_code == 503:
            assert r.headers["Retry-After"] == "1" and r.json()["detail"].startswith("busy")
        else:
            assert "multipart" in r.headers["content-type"] and b".nrrd" in r.content[:4096]


def test_a_new_label_is_used_by_the_next_training_which_changes_the_model(
    server: dict, client, trained: dict, study: dict
) -> None:
    before = sha256(server["model"])
    new_id = "case06"
    label = slicer_nifti(study["paths"][new_id], study["masks"][new_id], study["work"] / f"{new_id}.nii.gz")
    client.save_label(new_id, str(label), params={"label_info": [{"name": "lesion", "idx": 1}]})
    stats = train(server, epochs=1)
    assert new_id in {Path(name).stem for name in stats["train_images"] + stats["val_images"]}
    assert sha256(server["model"]) != before
    result, _ = client.infer(BUNDLE, HELD_OUT[0], {"result_extension": ".nrrd", "result_dtype": "uint8"})
    assert sitk.ReadImage(result).GetSize() == (WIDTH, HEIGHT)


def test_training_re_exports_the_onnx_model_that_inference_then_runs(server: dict, client, trained: dict) -> None:
    """With an export beside the weights (``--conf export_onnx auto``), a training re-exports it from the new
    ``model.pt``; inference (``backend: auto``) never runs a stale export: it checks the new one in both runtimes
    and times them against PyTorch."""
    import onnx
    from bundle_utils import use_bundle

    from lesiondata.export import export_bundle

    models = server["model"].parent
    export_bundle(models.parent, ckpt_dir=models, formats="onnx", quiet=True, spatial_size=OVERRIDES["spatial_size"])
    use_bundle(BUNDLE)
    from scripts.onnx_inferer import SOURCE_KEY

    before = sha256(models / "model.onnx")
    stats = train(server, epochs=1)
    assert "onnx_export_error" not in stats, stats["onnx_export_error"]
    assert stats["onnx"] == str(models / "model.onnx") and stats["onnx_export_s"] < 120
    stamp = {p.key: p.value for p in onnx.load(str(models / "model.onnx")).metadata_props}[SOURCE_KEY]
    assert stamp == sha256(server["model"]) and sha256(models / "model.onnx") != before
    assert not list(models.glob(".model.onnx.*"))  # written beside and renamed into place
    result, _ = client.infer(BUNDLE, HELD_OUT[0], {"result_extension": ".nrrd", "result_dtype": "uint8"})
    assert sitk.ReadImage(result).GetSize() == (WIDTH, HEIGHT)
    log = server["log"].read_text(errors="replace")
    for runtime in ("onnxruntime", "openvino"):
        assert f"{runtime} runs {models / 'model.onnx'}" in log, _log_tail(server)
    assert "backend auto: on the first batch torch" in log, _log_tail(server)


def test_multi_gpu_training_path_runs_torchrun_and_publishes(server: dict, trained: dict) -> None:
    """MONAI Label's multi-GPU route (torchrun over ``multi_gpu_train.json``), forced on the CPU: two gloo ranks."""
    before = sha256(server["model"])
    request = {"max_epochs": 1, "val_split": 0.2, "force_multi_gpu": True, "gpus": "0,1"}
    response = requests.post(f"{server['url']}/train/{BUNDLE}", json=request)
    assert response.status_code == 200, response.text
    task = wait_for_training(server)
    assert task["status"] == "DONE", f"{task}\n{_log_tail(server)}"
    log = _log_tail(server, 400)
    assert "torch.distributed.run" in log and "--nproc_per_node=2" in log, log
    assert sha256(server["model"]) != before
    # the merged config MONAI Label writes for torchrun is kept out of the bundle
    assert not (server["model"].parent.parent / "configs" / "monailabel_train.json").exists()


def test_a_training_stopped_midway_leaves_the_old_model_serving(server: dict, trained: dict) -> None:
    before = sha256(server["model"])
    response = requests.post(f"{server['url']}/train/{BUNDLE}", json={"max_epochs": 500})
    assert response.status_code == 200, response.text
    # Wait until the run has saved a checkpoint of its own (in its staging folder), then stop it.
    staging = server["app_dir"] / "model" / BUNDLE
    deadline = time.monotonic() + TRAIN_TIMEOUT_S
    while not list(staging.glob("staging-*/model.pt")):
        assert time.monotonic() < deadline, _log_tail(server)
        assert requests.get(f"{server['url']}/train/").json()["status"] in ("SUBMITTED", "RUNNING")
        time.sleep(0.5)
    stopped = requests.delete(f"{server['url']}/train/", timeout=30).json()
    assert stopped["status"] == "STOPPED"
    assert sha256(server["model"]) == before
    assert not list(server["model"].parent.glob(".publishing-*"))
    served = requests.post(f"{server['url']}/infer/{BUNDLE}?image={HELD_OUT[0]}&output=json", timeout=60)
    assert served.status_code == 200, served.text


def test_epistemic_scoring_scores_unlabelled_images(server: dict, client, trained) -> None:
    method = f"epistemic_{BUNDLE}"
    response = requests.post(f"{server['url']}/scoring/{method}?run_sync=true", json={"simulation_size": 3})
    assert response.status_code == 200, response.text
    assert response.json()["executed"] >= 1
    objects = client.datastore()["objects"]
    unlabelled = [k for k, v in objects.items() if "final" not in v["labels"]]
    scores = [objects[k]["image"]["info"].get(f"epistemic_entropy_{BUNDLE}") for k in unlabelled]
    assert all(isinstance(s, float) and s >= 0 for s in scores), scores
    # MC dropout samples differ (an exported model, served by backend auto, has no dropout: every entropy 0 there)
    assert any(s > 0 for s in scores), scores
    assert client.next_sample("epistemic", {})["id"] in unlabelled
    # scored with these weights already: a second call skips every image (MONAI Label's own check never did)
    again = requests.post(f"{server['url']}/scoring/{method}?run_sync=true", json={"simulation_size": 3})
    assert again.status_code == 200, again.text
    assert again.json()["executed"] == 0 and again.json()["skipped"] == again.json()["total"] == len(unlabelled)
    assert client.datastore()["objects"][unlabelled[0]]["image"]["info"][f"epistemic_entropy_{BUNDLE}"] == scores[0]


def test_upload_keeps_rgb_images_byte_for_byte(server: dict, study: dict) -> None:
    source = study["paths"]["case00"]
    with open(source, "rb") as f:
        response = requests.put(f"{server['url']}/datastore/image?image=uploaded_rgb", files={"file": ("u.png", f)})
    assert response.status_code == 200, response.text
    stored = study["folder"] / "uploaded_rgb.png"
    assert stored.read_bytes() == source.read_bytes()
    with Image.open(stored) as image:
        assert image.mode == "RGB"


# ---------------------------------------------------------------------------------------------------------------
# Bad input: a 4xx with a message, the server stays up, the datastore is unchanged
# ---------------------------------------------------------------------------------------------------------------


def _datastore_snapshot(server: dict, study: dict) -> tuple:
    files = sorted(
        (str(p.relative_to(study["folder"])), p.stat().st_size)
        for p in study["folder"].rglob("*")
        if p.is_file() and p.name not in (".lock", "datastore_v2.json")
    )
    objects = requests.get(f"{server['url']}/datastore/?output=all", timeout=10).json()["objects"]
    return files, json.dumps(objects, sort_keys=True)


#: name -> (method, path, (form field, file), form data). Files are made by the ``bad_files`` fixture.
BAD_REQUESTS: dict[str, tuple[str, str, tuple[str, str] | None, dict | None]] = {
    "non-image upload": ("PUT", "/datastore/image?image=notes", ("file", "notes.txt"), None),
    "corrupt png": ("PUT", "/datastore/image?image=corrupt", ("file", "corrupt.png"), None),
    "label size differs": ("PUT", "/datastore/label?image=case07&tag=final", ("label", "transposed.nii.gz"), None),
    "label for unknown image": ("PUT", "/datastore/label?image=nope&tag=final", ("label", "transposed.nii.gz"), None),
    "non-image sent to infer": ("POST", f"/infer/{BUNDLE}?image=upload", ("file", "notes.txt"), None),
    "unknown model": ("POST", "/infer/no_such_model?image=case07", None, None),
    "unknown result format": (
        "POST",
        f"/infer/{BUNDLE}?image=case07",
        None,
        {"params": json.dumps({"result_extension": ".jpg"})},
    ),
    "dotdot image id (infer)": ("POST", f"/infer/{BUNDLE}?image=../../etc/passwd", None, None),
    "dotdot image id (upload)": ("PUT", "/datastore/image?image=../escaped", ("file", "good.png"), None),
    "dotdot image id (label)": ("PUT", "/datastore/label?image=../case07&tag=final", ("label", "good.nii.gz"), None),
    "dotdot image id (download)": ("GET", "/datastore/image?image=../case07.jpg", None, None),
    "unknown trainer": ("POST", "/train/no_such_model", None, None),
    "unknown strategy": ("POST", "/activelearning/no_such_strategy", None, None),
}


@pytest.fixture(scope="session")
def bad_files(study: dict) -> Path:
    """A folder with the files the bad requests upload."""
    folder = study["work"] / "bad"
    folder.mkdir(exist_ok=True)
    (folder / "notes.txt").write_text("not an image")
    png = study["paths"]["case00"].read_bytes()
    (folder / "corrupt.png").write_bytes(png[: len(png) // 2])
    (folder / "good.png").write_bytes(png)
    slicer_nifti(study["paths"]["case07"], study["masks"]["case07"], folder / "good.nii.gz")
    transposed = study["masks"]["case07"].T.copy()  # (W, H): the classic transposed label
    sitk.WriteImage(sitk.GetImageFromArray(transposed[None]), str(folder / "transposed.nii.gz"))
    return folder


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_input_gets_a_4xx_and_changes_nothing(server: dict, study: dict, bad_files: Path, case: str) -> None:
    method, path, upload, data = BAD_REQUESTS[case]
    before = _datastore_snapshot(server, study)
    if upload:
        field, name = upload
        with open(bad_files / name, "rb") as f:
            response = requests.request(method, server["url"] + path, files={field: (name, f)}, timeout=60)
    else:
        response = requests.request(method, server["url"] + path, data=data, timeout=60)
    assert 400 <= response.status_code < 500, f"{case}: {response.status_code} {response.text}"
    assert response.json().get("detail"), response.text
    assert requests.get(f"{server['url']}/info/", timeout=10).status_code == 200
    assert _datastore_snapshot(server, study) == before
    assert not (study["folder"].parent / "escaped.png").exists()
