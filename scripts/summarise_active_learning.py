#!/usr/bin/env python
"""Combine several seeds of ``simulate_active_learning.py`` into one table and plot (mean, min-max band).

Usage::

    for s in 0 1 2; do
        python scripts/simulate_active_learning.py --dataset data/prepared/ph2 --model ph2_melanoma --pool 30 \\
            --val 15 --initial 4 --step 4 --rounds 4 --epochs 8 --spatial_size 96 --seed $s \\
            --out benchmarks/work/al_ph2_seed$s
    done
    python scripts/summarise_active_learning.py benchmarks/work/al_ph2_seed*/active_learning.json

Writes ``benchmarks/results/active_learning_<model>.{json,md,png}``: per strategy and number of labelled cases, the
mean, min and max validation Dice over the seeds, and per seed the difference epistemic - random.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def summarise(*paths: str, out_dir: str = str(RESULTS)) -> dict:
    runs = [json.loads(Path(p).read_text()) for p in paths]
    if not runs:
        raise SystemExit("give the active_learning.json files of the seeds to combine.")
    settings = [{k: v for k, v in r["settings"].items() if k != "seed"} for r in runs]
    if any(s != settings[0] for s in settings):
        raise SystemExit("the runs differ in settings other than the seed; combine only like with like.")
    model, seeds = runs[0]["model"], [r["settings"]["seed"] for r in runs]
    table: dict[str, list[dict]] = {}
    for strategy in runs[0]["curves"]:
        points = {}
        for r in runs:
            for p in r["curves"][strategy]:
                points.setdefault(p["labelled"], []).append(p["dice"])
        table[strategy] = [
            {"labelled": n, "mean": statistics.mean(v), "min": min(v), "max": max(v), "n": len(v)}
            for n, v in sorted(points.items())
        ]
    lines = [
        f"## Active learning on {Path(runs[0]['dataset']).name} ({model}), seeds {seeds}",
        "",
        "| labelled | " + " | ".join(f"{s} mean (min-max)" for s in table) + " |",
        "|---|" + "---|" * len(table),
    ]
    for i, row in enumerate(next(iter(table.values()))):
        cells = [f"{t[i]['mean']:.3f} ({t[i]['min']:.3f}-{t[i]['max']:.3f})" for t in table.values()]
        lines.append(f"| {row['labelled']} | " + " | ".join(cells) + " |")
    gaps = {}
    if {"random", "epistemic"} <= set(table):
        gaps = {
            r["settings"]["seed"]: round(r["curves"]["epistemic"][-1]["dice"] - r["curves"]["random"][-1]["dice"], 4)
            for r in runs
        }
        lines += ["", f"Final-round Dice, epistemic - random, per seed: {gaps}"]
    payload = {"model": model, "seeds": seeds, "settings": settings[0], "table": table, "final_gap_per_seed": gaps}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = f"active_learning_{model}"
    (out / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for strategy, rows in table.items():
        x = [r["labelled"] for r in rows]
        ax.plot(x, [r["mean"] for r in rows], marker="o", label=f"{strategy} (mean of {len(seeds)})")
        ax.fill_between(x, [r["min"] for r in rows], [r["max"] for r in rows], alpha=0.2)
    ax.set_xlabel("labelled cases")
    ax.set_ylabel("validation Dice")
    ax.set_title(f"{model}: active learning, seeds {seeds}", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / f"{name}.png", dpi=100)
    plt.close(fig)
    print("\n".join(lines))
    return payload


if __name__ == "__main__":
    args = sys.argv[1:]
    if "--out_dir" in args:
        i = args.index("--out_dir")
        summarise(*(args[:i] + args[i + 2 :]), out_dir=args[i + 1])
    else:
        summarise(*args)
