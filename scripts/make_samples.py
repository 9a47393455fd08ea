#!/usr/bin/env python
"""Generate small synthetic datasets in each source's raw layout, optionally converted to the common format.

Usage::

    python scripts/make_samples.py kinds                                    # list the kinds
    python scripts/make_samples.py raw ph2 --out data/raw/ph2 [--n 24 --seed 0 --size 160,128 --ext .png]
    python scripts/make_samples.py demo ph2 --out data/prepared/ph2_demo    # raw (temporary) + converted
    python scripts/make_samples.py all [--root data/raw]                    # every kind into <root>/<kind>

Kinds: ph2 (PH2 folders), coco (Roboflow COCO, MRI-like), trus_coco (Roboflow COCO, ultrasound-like),
ctrus (C-TRUS CSV layout), ipmn (RGB colour-coded masks), glas (GlaS instance masks).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fire  # noqa: E402

from lesiondata import DataError, synthetic  # noqa: E402


def kinds() -> None:
    """Print the available sample kinds and the bundle-name aliases."""
    for kind in synthetic.KINDS:
        print(f"{kind:10s} {synthetic.DESCRIPTIONS[kind]}")
    print("aliases:", ", ".join(f"{a} -> {k}" for a, k in synthetic.ALIASES.items()))


def raw(kind: str, out: str, n: int = 24, seed: int = 0, overwrite: bool = False, **options) -> None:
    """Write ``n`` synthetic cases of ``kind`` in its raw layout to ``out`` (options: size, ext, seg_format, ...)."""
    _run(synthetic.make_raw, kind, out, n=n, seed=seed, overwrite=overwrite, **options)
    print(f"wrote {n} {kind} cases to {out}")


def demo(
    kind: str, out: str, n: int = 24, seed: int = 0, overwrite: bool = False, raw_dir: str | None = None, **options
) -> None:
    """Generate ``kind`` samples and convert them to the common format in ``out``."""
    _run(synthetic.make_demo_dataset, kind, out, n=n, seed=seed, overwrite=overwrite, raw_dir=raw_dir, **options)
    print(f"wrote a {n}-case {kind} demo dataset to {out}")


def all(root: str = str(synthetic.DEFAULT_RAW_ROOT), n: int = 24, seed: int = 0) -> None:  # noqa: A001
    """Generate every kind into ``<root>/<kind>`` where it is not there yet."""
    for kind in synthetic.KINDS:
        print(_run(synthetic.ensure_raw, kind, root, n=n, seed=seed))


def _run(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except DataError as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    fire.Fire({"kinds": kinds, "raw": raw, "demo": demo, "all": all})
