"""Find the bundles this app serves, by path only (no model-zoo lookup), and read what the app needs from them."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = [
    "available_bundles",
    "bundle_labels",
    "merged_labels",
    "parse_overrides",
    "resolve_bundles",
]

#: ``--conf`` key naming the folder that holds the bundles (default: ``<repository>/bundles``).
CONF_BUNDLE_DIR = "bundle_dir"
#: ``--conf`` key listing the bundles to serve, comma separated, or ``all``.
CONF_MODELS = "models"
#: ``--conf`` key with a JSON object of config overrides applied to every bundle's inference and train configs.
CONF_OVERRIDES = "bundle_overrides"


def default_bundle_dir(app_dir: str | os.PathLike) -> Path:
    """Return ``<repository>/bundles`` for an app at ``<repository>/labelapp``."""
    return Path(app_dir).resolve().parent / "bundles"


def _is_bundle(path: Path) -> bool:
    return (path / "configs" / "inference.json").is_file() and (path / "configs" / "metadata.json").is_file()


def available_bundles(bundle_dir: str | os.PathLike) -> list[str]:
    """Return the names of the folders in ``bundle_dir`` that are MONAI bundles with an inference config."""
    root = Path(bundle_dir)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if not p.name.startswith(("_", ".")) and _is_bundle(p))


def resolve_bundles(app_dir: str | os.PathLike, conf: dict[str, str]) -> dict[str, str]:
    """Map each requested model name to its bundle folder, from local paths only.

    Args:
        app_dir: the app folder (``labelapp``); bundles default to its sibling ``bundles`` folder.
        conf: the ``--conf`` pairs of ``start_server``; reads ``models`` (comma separated names or ``all``,
            default ``all``) and ``bundle_dir``.

    Returns:
        ``{name: absolute bundle path}`` in the order requested.

    Raises:
        ValueError: when a requested bundle does not exist, or none is found; the message lists what exists.
    """
    bundle_dir = Path(conf.get(CONF_BUNDLE_DIR) or default_bundle_dir(app_dir)).resolve()
    found = available_bundles(bundle_dir)
    requested = [m.strip() for m in str(conf.get(CONF_MODELS, "all")).split(",") if m.strip()]
    names = found if requested in ([], ["all"]) else requested
    unknown = [n for n in names if n not in found]
    if unknown or not names:
        raise ValueError(
            f"Bundle(s) {unknown or names} not found in {bundle_dir} (a bundle needs configs/inference.json and "
            f"configs/metadata.json). Available: {found or 'none'}. Set '--conf models <names>' and/or "
            f"'--conf {CONF_BUNDLE_DIR} <folder>'. This app never downloads bundles from the model zoo."
        )
    return {n: str(bundle_dir / n) for n in names}


def bundle_labels(bundle_path: str | os.PathLike) -> dict[str, int]:
    """Return ``{label name (lower case): value}`` without background, from ``metadata.json``'s ``channel_def``."""
    with open(Path(bundle_path) / "configs" / "metadata.json") as f:
        metadata = json.load(f)
    pred = next(iter(metadata["network_data_format"]["outputs"].values()))
    channels = pred.get("channel_def", {})
    return {str(v).lower(): int(k) for k, v in channels.items() if str(v).lower() != "background"}


def merged_labels(bundles: dict[str, str]) -> dict[str, int]:
    """Return the label map shared by all served bundles.

    Raises:
        ValueError: when two bundles give the same label name different values.
    """
    merged: dict[str, int] = {}
    for name, path in bundles.items():
        for label, value in bundle_labels(path).items():
            if merged.setdefault(label, value) != value:
                raise ValueError(
                    f"Label '{label}' is {merged[label]} in one bundle and {value} in '{name}': saved labels would be "
                    "ambiguous. Serve these bundles from separate app instances (--conf models)."
                )
    return merged


def parse_overrides(conf: dict[str, str]) -> dict[str, Any]:
    """Return the ``bundle_overrides`` JSON object of ``conf`` (``{}`` when absent).

    Raises:
        ValueError: when the value is not a JSON object.
    """
    text = conf.get(CONF_OVERRIDES)
    if not text:
        return {}
    try:
        overrides = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"--conf {CONF_OVERRIDES} must be a JSON object, e.g. '{{\"spatial_size\": [64, 64]}}': {e}"
        ) from e
    if not isinstance(overrides, dict):
        raise ValueError(f"--conf {CONF_OVERRIDES} must be a JSON object, got {type(overrides).__name__}")
    return overrides
