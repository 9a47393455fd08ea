#!/usr/bin/env python
"""Can a per-image rule on a trained model's output tell the empty cases (no structure) from the others?

Usage::

    python scripts/bench_empty_cases.py run --task trus_prostate [--run sweep/trus_prostate/<point>_<N>ep]

For each fold-0 case of the prepared set, runs the bundle's network (checkpoint ``<run>/models/model.pt``, the
bundle's ``evaluate`` pre-processing and recipe keys) and records image-level statistics of the foreground
probability: the predicted area fraction, the summed probability, the maximum, the 99th percentile and the mean
probability inside the predicted mask; for a network trained with ``presence_head``, the statistics are those of its
segmentation network before the gate, plus the head's own ``presence_probability``. For each statistic it finds,
over every threshold ("empty if the statistic is below t"), how many cases with a structure stay non-empty while a
given share of the empty cases is predicted empty. If no statistic keeps most non-empty cases at the goal's share (C-TRUS: 90 %), post-processing cannot reach
the goal and the model itself has to separate the cases (an image-level head, more data or resolution).
Writes ``benchmarks/results/empty_cases_<task>.{json,md}``.

    python scripts/bench_empty_cases.py classifier --task trus_prostate [--target quality] [--size 128]

asks the question an image-level head depends on: can an image classifier trained from scratch on the training folds
(the bundle's ``PresenceClassifier``, alone, on grey images resized to ``size``) tell the fold-0 empty cases from
the others? ``target``: ``presence`` (mask non-empty) or ``quality`` (C-TRUS's grade, "low" vs the rest: most scans
graded low have an empty mask). Prints the ROC AUC and the same kept-at-share table every few epochs; writes
``benchmarks/results/empty_cases_<task>_classifier_<target>_<size>.{json,md}``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import fire
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
STATISTICS = ("pred_fraction", "sum_probability", "max_probability", "p99_probability", "mean_probability_in_mask")
PRESENCE = "presence_probability"  # only for a network with a presence head
SHARES = (0.9, 0.8, 0.66)


def case_statistics(task: str, run: Path, dataset_dir: Path, overrides: dict | None = None) -> list[dict]:
    """Image-level statistics of the foreground probability for every fold-0 case (network at ``spatial_size``);
    ``overrides``: the run's recipe keys (e.g. ``{"spatial_size": [384, 384]}``)."""
    import torch
    from monai.bundle import ConfigParser

    bundle = ROOT / "bundles" / task
    sys.path.insert(0, str(bundle))
    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / "train.json"), str(bundle / "configs" / "evaluate.json")])
    parser.update({"bundle_root": str(bundle), "dataset_dir": str(dataset_dir), "validate#dataset#cache_rate": 0.0})
    parser.update(dict(overrides or {}))
    if parser["num_classes"] != 2:
        raise SystemExit(f"{task}: this analysis is for one foreground class (num_classes 2).")
    net = parser.get_parsed_content("net")
    state = torch.load(run / "models" / "model.pt", map_location="cpu", weights_only=True)
    net.load_state_dict(state.get("model", state))
    net.eval()
    from scripts.networks import PresenceGatedNet  # the bundle's package, as the parser imported it

    head = net.head if isinstance(net, PresenceGatedNet) else None
    segment = net.net if head is not None else net
    dataset = parser.get_parsed_content("validate#dataset")
    rows = []
    with torch.no_grad():
        for i in range(len(dataset)):
            item = dataset[i]
            prob = torch.softmax(segment(item["image"][None]).float(), 1)[0, 1].numpy()
            mask = prob > 0.5
            presence = {} if head is None else {PRESENCE: float(torch.sigmoid(head(item["image"][None]).float()))}
            rows.append(
                {
                    **presence,
                    "case": Path(str(item["image"].meta["filename_or_obj"])).stem,
                    "truth_fraction": float((item["label"].numpy() > 0).mean()),
                    "pred_fraction": float(mask.mean()),
                    "sum_probability": float(prob.mean()),
                    "max_probability": float(prob.max()),
                    "p99_probability": float(np.quantile(prob, 0.99)),
                    "mean_probability_in_mask": float(prob[mask].mean()) if mask.any() else 0.0,
                }
            )
    return rows


