"""Run ``python -m monai.bundle`` commands on this repository's bundles from other tools.

Each command runs in a fresh process whose working directory is the bundle and whose ``PYTHONPATH`` is the bundle
only, so ``import scripts`` resolves to the bundle's own package, as for a downloaded bundle.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
BUNDLES_DIR = REPO / "bundles"

__all__ = ["BUNDLES_DIR", "bundle_names", "config_value", "override_args", "resolve_bundle", "run_monai_bundle"]


def bundle_names() -> list[str]:
    """The bundles of this repository (folders of ``bundles/`` with ``configs/inference.json``, not the ``_shared``
    template), sorted."""
    return sorted(
        p.parent.parent.name
        for p in BUNDLES_DIR.glob("*/configs/inference.json")
        if not p.parent.parent.name.startswith("_")
    )


def resolve_bundle(bundle: str | Path) -> Path:
    """A bundle folder from its name (``ph2_melanoma``) or a path; the folder must hold ``configs/inference.json``.

    Raises:
        FileNotFoundError: naming the valid bundle names.
    """
    path = Path(str(bundle))
    candidates = [path] if path.is_absolute() or path.exists() else [BUNDLES_DIR / str(bundle), path]
    for candidate in candidates:
        if (candidate / "configs" / "inference.json").is_file():
            return candidate.resolve()
    raise FileNotFoundError(
        f"{bundle!s} is not a bundle (no configs/inference.json); give a folder or one of: {', '.join(bundle_names())}."
    )


def _cli_value(value: Any) -> str:
    """Text that ``fire`` (the ``monai.bundle`` CLI) parses back to ``value``: strings as is, others as literals."""
    return value if isinstance(value, str) else repr(value)


def comma_list(value: str | int | Sequence[Any]) -> list[str]:
    """A script's list argument as strings: ``"a, b"`` split at commas, or the tuple fire makes of ``a,b``; blanks
    dropped."""
    parts = value if isinstance(value, (list, tuple)) else str(value).split(",")
    return [str(p).strip() for p in parts if str(p).strip()]


def override_args(overrides: Mapping[str, Any]) -> list[str]:
    """``--key value`` arguments of the ``monai.bundle`` CLI for config overrides (``{"max_epochs": 2}``)."""
    args: list[str] = []
    for key, value in overrides.items():
        args += [f"--{key}", _cli_value(value)]
    return args


def run_monai_bundle(
    bundle: str | Path,
    args: Sequence[str],
    quiet: bool = False,
    timeout: float | None = None,
    module: str = "monai.bundle",
) -> subprocess.CompletedProcess:
    """Run ``python -m monai.bundle <args>`` in the bundle folder.

    Args:
        bundle: the bundle folder (see :func:`resolve_bundle`).
        args: the command and its arguments, e.g. ``["run", "--config_file", "configs/train.json"]``.
        quiet: capture the output (shown in the error when the command fails) instead of streaming it.
        timeout: seconds before the command is killed.
        module: the module run instead of ``monai.bundle``: one of the bundle's own (``scripts.onnx_inferer``).

    Raises:
        RuntimeError: the command failed; the message holds the command and, when quiet, the end of its output.
    """
    root = resolve_bundle(bundle)
    cmd = [sys.executable, "-m", module, *[str(a) for a in args]]
    env = {**os.environ, "PYTHONPATH": str(root)}
    result = subprocess.run(cmd, cwd=root, env=env, capture_output=quiet, text=True, timeout=timeout)
    if result.returncode != 0:
        tail = ((result.stdout or "") + (result.stderr or ""))[-4000:] if quiet else "(output above)"
        raise RuntimeError(f"failed (exit {result.returncode}) in {root}: {' '.join(cmd)}\n{tail}")
    return result


def config_value(bundle: str | Path, key: str, config: str = "configs/inference.json", **overrides: Any) -> Any:
    """The literal value of a top-level config key, an override taking precedence (no expression is evaluated).

    Raises:
        KeyError: the key is missing, or it holds an expression (``$...``/``@...``) rather than a value.
    """
    if key in overrides:
        return overrides[key]
    content = json.loads((resolve_bundle(bundle) / config).read_text())
    value = content.get(key)
    if value is None or (isinstance(value, str) and value[:1] in "$@%"):
        raise KeyError(f"{config} has no literal value for {key!r}; pass --{key} <value>.")
    return value
