"""Write each bundle's configs from the one template in ``bundles/_shared`` plus its values in ``tasks.json``.

The four bundles share one shape and differ only in values: edit ``bundles/_shared/configs/*.json`` (structure)
or ``bundles/_shared/tasks.json`` (values: ``values`` go to every config that has the key, ``config_values`` to
one config only), then run ``python scripts/sync_bundles.py``. ``--check`` exits 1
and lists the files that differ (the test suite runs it).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import fire

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT / "bundles" / "_shared"
VERSION = "0.1.0"
VALUE_CONFIGS = ("train.json", "inference.json")
COPIED = (
    "evaluate.json",
    "multi_gpu_train.json",
    "ensemble_evaluate.json",
    "ensemble_inference.json",
    "ensemble_merge.json",
    "inference_onnx.json",
    "inference_uncertainty.json",
)


def _dump(obj) -> str:
    return json.dumps(obj, indent=4, ensure_ascii=False) + "\n"


def _versions() -> dict[str, str]:
    return {"monai_version": "1.6.1", "pytorch_version": "2.13.0", "numpy_version": "1.26.4"}


def metadata(name: str, task: dict) -> dict:
    """The MONAI bundle ``metadata.json`` of one task."""
    values = task["values"]
    labels = {str(v): k for k, v in sorted(values["labels"].items(), key=lambda kv: kv[1])}
    size = [256, 256]
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json",
        "version": VERSION,
        "changelog": {VERSION: "first release: trained from scratch on CPU, networks selectable by name"},
        **_versions(),
        "required_packages_version": {
            "pytorch-ignite": "0.5.5",
            "pillow": "11.3.0",
            "scipy": "1.15.3",
            "matplotlib": "3.10.7",
        },
        "optional_packages_version": {
            "onnxruntime": "1.23.2",
            "openvino": "2026.4.1",
            "pyspng": "0.1.4",
            "tensorboard": "2.20.0",
            "mlflow-skinny": "3.6.0",
        },
        "name": task["display_name"],
        "task": task["task"],
        "description": task["description"],
        "authors": "monai-lesion-seg contributors",
        "copyright": "Copyright (c) monai-lesion-seg contributors",
        "data_source": task["data_source"],
        "data_type": "png",
        "image_classes": f"{values['in_channels']}-channel 2D image ({task['modality']}), intensities 0-255",
        "label_classes": ", ".join(f"{k}: {v}" for k, v in labels.items()),
        "pred_classes": ", ".join(f"{k}: {v}" for k, v in labels.items()),
        "eval_metrics": {"mean_dice": None, "mean_iou": None},
        "intended_use": "Research and annotation assistance only; not for clinical diagnosis.",
        "references": ["Cardoso M.J. et al., MONAI: An open-source framework for deep learning in healthcare, 2022"],
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "magnitude",
                    "modality": task["modality"],
                    "num_channels": values["in_channels"],
                    "spatial_shape": size,
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": False,
                    "channel_def": {"0": "R", "1": "G", "2": "B"} if values["in_channels"] == 3 else {"0": "grey"},
                }
            },
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": "segmentation",
                    "num_channels": values["num_classes"],
                    "spatial_shape": size,
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": False,
                    "channel_def": labels,
                }
            },
        },
    }


def render(name: str, task: dict) -> dict[str, str]:
    """Every generated file of one bundle, path relative to the bundle -> content."""
    files = {}
    configs = {cfg: json.loads((SHARED / "configs" / cfg).read_text()) for cfg in VALUE_CONFIGS}
    for key, value in task["values"].items():
        if not any(key in content for content in configs.values()):
            raise KeyError(f"tasks.json sets {key!r} for {name}, a key that no template config has.")
        for content in configs.values():
            if key in content:
                content[key] = value
    # values for one config only, e.g. {"inference.json": {"amp": true}}: the fastest correct inference mode
    for cfg, values in task.get("config_values", {}).items():
        for key, value in values.items():
            if key not in configs.get(cfg, {}):
                raise KeyError(f"tasks.json config_values sets {cfg}:{key!r} for {name}; that config has no such key.")
            configs[cfg][key] = value
    for cfg, content in configs.items():
        files[f"configs/{cfg}"] = _dump(content)
    for cfg in COPIED:
        files[f"configs/{cfg}"] = (SHARED / "configs" / cfg).read_text()
    files["configs/metadata.json"] = _dump(metadata(name, task))
    files["configs/logging.conf"] = (SHARED / "configs" / "logging.conf").read_text()
    files["LICENSE"] = (SHARED / "LICENSE").read_text()
    files["docs/data_license.txt"] = task["data_license"] + "\n"
    return files


def sync(check: bool = False) -> int:
    """Write (or with ``check`` compare) every bundle's generated files. Returns the number of differing files."""
    tasks = json.loads((SHARED / "tasks.json").read_text())
    stale = []
    for name, task in tasks.items():
        bundle = ROOT / "bundles" / name
        for rel, content in render(name, task).items():
            path = bundle / rel
            if path.is_file() and path.read_text() == content:
                continue
            stale.append(str(path.relative_to(ROOT)))
            if not check:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(content)
        link = bundle / "scripts"
        if not link.is_symlink():
            stale.append(str(link.relative_to(ROOT)))
            if not check:
                if link.exists():
                    shutil.rmtree(link)
                os.symlink("../_shared/scripts", link)
        (bundle / "models").mkdir(exist_ok=True)
    verb = "differ from the template (run python scripts/sync_bundles.py)" if check else "written"
    print(f"{len(stale)} files {verb}" + "".join(f"\n  {s}" for s in stale))
    return len(stale)


def main(check: bool = False) -> None:
    """CLI: ``python scripts/sync_bundles.py [--check]``."""
    sys.exit(1 if sync(check) and check else 0)


if __name__ == "__main__":
    fire.Fire(main)