def separability(rows: list[dict]) -> dict[str, dict]:
    """Per statistic: the most non-empty cases kept non-empty while at least each share of ``SHARES`` of the empty
    cases is predicted empty (rule: empty when the statistic is below a threshold), with that threshold."""
    empty = [r for r in rows if r["truth_fraction"] == 0]
    other = [r for r in rows if r["truth_fraction"] > 0]
    out = {}
    for stat in [s for s in (*STATISTICS, PRESENCE) if s in rows[0]]:
        e, n = np.array([r[stat] for r in empty]), np.array([r[stat] for r in other])
        thresholds = np.unique(np.concatenate([e, n, [np.inf]]))
        best = {}
        for share in SHARES:
            ok = [(int((n >= t).sum()), float(t)) for t in thresholds if (e < t).sum() >= share * len(e)]
            kept, t = max(ok) if ok else (0, float("nan"))
            best[f"{share:.0%}"] = {"non_empty_kept": kept, "threshold": t}
        medians = {
            name: float(np.median(v)) if len(v) else float("nan") for name, v in (("empty", e), ("non_empty", n))
        }
        out[stat] = {"median_empty": medians["empty"], "median_non_empty": medians["non_empty"], **best}
    return out


def run(task: str = "trus_prostate", run: str = "", dataset_dir: str = "", overrides: str | dict = "") -> None:
    """Statistics per case, the separability table; prints it and writes JSON + markdown (``empty_cases_<task>``, or
    ``empty_cases_<task>_<run folder>`` for another run). ``overrides``: JSON of the run's recipe keys."""
    from bench_accuracy import DATASETS, WORK, _commit, _hardware, _literal

    work = WORK / (run or task)  # a run folder relative to benchmarks/work, as in bench_accuracy.py
    data = Path(dataset_dir).resolve() if dataset_dir else ROOT / "data" / "prepared" / DATASETS[task]
    if not (work / "models" / "model.pt").is_file():
        raise SystemExit(f"{work / 'models' / 'model.pt'} missing: train it with bench_accuracy.py run --tasks {task}.")
    extra = json.loads(overrides) if isinstance(overrides, str) and overrides else dict(overrides or {})
    extra = {k: _literal(v) for k, v in extra.items()}  # fire reads '{"presence_head": true}' as the string "true"
    rows = case_statistics(task, work, data, extra)
    table = separability(rows)
    n_empty = sum(r["truth_fraction"] == 0 for r in rows)
    n_other = len(rows) - n_empty
    lines = [
        f"## {task}: can one threshold on the model's output find the empty cases? (fold 0, {n_empty} empty, "
        f"{n_other} with a structure)",
        "",
        "| statistic | median (empty) | median (non-empty) | "
        + " | ".join(f"non-empty kept with {s:.0%} of empties right" for s in SHARES)
        + " |",
        "|---|---|---|" + "---|" * len(SHARES),
    ]
    for stat, t in table.items():
        cells = [f"{t[f'{s:.0%}']['non_empty_kept']}/{n_other}" for s in SHARES]
        lines.append(f"| {stat} | {t['median_empty']:.3f} | {t['median_non_empty']:.3f} | " + " | ".join(cells) + " |")
    command = f"python scripts/bench_empty_cases.py run --task {task}" + (f" --run {run}" if run else "")
    command += f" --overrides '{json.dumps(extra)}'" if extra else ""
    lines += [
        "",
        f"Checkpoint `{work.relative_to(ROOT) if work.is_relative_to(ROOT) else work}`; command: `{command}`.",
    ]
    markdown = "\n".join(lines)
    payload = {
        "task": task,
        "checkpoint": str(work / "models" / "model.pt"),
        "separability": table,
        "cases": rows,
        "hardware": _hardware(),
        "commit": _commit(),
        "command": command,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = f"empty_cases_{task}" + (f"_{work.name}" if run else "")
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown + "\n")
    print(markdown)


