"""Package a bundle as a self-contained zip that ``python -m monai.bundle download --url ...`` installs.

The zip holds one folder ``<bundle>/`` with ``configs/``, ``docs/``, ``LICENSE``, the ``scripts`` package as real
files (the repository links it to ``bundles/_shared/scripts``), the weights ``models/model.pt`` and, when exported,
``models/model.ts`` and ``models/model.onnx``, plus ``large_files.yml`` (model-zoo style: ``path``, ``hash_val``
(sha256), ``hash_type``, ``size`` and, when a base URL is given, ``url``). The zip is verified by extracting it in a
fresh temporary folder and running :mod:`lesiondata.bundle_check` there in an isolated interpreter.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import yaml

from .bundle_check import FAILED, sha256
from .bundles import REPO, resolve_bundle
from .export import check_onnx_source

__all__ = ["LARGE_FILES", "bundle_files", "package_bundle", "verify_package"]

LARGE_FILES = ("models/model.pt", "models/model.ts", "models/model.onnx")
SKIPPED_PARTS = ("__pycache__", ".ipynb_checkpoints")
CHECKER = Path(__file__).with_name("bundle_check.py")


def _tree(folder: Path, prefix: str) -> dict[str, Path]:
    """Every file under ``folder`` (links followed, caches skipped) as ``<prefix>/<relative path>`` -> path."""
    files = {}
    for path in sorted(folder.resolve().rglob("*")):
        rel = path.relative_to(folder.resolve())
        if path.is_file() and not any(part in SKIPPED_PARTS for part in rel.parts) and path.suffix != ".pyc":
            files[f"{prefix}/{rel.as_posix()}"] = path
    return files


def bundle_files(bundle: str | Path, models_dir: str | Path | None = None) -> dict[str, Path]:
    """The files of a bundle's zip: name inside the bundle folder -> file on disk.

    Args:
        bundle: bundle name or folder.
        models_dir: where ``model.pt`` (and ``model.ts``/``model.onnx``) are; default ``<bundle>/models``.

    Raises:
        FileNotFoundError: no ``model.pt`` (train the bundle first), or a required file is missing.
        ValueError: ``model.onnx`` was exported from another ``model.pt`` (re-export it).
    """
    root = resolve_bundle(bundle)
    models = Path(models_dir) if models_dir else root / "models"
    if not (models / "model.pt").is_file():
        raise FileNotFoundError(f"{models / 'model.pt'} not found: train the bundle first or pass --models_dir.")
    files = {"LICENSE": root / "LICENSE"}
    for folder in ("configs", "docs", "scripts"):
        files.update(_tree(root / folder, folder))
    for name in LARGE_FILES:
        if (models / Path(name).name).is_file():
            files[name] = models / Path(name).name
    missing = [
        n
        for n in ("LICENSE", "configs/inference.json", "configs/metadata.json", "scripts/__init__.py")
        if not files.get(n, Path("/nonexistent")).is_file()
    ]
    if missing:
        raise FileNotFoundError(f"{root}: missing {', '.join(missing)}; run python scripts/sync_bundles.py.")
    if "models/model.onnx" in files:  # never ship an export of older weights beside the new model.pt
        check_onnx_source(root, files["models/model.onnx"], files["models/model.pt"])
    return files


def _large_files(files: dict[str, Path], weights_url: str | None, name: str) -> str:
    entries = []
    for rel in LARGE_FILES:
        if rel in files:
            entry: dict[str, Any] = {"path": rel}
            if weights_url:
                entry["url"] = f"{weights_url.rstrip('/')}/{name}/{rel}"
            entry.update({"hash_val": sha256(files[rel]), "hash_type": "sha256", "size": files[rel].stat().st_size})
            entries.append(entry)
    return yaml.safe_dump({"large_files": entries}, sort_keys=False)


def verify_package(zip_path: str | Path, timeout: float = 600, label: str | None = None) -> dict[str, Any]:
    """Extract the zip in a fresh temporary folder and check the bundle there (see :mod:`lesiondata.bundle_check`).

    The check runs as ``python -I`` with the temporary folder as working directory: nothing from this repository
    (``PYTHONPATH``, the current folder) can be imported, so a bundle that depends on the repository fails.

    Args:
        zip_path: the zip.
        timeout: seconds before the check is killed.
        label: the name used in the error message (default: the zip's file name).

    Returns:
        The check's report.

    Raises:
        RuntimeError: the check failed; the message holds its reason.
    """
    zip_path = Path(zip_path)
    with tempfile.TemporaryDirectory(prefix="bundle-verify-") as tmp:
        with zipfile.ZipFile(zip_path) as archive:
            tops = {n.split("/", 1)[0] for n in archive.namelist()}
            if len(tops) != 1:
                raise RuntimeError(
                    f"{zip_path} must hold exactly one top folder (the bundle); it holds {sorted(tops)}."
                )
            archive.extractall(tmp)
        checker = Path(tmp) / CHECKER.name
        shutil.copyfile(CHECKER, checker)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        cmd = [sys.executable, "-I", str(checker), str(Path(tmp) / tops.pop())]
        result = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        output = (result.stderr or "") + (result.stdout or "")
        reasons = [line for line in output.splitlines() if line.startswith(FAILED)]
        raise RuntimeError(
            f"{label or zip_path.name} failed verification: {reasons[-1] if reasons else output[-3000:]}"
        )
    return json.loads(result.stdout.strip().splitlines()[-1])


def package_bundle(
    bundle: str | Path,
    dist_dir: str | Path = REPO / "dist",
    models_dir: str | Path | None = None,
    verify: bool = True,
    weights_url: str | None = None,
) -> Path:
    """Write ``<dist_dir>/<bundle>_v<version>.zip`` (version from ``configs/metadata.json``) and verify it.

    Args:
        bundle: bundle name or folder.
        dist_dir: output folder.
        models_dir: where the weights are; default ``<bundle>/models``.
        verify: extract and check the zip (see :func:`verify_package`); a failed check removes the zip.
        weights_url: base URL where the weights are also published; adds ``url`` to ``large_files.yml``.

    Returns:
        The zip's path.
    """
    root = resolve_bundle(bundle)
    files = bundle_files(root, models_dir)
    version = json.loads(files["configs/metadata.json"].read_text())["version"]
    dist = Path(dist_dir)
    dist.mkdir(parents=True, exist_ok=True)
    target = dist / f"{root.name}_v{version}.zip"
    fd, tmp = tempfile.mkstemp(dir=dist, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for rel, path in files.items():
                archive.write(path, f"{root.name}/{rel}")  # reads through links: real files in the zip
            archive.writestr(f"{root.name}/large_files.yml", _large_files(files, weights_url, root.name))
        if verify:
            verify_package(tmp, label=target.name)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return target
