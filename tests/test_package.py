"""A packaged bundle downloads with ``monai.bundle download`` from a local HTTP server and runs on its own."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import stat
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from bundle_utils import (
    ROOT,
    single_thread_module,  # noqa: F401  (autouse fixture: one torch thread)
    train,
    use_bundle,
)
from PIL import Image

from lesiondata.packaging import package_bundle

NAME = "ph2_melanoma"


@pytest.fixture(scope="module")
def packaged(tmp_path_factory) -> dict[str, Path]:
    """PH2 trained for two epochs into a temporary models folder (never the repository's), exported, packaged."""
    from monai.networks.utils import convert_to_onnx

    from lesiondata.synthetic import make_demo_dataset

    root = tmp_path_factory.mktemp("package")
    data = make_demo_dataset(NAME, root / "data", n=20, seed=1)
    models = root / "models"
    train(NAME, data, models, epochs=2)
    use_bundle(NAME)
    from scripts.networks import build_network

    net = build_network("unet", 3, 2, dropout=0.1)
    net.load_state_dict(torch.load(models / "model.pt", weights_only=True))
    net.eval()
    torch.jit.save(torch.jit.script(net), models / "model.ts")
    onnx = convert_to_onnx(
        net,
        [torch.rand(1, 3, 64, 64)],
        use_trace=True,
        dynamo=False,
        input_names=["image"],
        dynamic_axes={"image": {0: "b", 2: "h", 3: "w"}},
    )
    (models / "model.onnx").write_bytes(onnx.SerializeToString())
    zip_path = package_bundle(NAME, dist_dir=root / "dist", models_dir=models)
    return {"root": root, "data": data, "models": models, "zip": zip_path}


@pytest.fixture
def server(packaged: dict[str, Path]) -> Iterator[str]:
    """Serve the dist folder on 127.0.0.1 at a free port; always shut down."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(packaged["zip"].parent))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def test_zip_holds_real_files_and_hashed_weights(packaged: dict[str, Path]) -> None:
    assert packaged["zip"].name == "ph2_melanoma_v0.1.0.zip"
    assert not list((ROOT / "bundles" / NAME / "models").glob("model.ts")), "the repository's models/ must be untouched"
    with zipfile.ZipFile(packaged["zip"]) as archive:
        infos = {i.filename: i for i in archive.infolist()}
        listing = yaml.safe_load(archive.read(f"{NAME}/large_files.yml"))["large_files"]
        for entry in listing:
            content = archive.read(f"{NAME}/{entry['path']}")
            assert entry["hash_type"] == "sha256" and entry["hash_val"] == hashlib.sha256(content).hexdigest()
            assert entry["size"] == len(content) == (packaged["models"] / Path(entry["path"]).name).stat().st_size
    assert [e["path"] for e in listing] == ["models/model.pt", "models/model.ts", "models/model.onnx"]
    names = set(infos)
    shared = ROOT / "bundles" / "_shared" / "scripts"
    assert {f"{NAME}/scripts/{p.name}" for p in shared.glob("*.py")} <= names
    for required in (
        "LICENSE",
        "docs/README.md",
        "configs/inference.json",
        "configs/metadata.json",
        "configs/inference_onnx.json",
        "configs/ensemble_inference.json",
        "configs/logging.conf",
    ):
        assert f"{NAME}/{required}" in names, required
    assert all(n.startswith(f"{NAME}/") and "__pycache__" not in n for n in names)
    assert not any(stat.S_ISLNK(i.external_attr >> 16) for i in infos.values())


def test_downloaded_bundle_runs_outside_the_repository(packaged: dict[str, Path], server: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update({"NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1", "OMP_NUM_THREADS": "1"})
    url = f"{server}/{packaged['zip'].name}"
    download = [
        sys.executable,
        "-m",
        "monai.bundle",
        "download",
        "--name",
        NAME,
        "--url",
        url,
        "--bundle_dir",
        str(tmp_path / "zoo"),
    ]
    result = subprocess.run(download, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    bundle = tmp_path / "zoo" / NAME
    assert (bundle / "scripts" / "ensemble.py").is_file() and not (bundle / "scripts").is_symlink()
    images = tmp_path / "images"
    images.mkdir()
    sources = sorted((packaged["data"] / "imagesTr").iterdir())[:3]
    for path in sources:
        (images / path.name).write_bytes(path.read_bytes())
    run = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        "configs/inference.json",
        "--input_dir",
        str(images),
        "--output_dir",
        str(tmp_path / "out"),
    ]
    assert not str(bundle.resolve()).startswith(str(ROOT))
    result = subprocess.run(run, cwd=bundle, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    for path in sources:
        mask = np.asarray(Image.open(tmp_path / "out" / f"{path.stem}_seg.png"))
        assert mask.shape == np.asarray(Image.open(path)).shape[:2]
        assert set(np.unique(mask)) <= {0, 1}


def test_verification_rejects_weights_of_another_network(packaged: dict[str, Path], tmp_path: Path) -> None:
    use_bundle(NAME)
    from scripts.networks import build_network

    models = tmp_path / "models"
    models.mkdir()
    torch.save(build_network("segresnet", 3, 2).state_dict(), models / "model.pt")
    with pytest.raises(RuntimeError, match="failed verification.*Missing key"):
        package_bundle(NAME, dist_dir=tmp_path / "dist", models_dir=models)
    assert not list((tmp_path / "dist").iterdir()), "a zip that fails verification is not left behind"