def auc(negative: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC: the chance that a positive case scores above a negative one (ties count half)."""
    above = (positive[:, None] > negative[None, :]).sum() + 0.5 * (positive[:, None] == negative[None, :]).sum()
    return float(above / (len(positive) * len(negative)))


def _load_grey(dataset_dir: Path, items: list[dict], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Grey images resized to ``size`` in [0, 1] and whether each mask has any foreground (files read by the
    converters' ``read_image``, which names an unreadable file)."""
    from PIL import Image

    from lesiondata.common import read_image

    images, present = [], []
    for item in items:
        grey = Image.fromarray(read_image(dataset_dir / item["image"])).convert("L")
        images.append(np.asarray(grey.resize((size, size), Image.BILINEAR), dtype=np.float32) / 255.0)
        present.append(bool(read_image(dataset_dir / item["label"], "mask").max() > 0))
    return np.stack(images)[:, None], np.array(present)


def classifier(
    task: str = "trus_prostate",
    target: str = "presence",
    size: int = 128,
    epochs: int = 40,
    learning_rate: float = 1e-3,
    dropout: float = 0.3,
    eval_every: int = 5,
    seed: int = 0,
    dataset_dir: str = "",
) -> None:
    """Train the bundle's ``PresenceClassifier`` alone on folds != 0 and measure how well it finds fold 0's empty
    cases (see the module docstring)."""
    import torch
    from bench_accuracy import DATASETS, _commit, _hardware

    if target not in ("presence", "quality"):
        raise SystemExit(f"target {target!r}: use presence (mask non-empty) or quality (grade low vs the rest).")
    data = Path(dataset_dir).resolve() if dataset_dir else ROOT / "data" / "prepared" / DATASETS[task]
    if not (data / "datalist.json").is_file():
        raise SystemExit(f"{data} not prepared: run scripts/convert.py on ../shared/data first (see README).")
    items = json.loads((data / "datalist.json").read_text())["training"]
    if target == "quality" and any("quality_name" not in d for d in items):
        raise SystemExit(f"{data}: the datalist has no quality_name (C-TRUS's grade); use --target presence.")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    images, present = _load_grey(data, items, size)
    val = np.array([int(d["fold"]) == 0 for d in items])
    wanted = present if target == "presence" else np.array([d.get("quality_name") != "low" for d in items])
    x_train, y_train = torch.from_numpy(images[~val]), torch.from_numpy(wanted[~val].astype(np.float32))
    x_val = torch.from_numpy(images[val])
    sys.path.insert(0, str(ROOT / "bundles" / task))
    from scripts.networks import PresenceClassifier

    net = PresenceClassifier(2, 1, dropout=dropout)
    optim = torch.optim.AdamW(net.parameters(), lr=learning_rate, weight_decay=1e-2)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optim, epochs)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    checks, batch = [], 16
    for epoch in range(1, epochs + 1):
        net.train()
        order = torch.randperm(len(x_train))
        for start in range(0, len(order), batch):
            index = order[start : start + batch]
            x = x_train[index]
            x = x.flip(-1) if rng.random() < 0.5 else x
            gain = 1 + 0.2 * (torch.rand(len(index), 1, 1, 1) - 0.5)
            x = x * gain + 0.1 * (torch.rand(len(index), 1, 1, 1) - 0.5)  # contrast / brightness jitter
            loss = loss_fn(net(x)[:, 0], y_train[index])
            optim.zero_grad()
            loss.backward()
            optim.step()
        schedule.step()
        if epoch % eval_every and epoch != epochs:
            continue
        net.eval()
        with torch.no_grad():
            prob = torch.sigmoid(net(x_val)[:, 0]).numpy()
        rows = [{"truth_fraction": float(p), PRESENCE: float(q)} for p, q in zip(present[val], prob, strict=True)]
        table = separability(rows)[PRESENCE]
        score = auc(prob[~present[val]], prob[present[val]])
        checks.append({"epoch": epoch, "train_loss_last_batch": float(loss.detach()), "auc": score, **table})
        print(
            f"epoch {epoch}: AUC {score:.3f}, "
            + ", ".join(f"{s}: {table[s]['non_empty_kept']}" for s in table if "%" in s)
        )
    n_empty, n_other = int((~present[val]).sum()), int(present[val].sum())
    command = f"python scripts/bench_empty_cases.py classifier --task {task} --target {target} --size {size}"
    command += f" --epochs {epochs}"
    lines = [
        f"## {task}: can an image classifier trained from scratch find the empty cases? (fold 0, {n_empty} empty, "
        f"{n_other} with a structure; target: {target}; {size}x{size} grey; {len(x_train)} training images)",
        "",
        "| epoch | ROC AUC | " + " | ".join(f"non-empty kept with {s:.0%} of empties right" for s in SHARES) + " |",
        "|---|---|" + "---|" * len(SHARES),
    ]
    for c in checks:
        cells = [f"{c[f'{s:.0%}']['non_empty_kept']}/{n_other}" for s in SHARES]
        lines.append(f"| {c['epoch']} | {c['auc']:.3f} | " + " | ".join(cells) + " |")
    if target == "quality":  # how the grade goes with empty masks, over every case of the set
        grades = sorted({d["quality_name"] for d in items})
        counts = {
            g: [
                int(sum(d["quality_name"] == g and bool(p) == has for d, p in zip(items, present, strict=True)))
                for has in (False, True)
            ]
            for g in grades
        }
        lines += ["", "| grade (all folds) | empty mask | with a structure |", "|---|---|---|"]
        lines += [f"| {g} | {e} | {n} |" for g, (e, n) in counts.items()]
    lines += ["", f"`{command}` (the best epoch is chosen on these same cases: optimistic)."]
    markdown = "\n".join(lines)
    payload = {"task": task, "target": target, "size": size, "checks": checks, "hardware": _hardware()}
    payload |= {"grade_vs_empty": counts} if target == "quality" else {}
    payload |= {"commit": _commit(), "command": command}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"empty_cases_{task}_classifier_{target}_{size}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (RESULTS / f"empty_cases_{task}_classifier_{target}_{size}.md").write_text(markdown + "\n")
    print(markdown)


if __name__ == "__main__":
    fire.Fire({"run": run, "classifier": classifier})
