"""The benchmark scripts' pure parts: sweep grids, bundle overrides, tables and the choice of a winner."""

from __future__ import annotations

import importlib.util
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _load("bench_accuracy")


def test_grid_expands_every_combination_in_order() -> None:
    combos = bench._grid('{"network": ["unet", "segnet"], "learning_rate": [0.001, 0.002], "max_epochs": 20}')
    assert combos == [
        {"network": "unet", "learning_rate": 0.001, "max_epochs": 20},
        {"network": "unet", "learning_rate": 0.002, "max_epochs": 20},
        {"network": "segnet", "learning_rate": 0.001, "max_epochs": 20},
        {"network": "segnet", "learning_rate": 0.002, "max_epochs": 20},
    ]
    assert bench._grid({"fill_holes": (False, True)}) == [{"fill_holes": False}, {"fill_holes": True}]
    # fire parses --grid '{"fill_holes": [false, true]}' itself, leaving the JSON words as strings
    assert bench._grid({"fill_holes": ["false", "true"], "init_weights": "null"}) == [
        {"fill_holes": False, "init_weights": None},
        {"fill_holes": True, "init_weights": None},
    ]


def test_grid_given_on_the_command_line_reaches_the_bundle_as_booleans() -> None:
    code = (
        "import fire, importlib.util, sys; "
        f"spec = importlib.util.spec_from_file_location('b', {str(ROOT / 'scripts' / 'bench_accuracy.py')!r}); "
        "b = importlib.util.module_from_spec(spec); spec.loader.exec_module(b); "
        "fire.Fire(lambda grid: print(b._overrides(b._grid(grid)[0])))"
    )
    grid = '{"keep_largest_component": [false], "tta_views": [4]}'
    out = subprocess.run([sys.executable, "-c", code, "--grid", grid], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['--keep_largest_component', 'False', '--tta_views', '4']"


def test_overrides_are_python_literals_the_bundle_cli_parses_back() -> None:
    args = bench._overrides({"fill_holes": False, "spatial_size": [320, 320], "network": "unet", "lr": 0.002})
    assert args == ["--fill_holes", "False", "--spatial_size", "[320, 320]", "--network", "unet", "--lr", "0.002"]
    # monai.bundle run parses its arguments with fire: "false" would arrive as a (truthy) string, "False" as False
    code = "import fire, json; fire.Fire(lambda **kw: print(json.dumps(kw, sort_keys=True)))"
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True).stdout
    assert out.strip() == '{"fill_holes": false, "lr": 0.002, "network": "unet", "spatial_size": [320, 320]}'
    assert bench._slug({"network": "unet", "spatial_size": [320, 320]}) == "network-unet_spatial_size-_320_320_"
    assert shlex.split(shlex.join(args)) == args


def _row(dice: float, pooled: float, empty_ok: int = 0) -> dict:
    return {
        "dice_mean": dice,
        "dice_median": dice,
        "dice_worst": dice - 0.2,
        "jaccard_mean": dice - 0.05,
        "pooled_dice": pooled,
        "pooled_jaccard": pooled - 0.05,
        "empty_truth_cases": 10,
        "empty_predicted_empty": empty_ok,
    }


def test_best_prefers_mean_dice_then_pooled_then_empty_cases() -> None:
    rows = [
        {"k": 1, **_row(0.90, 0.91)},
        {"k": 2, **_row(0.92, 0.90)},
        {"k": 3, **_row(0.92, 0.93, 2)},
        {"k": 4, **_row(0.92, 0.93, 9)},
    ]
    assert bench._best(rows)["k"] == 4
    table = bench._grid_table(rows, ["k"])
    assert table.splitlines()[0].endswith("| empty_predicted_empty |")
    assert "| 4 | 0.9200 |" in table and table.splitlines()[-1].endswith("| 9/10 |")
