"""Check an extracted bundle on its own, with nothing from this repository importable.

Run as ``python -I bundle_check.py <bundle folder>`` (``scripts/package_bundle.py`` copies this file next to the
extracted bundle and does so): the inference config parses, its transforms and network build, ``models/model.pt``
loads strictly and gives ``num_classes`` channels, ``models/model.ts`` / ``models/model.onnx`` (when present) give
the same logits, and ``large_files.yml`` matches the files. Prints a JSON report; exits 1 with the reason on failure.
Only the standard library, torch, monai, PyYAML and (optionally) onnxruntime are used.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

TS_TOLERANCE = 1e-4
ONNX_TOLERANCE = 1e-3
FAILED = "bundle check failed:"
MAX_MESSAGE = 800


class BundleCheckError(RuntimeError):
    """The bundle is incomplete or inconsistent; the message says what."""


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_large_files(root: Path) -> list[str]:
    import yaml

    listing = root / "large_files.yml"
    if not listing.is_file():
        raise BundleCheckError(f"{listing} is missing.")
    entries = yaml.safe_load(listing.read_text())["large_files"]
    for entry in entries:
        path = root / entry["path"]
        if not path.is_file():
            raise BundleCheckError(f"large_files.yml lists {entry['path']}, which is not in the bundle.")
        if path.stat().st_size != entry["size"] or sha256(path) != entry["hash_val"]:
            raise BundleCheckError(f"{entry['path']} does not match its size/sha256 in large_files.yml.")
    return [e["path"] for e in entries]


def check_bundle(root: Path) -> dict[str, Any]:
    """Run every check on the bundle folder ``root``; return the report."""
    import torch
    from monai.bundle import ConfigParser

    scripts = root / "scripts"
    if scripts.is_symlink() or not (scripts / "__init__.py").is_file():
        raise BundleCheckError(f"{scripts} must be a real package folder (not a link) with __init__.py.")
    sys.path.insert(0, str(root))
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    parser.read_meta(str(root / "configs" / "metadata.json"))
    parser["bundle_root"] = str(root)
    for key in ("preprocessing", "postprocessing", "inferer"):
        parser.get_parsed_content(key)
    net = parser.get_parsed_content("network_def").eval()
    net.load_state_dict(torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True))
    channels, classes = int(parser.get_parsed_content("in_channels")), int(parser.get_parsed_content("num_classes"))
    size = [int(s) for s in parser.get_parsed_content("spatial_size")]
    image = torch.rand(1, channels, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = net(image)
    if tuple(logits.shape) != (1, classes, *size):
        raise BundleCheckError(
            f"the network gives {tuple(logits.shape)} for {tuple(image.shape)}; expected {classes} classes."
        )
    report: dict[str, Any] = {
        "bundle": root.name,
        "network": parser.get_parsed_content("network"),
        "output_shape": list(logits.shape),
    }
    if (root / "models" / "model.ts").is_file():
        with torch.no_grad():
            diff = float((torch.jit.load(str(root / "models" / "model.ts"))(image) - logits).abs().max())
        if diff > TS_TOLERANCE:
            raise BundleCheckError(f"models/model.ts differs from model.pt by {diff:.2e} (> {TS_TOLERANCE}).")
        report["torchscript_max_abs_diff"] = diff
    if (root / "models" / "model.onnx").is_file():
        try:
            import onnxruntime
        except ImportError:
            report["onnx"] = "not checked: onnxruntime is not installed"
        else:
            session = onnxruntime.InferenceSession(
                str(root / "models" / "model.onnx"), providers=["CPUExecutionProvider"]
            )
            (out,) = session.run(None, {session.get_inputs()[0].name: image.numpy()})
            diff = float(abs(out - logits.numpy()).max())
            if diff > ONNX_TOLERANCE:
                raise BundleCheckError(f"models/model.onnx differs from model.pt by {diff:.2e} (> {ONNX_TOLERANCE}).")
            report["onnx_max_abs_diff"] = diff
    report["large_files"] = _check_large_files(root)
    return report


def main(argv: list[str]) -> int:
    """``python -I bundle_check.py <bundle folder>``: print the JSON report, or the error and exit 1."""
    if len(argv) != 1:
        print("usage: python -I bundle_check.py <bundle folder>", file=sys.stderr)
        return 2
    try:
        report = check_bundle(Path(argv[0]).resolve())
    except Exception as err:  # any failure is a verification failure; say which
        message = " ".join(str(err).split())
        print(f"{FAILED} {type(err).__name__}: {message[:MAX_MESSAGE]}", file=sys.stderr)
        return 1
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
