#!/usr/bin/env python
"""Export a bundle's trained network to TorchScript (``models/model.ts``) and ONNX (``models/model.onnx``).

Usage::

    python scripts/export_bundle.py --bundle ph2_melanoma                       # models/model.pt -> .ts + .onnx
    python scripts/export_bundle.py --bundle trus_prostate --formats onnx
    python scripts/export_bundle.py --bundle brain_tumor --ckpt_dir /tmp/run/models --network segresnet

Extra ``--key value`` pairs are the inference-config keys the model was trained with (``network``,
``num_classes``, ``spatial_size``, ...). Run the ONNX model with
``--config_file "['configs/inference.json','configs/inference_onnx.json']"``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import fire

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lesiondata.export import EXPORT_FORMATS, export_bundle  # noqa: E402


def main(
    bundle: str,
    ckpt_dir: str | None = None,
    out_dir: str | None = None,
    formats: str | tuple[str, ...] = EXPORT_FORMATS,
    quiet: bool = False,
    **overrides,
) -> None:
    """CLI over :func:`lesiondata.export.export_bundle`."""
    for fmt, path in export_bundle(bundle, ckpt_dir, out_dir, formats, quiet, **overrides).items():
        print(f"{fmt}: {path}")


if __name__ == "__main__":
    fire.Fire(main)
