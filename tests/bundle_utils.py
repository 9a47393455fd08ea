"""Helpers shared by the export, ensemble and packaging tests: run a bundle config in this process."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = ROOT / "bundles"
SMALL = {"spatial_size": [64, 64], "num_workers": 0, "batch_size": 4, "val_batch_size": 2}


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """One torch thread here and ``OMP_NUM_THREADS=1`` for subprocesses, restored afterwards.

    On the project's shared 2-core machines two OpenMP threads per process wait at barriers for descheduled threads
    and run many times slower (see ``scripts/bench_inference.py``).
    """
    import torch

    threads, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        if env is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = env


@pytest.fixture(scope="module", autouse=True)
def single_thread_module() -> Iterator[None]:
    """Module-wide :func:`one_thread`; import it into a test module to apply it there (pytest finds it by name)."""
    with one_thread():
        yield


def use_bundle(name: str) -> Path:
    """Make ``import scripts`` resolve to this bundle's package (as MONAI Label does)."""
    bundle = BUNDLES / name
    for mod in [m for m in sys.modules if m == "scripts" or m.startswith("scripts.")]:
        del sys.modules[mod]
    if str(bundle) in sys.path:
        sys.path.remove(str(bundle))
    sys.path.insert(0, str(bundle))
    return bundle


def make_workflow(name: str, configs: list[str], workflow_type: str, **overrides: Any):
    """A ``ConfigWorkflow`` of bundle ``name`` over ``configs`` (file names in its ``configs/``), not yet initialised."""
    from monai.bundle import ConfigWorkflow

    bundle = use_bundle(name)
    return ConfigWorkflow(
        config_file=[str(bundle / "configs" / c) for c in configs],
        meta_file=str(bundle / "configs" / "metadata.json"),
        logging_file=str(bundle / "configs" / "logging.conf"),
        workflow_type=workflow_type,
        bundle_root=str(bundle),
        **overrides,
    )


def run_workflow(name: str, configs: list[str], workflow_type: str, **overrides: Any) -> list[str]:
    """Initialise, check, run and finalise a ``ConfigWorkflow`` of bundle ``name``; return ``check_properties()``."""
    wf = make_workflow(name, configs, workflow_type, **overrides)
    wf.initialize()
    missing = wf.check_properties() or []
    wf.run()
    wf.finalize()
    return missing


def train(name: str, data: Path, ckpt_dir: Path, epochs: int, **overrides: Any) -> Path:
    """Train bundle ``name`` on ``data`` at 64x64 into ``ckpt_dir``; return ``ckpt_dir / "model.pt"``."""
    values = {"dataset_dir": str(data), "ckpt_dir": str(ckpt_dir), "output_dir": str(ckpt_dir / "tb"), **SMALL}
    missing = run_workflow(name, ["train.json"], "train", max_epochs=epochs, **{**values, **overrides})
    assert not missing, missing
    return ckpt_dir / "model.pt"
