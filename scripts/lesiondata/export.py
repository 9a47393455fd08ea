"""Export a bundle's trained network to TorchScript and ONNX, each with a command run in the bundle folder.

* TorchScript: ``python -m monai.bundle ckpt_export network_def --filepath models/model.ts --ckpt_file
  models/model.pt --meta_file configs/metadata.json --config_file configs/inference.json`` (scripted, not traced:
  every registered network scripts; the configs and metadata are stored inside the ``.ts``).
* ONNX: the bundle's own exporter, ``python -m scripts.onnx_inferer --ckpt_file models/model.pt --filepath
  models/model.onnx [--key value ...]`` (``scripts/onnx_inferer.py::export_onnx``). It runs MONAI's ``onnx_export``
  with the bundle's recipe (``onnx_export_args``: the TorchScript-based exporter and dynamic batch, height and width,
  so the model runs at any ``spatial_size``), stamps the model with the sha256 of ``model.pt`` and renames it into
  place. ``export_commands()["onnx"]`` is the same export as a plain ``monai.bundle onnx_export`` command (no stamp).

``configs/inference_onnx.json`` runs the ONNX model with ONNX Runtime; a TorchScript model loads with
``torch.jit.load``. ``tests/test_export.py`` checks both against eager inference.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from .bundles import config_value, override_args, resolve_bundle, run_monai_bundle

__all__ = ["EXPORT_FORMATS", "check_onnx_source", "export_bundle", "export_commands"]

EXPORT_FORMATS = ("torchscript", "onnx")
FILE_NAMES = {"torchscript": "model.ts", "onnx": "model.onnx"}


def export_commands(
    bundle: str | Path, ckpt_file: str | Path, out_dir: str | Path, **overrides: Any
) -> dict[str, list[str]]:
    """The ``monai.bundle`` arguments of each export (run in the bundle folder): the TorchScript one is what
    :func:`export_bundle` runs; the ONNX one is the plain MONAI equivalent of the bundle's exporter, without the stamp.

    Args:
        bundle: bundle name or folder.
        ckpt_file: the trained ``model.pt``.
        out_dir: where ``model.ts`` and ``model.onnx`` go.
        overrides: inference-config keys the model was trained with (``network``, ``num_classes``,
            ``in_channels``, ``spatial_size``: the ONNX sample input is ``[1, in_channels, *spatial_size]``).
    """
    channels = int(config_value(bundle, "in_channels", **overrides))
    size = [int(s) for s in config_value(bundle, "spatial_size", **overrides)]
    onnx = _onnx_tools(resolve_bundle(bundle)).onnx_export_args(channels, size)  # the bundle's own recipe
    common = ["--ckpt_file", str(ckpt_file), "--meta_file", onnx["meta_file"]]
    common += ["--config_file", onnx["config_file"], *override_args(overrides)]
    return {
        "torchscript": ["ckpt_export", "network_def", "--filepath", str(Path(out_dir) / FILE_NAMES["torchscript"]), *common],
        "onnx": [
            "onnx_export", onnx["net_id"], "--filepath", str(Path(out_dir) / FILE_NAMES["onnx"]), *common,
            "--use_trace", str(onnx["use_trace"]), "--input_shape", repr(onnx["input_shape"]),
            "--converter_kwargs", repr(onnx["converter_kwargs"]),
        ],
    }  # fmt: skip


def export_bundle(
    bundle: str | Path,
    ckpt_dir: str | Path | None = None,
    out_dir: str | Path | None = None,
    formats: tuple[str, ...] | list[str] | str = EXPORT_FORMATS,
    quiet: bool = False,
    **overrides: Any,
) -> dict[str, Path]:
    """Export ``<ckpt_dir>/model.pt`` of a bundle to ``<out_dir>/model.ts`` and ``<out_dir>/model.onnx``.

    Args:
        bundle: bundle name or folder.
        ckpt_dir: folder of ``model.pt``; default ``<bundle>/models``.
        out_dir: output folder; default ``ckpt_dir``.
        formats: ``torchscript`` and/or ``onnx`` (a comma-separated string works).
        quiet: capture the exporters' output (shown only on failure).
        overrides: inference-config keys the model was trained with, see :func:`export_commands`.

    Returns:
        Format -> written file.

    Raises:
        FileNotFoundError: no ``model.pt`` in ``ckpt_dir``.
        ValueError: an unknown format.
    """
    root = resolve_bundle(bundle)
    ckpt = Path(ckpt_dir).resolve() if ckpt_dir else root / "models"
    out = Path(out_dir).resolve() if out_dir else ckpt
    selected = [f.strip() for f in formats.split(",")] if isinstance(formats, str) else list(formats)
    unknown = [f for f in selected if f not in EXPORT_FORMATS]
    if unknown:
        raise ValueError(f"unknown export format(s) {unknown}; valid: {', '.join(EXPORT_FORMATS)}.")
    if not (ckpt / "model.pt").is_file():
        raise FileNotFoundError(f"{ckpt / 'model.pt'} not found: train the bundle first or pass --ckpt_dir.")
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for fmt in selected:
        written[fmt] = out / FILE_NAMES[fmt]
        if fmt == "onnx":  # the bundle's own exporter: stamped with model.pt's sha256, renamed into place
            args = ["--ckpt_file", ckpt / "model.pt", "--filepath", written[fmt], *override_args(overrides)]
            run_monai_bundle(root, args, quiet=quiet, module="scripts.onnx_inferer")
            continue
        # written in a folder beside the target, then renamed over it: a running process never reads half a file
        staging = Path(tempfile.mkdtemp(dir=out, prefix=".exporting-"))
        try:
            run_monai_bundle(root, export_commands(root, ckpt / "model.pt", staging, **overrides)[fmt], quiet=quiet)
            partial = staging / FILE_NAMES[fmt]
            if not partial.is_file():
                raise RuntimeError(f"the {fmt} export finished without writing {partial}.")
            os.replace(partial, written[fmt])
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return written


def _onnx_tools(root: Path):
    """The bundle's own ``scripts.onnx_inferer`` (one definition of the export recipe and of the source stamp)."""
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    import scripts.onnx_inferer

    return scripts.onnx_inferer


def check_onnx_source(bundle: str | Path, onnx_file: str | Path, checkpoint: str | Path) -> None:
    """Raise when ``onnx_file`` records that it was exported from another checkpoint than ``checkpoint``.

    Raises:
        ValueError: a stale export (the model was retrained after it); the message says how to re-export.
    """
    tools = _onnx_tools(resolve_bundle(bundle))
    message = tools.stale_message(onnx_file, tools.recorded_source(onnx_file), checkpoint)
    if message:
        raise ValueError(message)
