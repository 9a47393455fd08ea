#!/usr/bin/env python
"""Train and evaluate bundles on the real development sets; print and save true Dice/Jaccard and epoch times.

Usage::

    python scripts/bench_accuracy.py run --tasks ph2_melanoma,ipmn_histology --minutes 10 [--max_epochs 60]
    python scripts/bench_accuracy.py run --tasks all --minutes 10 --overrides "--network segnet"

Each task trains its bundle's default recipe on fold 0 of the prepared set (``data/prepared/<set>``, made by
``scripts/convert.py`` from ``../shared/data``), evaluates on fold 0 at each image's original size, and checks
that fold 0 is the fixed split recorded in ``benchmarks/splits/<task>_fold0.txt`` (written on first use).
Results go to ``benchmarks/results/accuracy_<task>.json`` with the hardware, wall time and commit.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import fire

ROOT = Path(__file__).resolve().parents[1]
DATASETS = {"ph2_melanoma": "ph2", "brain_tumor": "brain178", "trus_prostate": "ctrus", "ipmn_histology": "glas"}
RESULTS = ROOT / "benchmarks" / "results"
SPLITS = ROOT / "benchmarks" / "splits"


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return out.stdout.strip()


def check_split(task: str, dataset_dir: Path, fold: int = 0) -> list[str]:
    """The validation case ids of ``fold``; they must equal the recorded fixed split (written on first use)."""
    items = json.loads((dataset_dir / "datalist.json").read_text())["training"]
    cases = sorted(d["case"] for d in items if int(d["fold"]) == fold)
    path = SPLITS / f"{task}_fold{fold}.txt"
    if path.is_file():
        fixed = path.read_text().split()
        if fixed != cases:
            raise SystemExit(f"{dataset_dir}: fold {fold} differs from the fixed split {path}; re-run the converter.")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(cases) + "\n")
    return cases


def run_task(task: str, minutes: float, max_epochs: int | None, extra: list[str], work: Path) -> dict:
    """Train + evaluate one bundle; returns the result record."""
    bundle = ROOT / "bundles" / task
    dataset_dir = ROOT / "data" / "prepared" / DATASETS[task]
    if not (dataset_dir / "datalist.json").is_file():
        raise SystemExit(f"{dataset_dir} not prepared: run scripts/convert.py on ../shared/data first (see README).")
    cases = check_split(task, dataset_dir)
    ckpt, out = work / task / "models", work / task / "eval"
    common = ["--dataset_dir", str(dataset_dir), "--ckpt_dir", str(ckpt), "--output_dir", str(out), *extra]
    train = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/train.json", *common]
    train += ["--time_limit_minutes", str(minutes)]
    if max_epochs:
        train += ["--max_epochs", str(max_epochs)]
    t0 = time.perf_counter()
    subprocess.run(train, cwd=bundle, check=True)
    train_seconds = time.perf_counter() - t0
    evaluate = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        "['configs/train.json','configs/evaluate.json']",
        *common,
    ]
    subprocess.run(evaluate, cwd=bundle, check=True)
    history = json.loads((ckpt / "history.json").read_text())
    summary = json.loads((out / "metrics_summary.json").read_text())
    epoch_s = sorted(h["epoch_seconds"] for h in history)
    return {
        "task": task,
        "dataset": DATASETS[task],
        "fold": 0,
        "val_cases": len(cases),
        "overrides": extra,
        "epochs": len(history),
        "train_seconds": round(train_seconds, 1),
        "median_epoch_seconds": round(epoch_s[len(epoch_s) // 2], 2),
        "best_val_iou_resized": max(h.get("val_mean_iou", 0) for h in history),
        "summary": summary,
        "hardware": f"{_cpu()}, {os.cpu_count()} cores",
        "commit": _commit(),
        "command": "python scripts/bench_accuracy.py run --tasks "
        + task
        + f" --minutes {minutes}"
        + (f" --max_epochs {max_epochs}" if max_epochs else "")
        + (f' --overrides "{shlex.join(extra)}"' if extra else ""),
    }


def table(records: list[dict]) -> str:
    """Markdown table of the main figures."""
    rows = [
        "| task | epochs | s/epoch | Dice mean | Dice median | Dice worst | Jaccard mean | pooled Dice | pooled Jaccard |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        c = r["summary"]["classes"]["1"]
        d, j = c["dice_nonempty"], c["jaccard_nonempty"]
        rows.append(
            f"| {r['task']} | {r['epochs']} | {r['median_epoch_seconds']} | {d['mean']:.4f} | {d['median']:.4f} "
            f"| {d['worst']:.4f} | {j['mean']:.4f} | {c['pooled_dice']:.4f} | {c['pooled_jaccard']:.4f} |"
        )
    return "\n".join(rows)


def run(tasks: str = "all", minutes: float = 10.0, max_epochs: int | None = None, overrides: str = "") -> None:
    """Train + evaluate ``tasks`` (comma list or ``all``) for at most ``minutes`` of training each.

    ``overrides`` are extra bundle arguments, e.g. ``--overrides "--network segnet --loss dice"``.
    """
    extra = shlex.split(overrides)
    if isinstance(tasks, (list, tuple)):  # fire turns "a,b" into a tuple
        names = [str(t) for t in tasks]
    else:
        names = list(DATASETS) if tasks == "all" else [t.strip() for t in str(tasks).split(",")]
    unknown = [t for t in names if t not in DATASETS]
    if unknown:
        raise SystemExit(f"unknown task(s) {unknown}; choose from {list(DATASETS)} or all.")
    work = ROOT / "benchmarks" / "work"
    records = []
    for task in names:
        record = run_task(task, minutes, max_epochs, extra, work)
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"accuracy_{task}.json").write_text(json.dumps(record, indent=2) + "\n")
        records.append(record)
    print(table(records))


if __name__ == "__main__":
    fire.Fire({"run": run})
