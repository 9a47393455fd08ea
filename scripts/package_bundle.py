#!/usr/bin/env python
"""Package a bundle into ``dist/<bundle>_v<version>.zip`` and verify it in a fresh folder.

Usage::

    python scripts/package_bundle.py --bundle ph2_melanoma                     # weights from bundles/ph2_melanoma/models
    python scripts/package_bundle.py --bundle brain_tumor --models_dir /tmp/run/models --dist_dir /tmp/dist
    python -m monai.bundle download --name ph2_melanoma --url <server>/ph2_melanoma_v0.1.0.zip --bundle_dir ./bundles

The zip holds the configs, docs, LICENSE, the ``scripts`` package as real files, ``models/model.pt`` and, when
exported (``scripts/export_bundle.py``), ``models/model.ts`` and ``models/model.onnx``, with their sha256 and size
in ``large_files.yml``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import fire

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lesiondata.packaging import package_bundle  # noqa: E402


def main(
    bundle: str,
    dist_dir: str = str(Path(__file__).resolve().parents[1] / "dist"),
    models_dir: str | None = None,
    verify: bool = True,
    weights_url: str | None = None,
) -> None:
    """CLI over :func:`lesiondata.packaging.package_bundle`."""
    print(package_bundle(bundle, dist_dir=dist_dir, models_dir=models_dir, verify=verify, weights_url=weights_url))


if __name__ == "__main__":
    fire.Fire(main)
