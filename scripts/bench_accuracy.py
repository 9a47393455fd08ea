#!/usr/bin/env python
"""Train and evaluate bundles on the real development sets; print and save true Dice/Jaccard and epoch times.

Usage::

    python scripts/bench_accuracy.py run --tasks ph2_melanoma,ipmn_histology --minutes 10 [--max_epochs 60]
    python scripts/bench_accuracy.py run --tasks all --minutes 10 --overrides "--network segnet"
    python scripts/bench_accuracy.py cases ph2_melanoma --runs sweep/ph2_melanoma/seed-0_240ep,sweep/... --name seeds

Each task trains its bundle's default recipe on fold 0 of the prepared set (``data/prepared/<set>``, made by
``scripts/convert.py`` from ``../shared/data``), evaluates on fold 0 at each image's original size, and checks
that fold 0 is the fixed split recorded in ``benchmarks/splits/<task>_fold0.txt`` (written on first use).
Results go to ``benchmarks/results/accuracy_<task>.json`` with the hardware, wall time and commit.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import fire

ROOT = Path(__file__).resolve().parents[1]
DATASETS = {"ph2_melanoma": "ph2", "brain_tumor": "brain178", "trus_prostate": "ctrus", "ipmn_histology": "glas"}
RESULTS = ROOT / "benchmarks" / "results"
SPLITS = ROOT / "benchmarks" / "splits"
WORK = ROOT / "benchmarks" / "work"

sys.path.insert(0, str(ROOT / "scripts"))
from lesiondata.bundles import comma_list, override_args, run_monai_bundle  # noqa: E402
from lesiondata.hardware import cpu_name  # noqa: E402


def _hardware() -> str:
    sys.path.insert(0, str(ROOT / "bundles" / "_shared"))
    from scripts.engines import cpu_supports_bf16  # where --amp True trains in bf16 (elsewhere in fp32)

    bf16 = "native bf16" if cpu_supports_bf16() else "no native bf16 (amp = fp32)"
    return f"{cpu_name()}, {os.cpu_count()} cores, {bf16}"


def _commit() -> str:
    """The checkout's commit, ``-dirty`` when tracked files other than the benchmarks' own results differ from it (a
    run's settings are those of its start: take this before training, as the bundle files may change while it runs;
    a record written a moment earlier by the same command does not make the code that runs next dirty)."""
    git = ["git", "-C", str(ROOT)]
    head = subprocess.run([*git, "rev-parse", "--short=7", "HEAD"], capture_output=True, text=True).stdout.strip()
    changed = subprocess.run(
        [*git, "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)benchmarks/results"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return f"{head}-dirty" if changed else head


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


def _dice_jaccard(summary: dict) -> tuple[dict, dict, dict]:
    c = summary["classes"]["1"]
    return c, c["dice_nonempty"], c["jaccard_nonempty"]


def evaluate_task(task: str, work: Path, extra: list[str], out: Path) -> dict:
    """Evaluate the checkpoint in ``work/models`` on fold 0 at the original size; returns metrics_summary."""
    dataset_dir = ROOT / "data" / "prepared" / DATASETS[task]
    paths = {"dataset_dir": str(dataset_dir), "ckpt_dir": str(work / "models"), "output_dir": str(out)}
    config = "['configs/train.json','configs/evaluate.json']"
    run_monai_bundle(task, ["run", "--config_file", config, *override_args(paths), *extra])
    return json.loads((out / "metrics_summary.json").read_text())


# plots without image content; the best/worst-case overlays show the licensed images themselves, so they stay in
# benchmarks/work/<task>/eval/ (git-ignored) and are never committed
PLOTS = ("curves.png", "dice_histogram.png")


def keep_plots(task: str, eval_dir: Path) -> list[str]:
    """Copy the evaluation's plots into ``benchmarks/results/plots/<task>_<name>.png`` (the work folder is not kept)."""
    out = RESULTS / "plots"
    out.mkdir(parents=True, exist_ok=True)
    kept = []
    for name in PLOTS:
        if (eval_dir / name).is_file():
            shutil.copyfile(eval_dir / name, out / f"{task}_{name}")
            kept.append(f"benchmarks/results/plots/{task}_{name}")
    return kept


# recipes with a first stage on another set: the brain bundle pre-trains on the 2146-image Roboflow export, whose
# "polygons" are bounding boxes (weak supervision), then fine-tunes on the polygon set (``init_weights``)
# (stage 1 in fp32, as measured: the bundle's ``amp`` default applies to stage 2 only). Every key but ``dataset`` is
# a bundle override of the first stage; a sweep varies one as ``pretrain_<key>`` (e.g. ``pretrain_max_epochs``).
PRETRAIN = {"brain_tumor": {"dataset": "brain2146", "max_epochs": 8, "amp": False}}
STAGE1 = "pretrain_"  # prefix of the sweep keys that set a first-stage key


def split_stage1(task: str, combo: dict) -> tuple[dict, dict]:
    """A grid point's bundle overrides and its first-stage changes (the ``pretrain_<key>`` keys, prefix dropped)."""
    stage1 = {k[len(STAGE1) :]: v for k, v in combo.items() if k.startswith(STAGE1)}
    if stage1 and task not in PRETRAIN:
        raise SystemExit(f"{task} has no first stage (see PRETRAIN): drop {sorted(STAGE1 + k for k in stage1)}.")
    return {k: v for k, v in combo.items() if not k.startswith(STAGE1)}, stage1


def training_modules(task: str) -> list[Path]:
    """The bundle code a training depends on: the ``scripts`` modules its ``configs/train.json`` names, the modules
    those import (``from .x import``, at any depth) and the package's ``__init__.py``. Inference-only code (the ONNX
    exporter, reports) is not among them, so editing it does not retrain a cached first stage."""
    scripts = ROOT / "bundles" / "_shared" / "scripts"
    todo = set(re.findall(r"\bscripts\.(\w+)", (ROOT / "bundles" / task / "configs" / "train.json").read_text()))
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen or not (scripts / f"{name}.py").is_file():
            continue
        seen.add(name)
        todo |= set(re.findall(r"^\s*from \.(\w+) import", (scripts / f"{name}.py").read_text(), re.MULTILINE))
    return [p for p in [scripts / "__init__.py", *(scripts / f"{n}.py" for n in sorted(seen))] if p.is_file()]


STAGE1_SET = ("dataset_dir", "ckpt_dir", "output_dir", "time_limit_minutes")  # keys :func:`pretrain` always sets


def stage1_config(task: str, spec: dict) -> dict:
    """The part of the bundle's ``configs/train.json`` a first stage with settings ``spec`` trains from: the config
    less its top-level keys that the stage sets itself (``spec`` and ``STAGE1_SET``) and the plain settings (no
    component, expression or reference inside) that nothing in the config refers to (``@key``; e.g. ``tta_views``,
    read only by ``evaluate.json``). Entry points (``run``, ``initialize``) and ``imports`` hold expressions and
    stay. So a change to a fine-tune or evaluation-only default (the fine-tune's ``max_epochs``, ``tta_views``)
    keeps a cached first stage, and any other change to the config trains it again."""
    config = json.loads((ROOT / "bundles" / task / "configs" / "train.json").read_text())
    referenced = set(re.findall(r"[@%]([A-Za-z_]\w*)", json.dumps(config)))

    def acts(key: str, value: object) -> bool:
        text = json.dumps(value)
        return key in referenced or any(mark in text for mark in ('"_target_"', '"$', '"@', '"%'))

    set_by_stage = set(spec) | set(STAGE1_SET)
    return {k: v for k, v in config.items() if k not in set_by_stage and acts(k, v)}


def _stage1_fingerprint(task: str, spec: dict) -> str:
    """What a first-stage checkpoint depends on: its settings, what it reads of the bundle's train config
    (:func:`stage1_config`), the bundle code training uses (:func:`training_modules`) and the stage-1 datalist. A
    cached checkpoint is reused only while this is unchanged."""
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode())
    digest.update(json.dumps(stage1_config(task, spec), sort_keys=True).encode())
    for path in [ROOT / "data" / "prepared" / spec["dataset"] / "datalist.json", *training_modules(task)]:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def pretrain(task: str, changes: dict | None = None) -> dict:
    """Stage 1 of a two-stage recipe (``PRETRAIN`` with ``changes``); returns its record, with the checkpoint path.

    The checkpoint is kept in ``benchmarks/work/pretrain/<task>/<settings>/`` and reused by later runs while its
    settings, the bundle's train config, the shared bundle code and the data are unchanged (the record keeps the
    training time it took, and says ``"reused": true``). Runs started together wait for one another (a file lock).
    """
    import fcntl

    spec = {**PRETRAIN[task], **(changes or {})}
    dataset_dir = ROOT / "data" / "prepared" / spec["dataset"]
    if not (dataset_dir / "datalist.json").is_file():
        raise SystemExit(f"{dataset_dir} not prepared: run scripts/convert.py on ../shared/data first (see README).")
    out = WORK / "pretrain" / task / _slug(spec)
    out.mkdir(parents=True, exist_ok=True)
    fingerprint = _stage1_fingerprint(task, spec)
    with open(out / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        kept = out / "stage1.json"
        if kept.is_file() and (out / "models" / "model.pt").is_file():
            cached = json.loads(kept.read_text())
            if cached.get("fingerprint") == fingerprint:
                print(f"[bench_accuracy] stage 1 reused: {out} (same settings, config, code and data)")
                return {**cached["record"], "reused": True}
        shutil.rmtree(out / "models", ignore_errors=True)
        stage = {
            "dataset_dir": str(dataset_dir),
            "ckpt_dir": str(out / "models"),
            "output_dir": str(out / "eval"),
            **{k: v for k, v in spec.items() if k != "dataset"},
            "time_limit_minutes": 0,
        }
        commit, t0 = _commit(), time.perf_counter()  # the code as the stage starts
        run_monai_bundle(task, ["run", "--config_file", "configs/train.json", *override_args(stage)])
        history = json.loads((out / "models" / "history.json").read_text())
        record = {
            **spec,
            "train_seconds": round(time.perf_counter() - t0, 1),
            "best_val_dice_box_level": max(h.get("val_mean_dice", 0) for h in history),
            "checkpoint": str(out / "models" / "model.pt"),
            "commit": commit,
        }
        kept.write_text(json.dumps({"fingerprint": fingerprint, "record": record}, indent=2) + "\n")
    return record


def run_task(
    task: str, minutes: float, max_epochs: int | None, extra: list[str], work: Path, stage1: dict | None = None
) -> dict:
    """Train + evaluate one bundle in ``work`` (``models/``, ``eval/``); returns the result record. ``stage1``:
    changes to the first stage of a two-stage recipe (see ``PRETRAIN``)."""
    dataset_dir = ROOT / "data" / "prepared" / DATASETS[task]
    if not (dataset_dir / "datalist.json").is_file():
        raise SystemExit(f"{dataset_dir} not prepared: run scripts/convert.py on ../shared/data first (see README).")
    check_split(task, dataset_dir)
    changes, stage1, asked = stage1, None, list(extra)
    if task in PRETRAIN and "--init_weights" not in extra:
        stage1 = pretrain(task, changes)
        extra = [*extra, "--init_weights", stage1["checkpoint"]]
    elif changes:
        raise SystemExit(f"{task}: first-stage changes {changes} given with --init_weights (no first stage then).")
    ckpt = work / "models"
    paths = {"dataset_dir": str(dataset_dir), "ckpt_dir": str(ckpt), "output_dir": str(work / "eval")}
    limits = {"time_limit_minutes": minutes, **({"max_epochs": max_epochs} if max_epochs else {})}
    commit, t0 = _commit(), time.perf_counter()
    run_monai_bundle(
        task, ["run", "--config_file", "configs/train.json", *override_args(paths), *extra, *override_args(limits)]
    )
    train_seconds = time.perf_counter() - t0
    summary = evaluate_task(task, work, extra, work / "eval")
    record = {
        **_work_record(task, work, train_seconds, summary),
        "overrides": extra,
        "pretrain": stage1,
        "plots": keep_plots(task, work / "eval") if work == WORK / task else [],
        "hardware": _hardware(),
        "commit": commit,
        "command": run_command(task, minutes, max_epochs, asked, changes),
    }
    (work / "record.json").write_text(json.dumps(record, indent=2) + "\n")  # what `promote` takes
    return record


def run_command(task: str, minutes: float, max_epochs: int | None, asked: list[str], changes: dict) -> str:
    """The ``run`` command line that trains this record again. ``--overrides`` is one shell word holding the bundle
    arguments, so a dict value such as ``--loss_kwargs "{'batch_dice': False}"`` survives both splits."""
    words = ["python", "scripts/bench_accuracy.py", "run", "--tasks", task, "--minutes", str(minutes)]
    words += ["--max_epochs", str(max_epochs)] if max_epochs else []
    command = shlex.join(words)
    command += f" --overrides {_shell_quote(' '.join(_shell_quote(w) for w in asked))}" if asked else ""
    return command + (f" --pretrain {shlex.quote(json.dumps(changes))}" if changes else "")


def _shell_quote(word: str) -> str:
    """``shlex.quote``, but in double quotes where that reads better: ``"--loss_kwargs \"{'a': False}\""``."""
    if shlex.quote(word) == word or any(c in word for c in "$`\\!"):
        return shlex.quote(word)
    return '"' + word.replace('"', '\\"') + '"'


def _work_record(task: str, work: Path, train_seconds: float, summary: dict | None = None) -> dict:
    """The figures of a trained and evaluated run folder (``models/history.json``; ``summary`` is its
    ``eval/metrics_summary.json``, read from the folder when not given)."""
    history = json.loads((work / "models" / "history.json").read_text())
    if summary is None:
        summary = json.loads((work / "eval" / "metrics_summary.json").read_text())
    epoch_s = sorted(h["epoch_seconds"] for h in history)
    return {
        "task": task,
        "dataset": DATASETS[task],
        "fold": 0,
        "val_cases": summary["n_images"],
        "epochs": len(history),
        "train_seconds": round(train_seconds, 1),
        "median_epoch_seconds": round(epoch_s[len(epoch_s) // 2], 2),
        # what `amp` resolved to (on a CPU, `amp: true` measures bf16 against fp32); absent from older histories
        "precision": history[-1].get("precision"),
        "best_val_iou_resized": max(h.get("val_mean_iou", 0) for h in history),
        **selection(history),
        "summary": summary,
    }


def selection(history: list[dict]) -> dict:
    """Which epoch the kept checkpoint is (the best validation mean IoU, the training's key metric, on the same
    fold-0 cases the benchmark reports) and what the last epoch scored: the size of the selection's optimism."""
    ious = [h.get("val_mean_iou", 0.0) for h in history]
    best = max(range(len(ious)), key=ious.__getitem__)
    return {
        "checkpoint_epoch": best + 1,
        "best_val_dice_resized": round(history[best].get("val_mean_dice", 0.0), 4),
        "final_val_dice_resized": round(history[-1].get("val_mean_dice", 0.0), 4),
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


def _overrides(combo: dict) -> list[str]:
    """Bundle command-line overrides for one grid point (Python literals: fire parses ``True``, not ``true``)."""
    out = []
    for key, value in combo.items():
        out += [f"--{key}", value if isinstance(value, str) else repr(value)]
    return out


def _literal(value):
    """JSON words that fire leaves as strings when it parses ``--grid`` itself: "true" -> True, "null" -> None, also
    inside a dict or list value (``{"loss_kwargs": [{"batch_dice": false}]}``: a string "false" would be truthy)."""
    if isinstance(value, dict):
        return {k: _literal(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_literal(v) for v in value]
    return {"true": True, "false": False, "null": None}.get(value, value) if isinstance(value, str) else value


def _grid_spec(grid: str | dict) -> dict[str, list]:
    """A ``{"key": [values...]}`` grid (JSON text, or the dict fire made of it) with its JSON words restored."""
    spec = json.loads(grid) if isinstance(grid, str) else dict(grid)
    return {k: [_literal(x) for x in (v if isinstance(v, (list, tuple)) else [v])] for k, v in spec.items()}


def _grid(grid: str | dict) -> list[dict]:
    """All combinations of a ``{"key": [values...]}`` grid (JSON text or a dict), in order."""
    spec = _grid_spec(grid)
    return [dict(zip(spec, values, strict=True)) for values in itertools.product(*spec.values())]


def _grid_text(grid: str | dict) -> str:
    """The grid as the JSON one types after ``--grid`` (``[true]``, ``{"batch_dice": false}``): fire hands these
    words over as strings, and a recorded ``"false"`` reads as the string that once made a run ignore its switch."""
    return json.dumps(_grid_spec(grid))


def _run_dir(task: str, combo: dict, epochs: int) -> Path:
    """A sweep point's run folder, one per point and epoch count: ``benchmarks/work/sweep/<task>/<point>_<N>ep``."""
    return WORK / "sweep" / task / f"{_slug(combo)}_{epochs}ep"


def _slug(combo: dict) -> str:
    text = "_".join(f"{k}-{v}" for k, v in combo.items()) or "default"
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", text)[:120]


def _row(summary: dict) -> dict:
    c, d, j = _dice_jaccard(summary)
    return {
        "dice_mean": d["mean"],
        "dice_median": d["median"],
        "dice_worst": d["worst"],
        "jaccard_mean": j["mean"],
        "pooled_dice": c["pooled_dice"],
        "pooled_jaccard": c["pooled_jaccard"],
        "empty_truth_cases": c["empty_truth_cases"],
        "empty_predicted_empty": c["empty_predicted_empty"],
    }


def _cell(value) -> str:
    """A setting as the JSON one types in a grid (``true``, ``{"batch_dice": false}``); words such as
    ``(default)`` and network names as they are."""
    return value if isinstance(value, str) else json.dumps(value)


def _md_rows(header: list[str], rows: list[list[str]]) -> list[str]:
    """The lines of a markdown table."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def _grid_table(rows: list[dict], keys: list[str], extra: tuple[str, ...] = ()) -> str:
    cols = [*keys, *extra, "dice_mean", "dice_median", "dice_worst", "jaccard_mean", "pooled_dice", "pooled_jaccard"]
    if any(r["empty_truth_cases"] for r in rows):
        cols.append("empty_predicted_empty")
    table = []
    for r in rows:
        cells = [
            _cell(r[c])
            if c in keys
            else str(r[c])
            if not isinstance(r[c], float)
            else f"{r[c]:.1f}"
            if c == "train_min"
            else f"{r[c]:.4f}"
            for c in cols
        ]
        if "empty_predicted_empty" in cols:
            cells[-1] = f"{r['empty_predicted_empty']}/{r['empty_truth_cases']}"
        table.append(cells)
    lines = _md_rows(cols, table)
    return "\n".join(lines)


def _best(rows: list[dict]) -> dict:
    """Highest mean Dice over non-empty cases; ties broken by pooled Dice, then empty cases predicted empty."""
    return max(rows, key=lambda r: (round(r["dice_mean"], 4), round(r["pooled_dice"], 4), r["empty_predicted_empty"]))


def _save(name: str, payload: dict, markdown: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown + "\n")


def postprocess(
    tasks: str = "all",
    grid: str | dict = '{"tta_views": [1, 4], "keep_largest_component": [false, true], "fill_holes": [false, true]}',
    run: str = "",
    name: str = "",
) -> None:
    """Re-evaluate each task's trained checkpoint (``benchmarks/work/<task>/models``, from ``run``) over a grid of
    evaluation-time options: flip TTA views, largest component, hole filling, minimum component size.

    ``run``: another trained run folder, relative to ``benchmarks/work`` (e.g. a sweep point,
    ``sweep/trus_prostate/spatial_size-_384_384__20ep``; put its recipe keys such as ``spatial_size`` in the grid).
    Writes ``benchmarks/results/postprocess_<task>.{json,md}`` (``postprocess_<task>_<run folder>`` for another
    run; ``name`` adds ``_<name>``, so another grid on the same checkpoint keeps the earlier file) and prints the
    table and the best setting.
    """
    for task in _names(tasks):
        work = WORK / (run or task)
        if not (work / "models" / "model.pt").is_file():
            raise SystemExit(
                f"{work / 'models' / 'model.pt'} missing: run `bench_accuracy.py run --tasks {task}` first."
            )
        combos, rows = _grid(grid), []
        for combo in combos:
            summary = evaluate_task(task, work, _overrides(combo), work / f"eval_{_slug(combo)}")
            rows.append({**combo, **_row(summary)})
        best = _best(rows)
        markdown = f"## {task}: evaluation-time options (fold 0, checkpoint {work / 'models'})\n\n"
        markdown += _grid_table(rows, list(combos[0]))
        markdown += f"\n\nBest: {json.dumps({k: best[k] for k in combos[0]})}"
        record = {
            "task": task,
            "grid": _grid_spec(grid),
            "rows": rows,
            "best": best,
            "commit": _commit(),
            "hardware": _hardware(),
        }
        record["command"] = (
            (f"python scripts/bench_accuracy.py postprocess --tasks {task} --grid '{_grid_text(grid)}'")
            + (f" --run {run}" if run else "")
            + (f" --name {name}" if name else "")
        )
        _save(
            f"postprocess_{task}" + (f"_{Path(run).name}" if run else "") + (f"_{name}" if name else ""),
            record,
            markdown,
        )
        print(markdown)


def evaluate(tasks: str = "all") -> None:
    """Re-evaluate each task's trained checkpoint (from ``run``) with the bundle's current evaluation defaults
    (e.g. after choosing post-processing with ``postprocess``) and update ``accuracy_<task>.json``: the training
    figures stay, the summary is replaced, and the record says which commit evaluated it."""
    records = []
    for task in _names(tasks):
        path = RESULTS / f"accuracy_{task}.json"
        if not path.is_file() or not (WORK / task / "models" / "model.pt").is_file():
            raise SystemExit(f"no trained checkpoint / record for {task}: run `bench_accuracy.py run --tasks {task}`.")
        record = json.loads(path.read_text())
        record["summary"] = evaluate_task(task, WORK / task, list(record.get("overrides", [])), WORK / task / "eval")
        record["evaluated_at_commit"] = _commit()
        record["evaluate_command"] = f"python scripts/bench_accuracy.py evaluate --tasks {task}"
        record["plots"] = keep_plots(task, WORK / task / "eval")
        path.write_text(json.dumps(record, indent=2) + "\n")
        records.append(record)
    print(table(records))


DEFAULT = "(default)"  # in rows of sweeps from before rows held the resolved value of every key
PRETRAINED = "(stage-1 checkpoint)"  # init_weights of a two-stage recipe (see PRETRAIN)
NO_STAGE1 = "(no stage 1)"  # first-stage keys of a run given its init_weights (no first stage ran)


def _settings(task: str, keys: list[str], overrides: list[str], stage1: dict | None = None) -> dict:
    """The value each of ``keys`` had in a run: the bundle's ``configs/train.json`` value unless the run's
    ``overrides`` (``["--key", "value", ...]``, as given to the bundle) set it; a pre-trained first stage reads
    ``PRETRAINED``. A key the bundle does not have reads ``DEFAULT``; a ``pretrain_<key>`` key reads the first
    stage's value: ``PRETRAIN`` with the run's ``stage1`` changes, else the bundle's own (the first stage trains
    ``configs/train.json`` with only those changed: ``pretrain_loss_kwargs`` follows the bundle's loss), ``DEFAULT``
    for a task without a first stage."""
    given = dict(zip(overrides[::2], overrides[1::2], strict=False))
    first = {**PRETRAIN[task], **(stage1 or {})} if task in PRETRAIN else {}
    staged = [k for k in keys if k.startswith(STAGE1)]
    inherited = [k[len(STAGE1) :] for k in staged if k[len(STAGE1) :] not in first] if first else []
    plain = [k for k in keys if f"--{k}" not in given and k not in staged]
    bundle = bundle_defaults(task, list(dict.fromkeys([*plain, *inherited])), missing=DEFAULT)  # one config read
    values = {k: bundle[k] for k in plain}
    first |= {k: bundle[k] for k in inherited}
    values |= {k: first.get(k[len(STAGE1) :], DEFAULT) for k in staged}
    for key in keys:
        if f"--{key}" in given:
            values[key] = PRETRAINED if key == "init_weights" and task in PRETRAIN else _parse(given[f"--{key}"])
    return {key: values[key] for key in keys}


def point_settings(task: str, keys: list[str], combo: dict) -> dict:
    """The value of each of ``keys`` in the run of sweep point ``combo``: the point's own values, the bundle's for the
    rest. A two-stage recipe's first stage sets ``init_weights`` (``PRETRAINED``), unless the point gives a
    checkpoint: then no first stage runs, and its ``pretrain_<key>`` keys read ``NO_STAGE1``."""
    bundle_combo, changes = split_stage1(task, combo)
    given = task in PRETRAIN and "init_weights" in combo
    stage1 = ["--init_weights", PRETRAINED] if task in PRETRAIN and not given else []
    settings = _settings(task, keys, _overrides(bundle_combo) + stage1, changes)
    if given:
        settings |= {k: NO_STAGE1 for k in settings if k.startswith(STAGE1)}
    return {**settings, **combo}


def _parse(text: str):
    """An override as the bundle reads it (``repr`` of a Python literal, or a plain string)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _merge_rows(old: list[dict], new: list[dict], keys: list[str]) -> list[dict]:
    """Rows of earlier sweeps of the same task plus this one's; a point run again (same settings, same epochs)
    replaces its earlier row. A key an earlier sweep did not vary reads ``(default)`` (the bundle's value then)."""

    def point(row: dict) -> str:
        return json.dumps({**{k: row.get(k, DEFAULT) for k in keys}, "epochs": row["epochs"]}, sort_keys=True)

    fresh = {point(r) for r in new}
    return [{**dict.fromkeys(keys, DEFAULT), **r} for r in [*(r for r in old if point(r) not in fresh), *new]]


# fields of a sweep row that are results, not settings
ROW_FIELDS = {"epochs", "train_min", "command", "commit", "dice_mean", "dice_median", "dice_worst", "jaccard_mean"}
ROW_FIELDS |= {"pooled_dice", "pooled_jaccard", "empty_truth_cases", "empty_predicted_empty"}
ROW_FIELDS |= {"precision"}  # what ``amp`` resolved to: a result of the run, not a recipe key


def sweep(task: str, grid: str | dict, minutes: float = 0.0, max_epochs: int | None = None) -> None:
    """Train + evaluate ``task`` for every point of ``grid`` through the bundle's own overrides.

    Example (the PH2 seed's comparison, on true Dice/Jaccard)::

        python scripts/bench_accuracy.py sweep ph2_melanoma \\
            --grid '{"network": ["unet", "segnet"], "loss": ["dicece", "dice"], "learning_rate": [0.001, 0.002]}' \\
            --max_epochs 20

    Each run lives in ``benchmarks/work/sweep/<task>/<point>_<N>ep`` (one folder per point and epoch count). The
    table (sorted by mean Dice, with training time) and the winning recipe go to ``benchmarks/results/sweep_<task>.{json,md}``; rows of earlier sweeps of the task
    are kept (each with its command and commit), so grids run one after another add up to one comparison.
    """
    combos, rows = _grid(grid), []
    command = f"python scripts/bench_accuracy.py sweep {task} --grid '{_grid_text(grid)}'"
    command += f" --minutes {minutes}" + (f" --max_epochs {max_epochs}" if max_epochs else "")
    keys = _sweep_keys(_read_sweep(task), list(combos[0]))
    epochs = max_epochs or bundle_defaults(task, ["max_epochs"])["max_epochs"]
    for combo in combos:
        settings = point_settings(task, keys, combo)  # as the run starts (the bundle may change while it trains)
        bundle_combo, changes = split_stage1(task, combo)
        record = run_task(task, minutes, max_epochs, _overrides(bundle_combo), _run_dir(task, combo, epochs), changes)
        rows.append(
            {
                **settings,
                "epochs": record["epochs"],
                "train_min": round(record["train_seconds"] / 60, 1),
                "precision": record["precision"],
                **_row(record["summary"]),
                "command": command,
                "commit": record["commit"],
            }
        )
    record_sweep(task, rows, list(combos[0]), command)


def _read_sweep(task: str) -> dict:
    """``benchmarks/results/sweep_<task>.json`` as recorded so far ({} before the first sweep)."""
    path = RESULTS / f"sweep_{task}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _sweep_keys(earlier: dict, grid_keys: list[str]) -> list[str]:
    """The setting columns of a task's sweep table: those of the earlier sweeps, then this grid's new ones."""
    known = earlier.get("keys") or [k for k in (earlier.get("rows") or [{}])[0] if k not in ROW_FIELDS]
    return list(dict.fromkeys([*known, *grid_keys]))


def sweep_markdown(task: str, rows: list[dict], keys: list[str], best: dict) -> str:
    """The table of ``benchmarks/results/sweep_<task>.md``: every row, the winner and the commands that ran them."""
    markdown = f"## {task}: sweep (fold 0, true Dice/Jaccard at original size)\n\n"
    markdown += _grid_table(rows, keys, ("epochs", "train_min"))
    markdown += f"\n\nWinner: {json.dumps({k: best[k] for k in keys})} ({best['epochs']} epochs)."
    commands = sorted({r["command"] for r in rows if r.get("command")})
    return markdown + (
        " `(default)`: a row from before rows held the value of every key (the bundle's value then). Commands: "
        + ", ".join(f"`{c}`" for c in commands)
    )


def record_sweep(task: str, rows: list[dict], grid_keys: list[str], command: str) -> None:
    """Add a sweep's rows to ``benchmarks/results/sweep_<task>.{json,md}`` (see :func:`_merge_rows`), choose the
    winner over all rows, print the table. Sweeps that finish together take turns (a file lock), so none loses
    the other's rows."""
    import fcntl

    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / f".sweep_{task}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        earlier = _read_sweep(task)
        keys = _sweep_keys(earlier, grid_keys)
        old = [
            {"command": earlier.get("command"), "commit": earlier.get("commit"), **r} for r in earlier.get("rows", [])
        ]
        rows = sorted(_merge_rows(old, rows, keys), key=lambda r: -r["dice_mean"])
        best = _best(rows)
        markdown = sweep_markdown(task, rows, keys, best)
        payload = {
            "task": task,
            "keys": keys,
            "rows": rows,
            "best": best,
            "hardware": _hardware(),
            "command": command,
            "commit": _commit(),
        }
        _save(f"sweep_{task}", payload, markdown)
    print(markdown)


GOALS = {
    "ph2_melanoma": "Dice mean >= 0.95, Jaccard mean >= 0.905, worst Dice >= 0.88 (plain-UNet yardstick: 0.93)",
    "brain_tumor": "Dice mean >= 0.75 (plain-UNet yardstick: 0.57)",
    "trus_prostate": "Dice >= 0.60 over cases with a wall, pooled Dice >= 0.60, >= 90 % of empty cases predicted empty "
    "(plain UNet: 0.0)",
    "ipmn_histology": "Dice mean >= 0.91 (plain-UNet yardstick: 0.855)",
}
CARD_START, CARD_END = "<!-- results:start -->", "<!-- results:end -->"


def _trained_in(record: dict) -> str:
    """ ", trained in bf16" and the like, from what ``amp`` resolved to in the run ("" where not recorded)."""
    return f", trained in {record['precision']}" if record.get("precision") else ""


def _card_section(task: str) -> str:
    """The generated "Results" block of a model card, from ``benchmarks/results``."""
    path = RESULTS / f"accuracy_{task}.json"
    if not path.is_file():
        return f"No measured result yet: run `python scripts/bench_accuracy.py run --tasks {task} --minutes 0`."
    r = json.loads(path.read_text())
    c, d, j = _dice_jaccard(r["summary"])
    lines = [
        f"Measured on the development copy of `{r['dataset']}`, fold 0 ({r['val_cases']} validation cases, list in "
        f"`benchmarks/splits/{task}_fold0.txt`), true Dice and Jaccard per image at the original size and pooled over "
        f"the split; {r['hardware']}{_trained_in(r)}, commit `{r['commit']}`.",
        "",
        "| epochs | training | s/epoch | Dice mean* | Dice median* | Dice worst* | Jaccard mean* | pooled Dice "
        "| pooled Jaccard | empty cases predicted empty |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {r['epochs']} | {r['train_seconds'] / 60:.1f} min | {r['median_epoch_seconds']} | {d['mean']:.4f} "
        f"| {d['median']:.4f} | {d['worst']:.4f} | {j['mean']:.4f} | {c['pooled_dice']:.4f} | {c['pooled_jaccard']:.4f} "
        f"| {_empties(c)} |",
        "",
        "\\* per image, over the cases whose truth mask is not empty.",
        *(
            [
                "",
                f"Which way the errors lean, pooled over the split: {c['false_positive_fraction']:.1%} of the truth's "
                f"area predicted outside it (false positives), {c['false_negative_fraction']:.1%} of it missed (false "
                "negatives).",
            ]
            if "false_positive_fraction" in c
            else []
        ),
        *(
            [
                "",
                f"The checkpoint is epoch {r['checkpoint_epoch']} of {r['epochs']}, kept for the best validation mean "
                "IoU on these same fold-0 cases, so the figures lean optimistic by the selection: on the training's "
                f"resized grid that epoch scored Dice {r['best_val_dice_resized']:.4f}, the last epoch "
                f"{r['final_val_dice_resized']:.4f}. The held-back test cases were never used.",
            ]
            if "checkpoint_epoch" in r
            else []
        ),
        *(
            [
                "",
                f"Two-stage recipe: pre-trained {r['pretrain']['max_epochs']} epochs on `{r['pretrain']['dataset']}` "
                f"({r['pretrain']['train_seconds'] / 60:.1f} min; box-level validation Dice "
                f"{r['pretrain']['best_val_dice_box_level']:.3f}), then fine-tuned with `--init_weights` (the "
                "training time above).",
            ]
            if r.get("pretrain")
            else []
        ),
        "",
        f"Goal (issue 5): {GOALS[task]}. Command: `{r['command']}`"
        + (f" (a sweep point, made the record by `{r['promote_command']}`)" if "promote_command" in r else "")
        + (f", then `{r['evaluate_command']}` (commit `{r['evaluated_at_commit']}`)" if "evaluate_command" in r else "")
        + f" (record: `benchmarks/results/accuracy_{task}.json`).",
    ]
    post = RESULTS / f"postprocess_{task}.md"
    if post.is_file():
        lines += [
            "",
            "Evaluation-time options "
            + json.loads(post.with_suffix(".json").read_text()).get("checkpoint_note", "on the same checkpoint")
            + f" (`benchmarks/results/postprocess_{task}.json`):",
            "",
            *post.read_text().splitlines()[2:],
        ]
    for extra in (
        sorted(RESULTS.glob(f"speed_{task}_*.md"))
        + sorted(RESULTS.glob(f"sweep_{task}.md"))
        + sorted(RESULTS.glob(f"ensemble_{task}*.md"))
        + sorted(RESULTS.glob(f"empty_cases_{task}.md"))
    ):
        lines += ["", f"From `benchmarks/results/{extra.name}`:", "", *extra.read_text().splitlines()]
    return "\n".join(lines)


def _empties(c: dict) -> str:
    return f"{c['empty_predicted_empty']}/{c['empty_truth_cases']}" if c["empty_truth_cases"] else "none empty"


def _readme_table() -> str:
    """One row per task with a record: the README's summary of the model cards."""
    rows = [
        "| bundle | set (fold 0) | epochs | train min | Dice mean* | median* | worst* | Jaccard mean* | pooled Dice "
        "| empty -> empty | goal |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for task in DATASETS:
        path = RESULTS / f"accuracy_{task}.json"
        if not path.is_file():
            continue
        r = json.loads(path.read_text())
        c, d, j = _dice_jaccard(r["summary"])
        rows.append(
            f"| {task} | {r['dataset']} ({r['val_cases']}) | {r['epochs']} | {r['train_seconds'] / 60:.1f}"
            + (f" + {r['pretrain']['train_seconds'] / 60:.1f} pre-training " if r.get("pretrain") else " ")
            + f"| {d['mean']:.3f} | {d['median']:.3f} | {d['worst']:.3f} | {j['mean']:.3f} | {c['pooled_dice']:.3f} "
            f"| {_empties(c)} | {GOALS[task]} |"
        )
    rows += ["", "\\* per image at the original size, over cases whose truth mask is not empty."]
    return "\n".join(rows)


def _replace_block(path: Path, body: str) -> None:
    text = path.read_text()
    if CARD_START not in text or CARD_END not in text:
        raise SystemExit(f"{path}: add the markers {CARD_START} and {CARD_END} where the results go.")
    head, rest = text.split(CARD_START, 1)
    _, tail = rest.split(CARD_END, 1)
    path.write_text(f"{head}{CARD_START}\n{body}\n{CARD_END}{tail}")
    print(f"updated {path}")


def cards(tasks: str = "all") -> None:
    """Rewrite the generated results block of each bundle's model card (``docs/README.md``) from the results JSON.

    The block sits between ``<!-- results:start -->`` and ``<!-- results:end -->``; the rest of the card is
    hand-written and left alone. The README's summary table (same markers) is rewritten too.
    """
    for task in _names(tasks):
        _replace_block(ROOT / "bundles" / task / "docs" / "README.md", _card_section(task))
    _replace_block(ROOT / "README.md", _readme_table())


def _names(tasks: str | tuple) -> list[str]:
    names = list(DATASETS) if tasks == "all" else comma_list(tasks)
    unknown = [t for t in names if t not in DATASETS]
    if unknown:
        raise SystemExit(f"unknown task(s) {unknown}; choose from {list(DATASETS)} or all.")
    return names


def ensemble(task: str, members: str | tuple, name: str = "seeds") -> None:
    """Mean ensemble of trained runs of ``task`` (same architecture), scored like a single model.

    ``members``: comma list of run folders (each with ``models/model.pt``), relative to ``benchmarks/work`` or
    absolute, e.g. ``ph2_melanoma,sweep/ph2_melanoma/seed-1``. The members are merged into one checkpoint by the
    bundle's ``ensemble_merge.json`` and evaluated by its ``evaluate.json`` with ``--ensemble_size n`` on fold 0 at
    the original size, with the bundle's current post-processing; each member is re-evaluated the same way, so the
    gain is measured on the same cases in one run. Every member must have been trained without fold 0 (a fold
    ensemble scored on fold 0 would have seen it). Writes ``benchmarks/results/ensemble_<task>.{json,md}``
    (``ensemble_<task>_<name>`` for a ``name`` other than ``seeds``, so ensembles of other members sit beside it).
    """
    names = comma_list(members)
    runs = _run_dirs(names)
    missing = [str(r / "models" / "model.pt") for r in runs if not (r / "models" / "model.pt").is_file()]
    if len(runs) < 2 or missing:
        raise SystemExit(f"need two or more trained runs; missing: {', '.join(missing) or '(fewer than two given)'}.")
    out = WORK / task / f"ensemble_{name}"
    merge = {
        "ensemble_members": [str(r / "models" / "model.pt") for r in runs],
        "ckpt_dir": str(out),
        "merged_dir": str(out / "models"),
    }
    run_monai_bundle(
        task, ["run", "--config_file", "['configs/train.json','configs/ensemble_merge.json']", *override_args(merge)]
    )
    rows = []
    for name_of, r in zip(names, runs, strict=True):
        summary = evaluate_task(task, r, [], r / "eval_for_ensemble")
        rows.append({"member": name_of, **_row(summary)})
    summary = evaluate_task(task, out, override_args({"ensemble_size": len(runs)}), out / "eval")
    rows.append({"member": f"mean ensemble of {len(runs)}", **_row(summary)})
    members_mean = sum(r["dice_mean"] for r in rows[:-1]) / len(runs)
    gain = {
        "dice_mean_vs_best_member": round(rows[-1]["dice_mean"] - max(r["dice_mean"] for r in rows[:-1]), 4),
        "dice_mean_vs_members_mean": round(rows[-1]["dice_mean"] - members_mean, 4),
    }
    command = f"python scripts/bench_accuracy.py ensemble {task} --members {','.join(names)} --name {name}"
    markdown = f"## {task}: mean ensemble vs its members (fold 0, true Dice/Jaccard at original size)\n\n"
    markdown += _grid_table(rows, ["member"]) + f"\n\nGain: {json.dumps(gain)}. Command: `{command}`."
    payload = {
        "task": task,
        "rows": rows,
        "gain": gain,
        "hardware": _hardware(),
        "commit": _commit(),
        "command": command,
    }
    _save(f"ensemble_{task}" + ("" if name == "seeds" else f"_{name}"), payload, markdown)
    print(markdown)


def _run_dirs(names: list[str]) -> list[Path]:
    """Run folders given relative to ``benchmarks/work`` (``sweep/ph2_melanoma/seed-1_240ep``) or absolute."""
    return [Path(m) if Path(m).is_absolute() else WORK / m for m in names]


def per_case_dice(eval_dir: Path, label: int = 1) -> dict[str, float]:
    """Case id -> true Dice of class ``label`` from an evaluation's ``per_image.csv`` (cases with a non-empty truth)."""
    with open(eval_dir / "per_image.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["class"]) == label and r["truth_empty"] != "True"]
    return {Path(r["image"]).name.split(".")[0]: float(r["dice"]) for r in rows}


def cases(task: str, runs: str | tuple, worst: int = 8, name: str = "runs") -> None:
    """Per-case Dice of several evaluated runs of ``task`` side by side: which cases make their means differ.

    ``runs``: comma list of run folders (each with ``eval/per_image.csv``, as ``sweep`` and ``run`` leave them),
    relative to ``benchmarks/work`` or absolute. Prints the ``worst`` cases (lowest Dice in any run) with each run's
    Dice, then per run its mean, its mean without its own worst case, and the mean without the one case whose Dice
    varies most across the runs; last, the mean of each case's best run (an upper bound for picking among them). On a small fold one case can move a mean by more than a recipe change; this says
    whether it did. Writes ``benchmarks/results/cases_<task>_<name>.{json,md}``.
    """
    names = comma_list(runs)
    dirs = _run_dirs(names)
    missing = [str(d / "eval" / "per_image.csv") for d in dirs if not (d / "eval" / "per_image.csv").is_file()]
    if len(dirs) < 2 or missing:
        raise SystemExit(f"need two or more evaluated runs; missing: {', '.join(missing) or '(fewer than two given)'}.")
    dice = [per_case_dice(d / "eval") for d in dirs]
    common = sorted(set.intersection(*(set(d) for d in dice)))
    if any(len(d) != len(common) for d in dice):
        raise SystemExit("the runs were evaluated on different cases: evaluate them on the same fold.")
    spread = {c: max(d[c] for d in dice) - min(d[c] for d in dice) for c in common}
    swing = max(common, key=spread.get)
    low = sorted(common, key=lambda c: min(d[c] for d in dice))[:worst]

    def mean(values: list[float]) -> float:
        return sum(values) / len(values)

    summary = [
        {
            "run": n,
            "dice_mean": round(mean([d[c] for c in common]), 4),
            "without_own_worst": round(mean(sorted(d[c] for c in common)[1:]), 4),
            f"without_{swing}": round(mean([d[c] for c in common if c != swing]), 4),
        }
        for n, d in zip(names, dice, strict=True)
    ]
    header = ["case", *(f"run {i + 1}" for i in range(len(names))), "spread"]
    lines = _md_rows(header, [[c, *(f"{d[c]:.3f}" for d in dice), f"{spread[c]:.3f}"] for c in low])
    best_of_runs = round(mean([max(d[c] for d in dice) for c in common]), 4)  # an oracle: each case's best run
    cols = list(summary[0])
    table_md = _md_rows(cols, [[str(r[k]) for k in cols] for r in summary])
    command = f"python scripts/bench_accuracy.py cases {task} --runs {','.join(names)} --name {name}"
    markdown = (
        f"## {task}: per-case Dice of {len(names)} runs (fold 0, {len(common)} cases with a structure)\n\n"
        + "Runs: "
        + ", ".join(f"{i + 1} = `{n}`" for i, n in enumerate(names))
        + f"\n\nThe {len(low)} lowest cases:\n\n"
        + "\n".join(lines)
        + f"\n\nMeans ({swing}: the case whose Dice varies most across the runs):\n\n"
        + "\n".join(table_md)
        + f"\n\nBest run of every case (an oracle no single run is): mean Dice {best_of_runs}."
        + f"\n\nCommand: `{command}`."
    )
    payload = {
        "task": task,
        "runs": names,
        "dice": {c: [round(d[c], 4) for d in dice] for c in common},
        "summary": summary,
        "swing_case": swing,
        "best_of_runs": best_of_runs,
        "commit": _commit(),
        "command": command,
    }
    _save(f"cases_{task}_{name}", payload, markdown)
    print(markdown)


def bundle_defaults(task: str, keys: list[str], missing=None) -> dict:
    """The values of ``keys`` in the bundle's ``configs/train.json`` as it is now (expressions evaluated); a key
    the config does not have raises ``KeyError``, or reads ``missing`` when that is given."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(ROOT / "bundles" / task / "configs" / "train.json"))
    parser["bundle_root"] = str(ROOT / "bundles" / task)
    if missing is not None:
        return {key: parser.get_parsed_content(key) if key in parser else missing for key in keys}
    return {key: parser.get_parsed_content(key) for key in keys}


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _trained_folder(task: str, combo: dict, epochs: int) -> Path | None:
    """The evaluated run folder of a sweep point trained for ``epochs`` (``<point>_<N>ep``, or the ``<point>``
    folder of sweeps from before folders named their epochs when its history has that many epochs)."""
    for work in (_run_dir(task, combo, epochs), WORK / "sweep" / task / _slug(combo)):
        history = work / "models" / "history.json"
        if (work / "eval" / "metrics_summary.json").is_file() and history.is_file():
            if len(json.loads(history.read_text())) == epochs:
                return work
    return None


def promote(task: str, point: str | dict) -> None:
    """Make a sweep point the task's accuracy record (``accuracy_<task>.json``, the model card and README figures)
    without training it again, once it IS the bundle's default recipe.

    ``point`` is the grid point as JSON, e.g. ``'{"colour_aug": 0.1, "elastic_prob": 0.5}'``. Refused unless every
    key of the point and the run's epoch count equal the bundle's current ``configs/train.json`` values (change
    ``bundles/_shared/tasks.json`` and run ``scripts/sync_bundles.py`` first). The record keeps the sweep row's
    command, commit and training time and says where it came from.
    """
    combo = {k: _literal(v) for k, v in (json.loads(point) if isinstance(point, str) else dict(point)).items()}
    sweep_file = RESULTS / f"sweep_{task}.json"
    recorded = _read_sweep(task)
    rows = recorded.get("rows", [])
    matches = [r for r in rows if all(_same(r.get(k), v) for k, v in combo.items())]
    others = sorted({k for r in matches for k in r if k not in ROW_FIELDS and k not in combo})
    now = _settings(task, others, [])  # the other keys must be the bundle's values now (or unrecorded)
    # an unrecorded key (a row from before the key existed) ran the template's value, the old behaviour: such a row is
    # the default recipe only while this bundle still has that value
    template = json.loads((ROOT / "bundles" / "_shared" / "configs" / "train.json").read_text())
    old_value_now = {k: k not in template or _same(template[k], now[k]) for k in others}
    matches = [
        r
        for r in matches
        if all(
            r[k] == PRETRAINED or (r[k] == DEFAULT and old_value_now[k]) or _same(r[k], now[k])
            for k in others
            if k in r
        )
    ]
    bundle_combo, _ = split_stage1(task, combo)
    defaults = {
        **bundle_defaults(task, [*bundle_combo, "max_epochs"]),
        **_settings(task, [*set(combo) - set(bundle_combo)], []),
    }
    if len(matches) > 1:  # the same point at several epoch counts: the one of the default recipe
        matches = [r for r in matches if r["epochs"] == defaults["max_epochs"]] or matches
    # the run the point's folder holds (its record names the commit it ran at) decides between rows of the point
    work = _trained_folder(task, combo, matches[0]["epochs"]) if matches else None
    record = json.loads((work / "record.json").read_text()) if work and (work / "record.json").is_file() else None
    held = record.get("commit") if record else None
    if len(matches) > 1 and held is not None:  # the point run again (the older row from before a key existed)
        matches = [r for r in matches if r.get("commit") == held] or matches
    if work is None or len(matches) != 1:
        raise SystemExit(
            f"no single sweep row with its run folder for {combo} ({len(matches)} rows in {sweep_file.name}; folders "
            f"under {WORK / 'sweep' / task}): run `python scripts/bench_accuracy.py sweep {task} --grid '<the point "
            "as lists>'` first."
        )
    row = matches[0]
    if held is not None and row.get("commit") not in (None, held):
        raise SystemExit(
            f"{task}: the sweep row of {combo} (commit {row.get('commit')}) is not the run its folder {work.name} holds "
            f"(commit {held}): the point names another run. Give the point as that row's sweep ran it ("
            f"{row.get('command')}), every key of its grid."
        )
    differ = {k: (v, defaults[k]) for k, v in combo.items() if not _same(v, defaults[k])}
    if row["epochs"] != defaults["max_epochs"]:
        differ["max_epochs"] = (row["epochs"], defaults["max_epochs"])
    if differ:
        raise SystemExit(
            f"{task}: the point is not the bundle's default recipe (point vs default: {differ}); set them in "
            "bundles/_shared/tasks.json and run scripts/sync_bundles.py (a pretrain_<key>: PRETRAIN in "
            "scripts/bench_accuracy.py), then promote."
        )
    if record is None:  # a run from before run folders kept their record: rebuild it from the folder + sweep row
        record = {
            **_work_record(task, work, row["train_min"] * 60),
            "pretrain": None,
            "hardware": recorded.get("hardware") or _hardware(),
            "commit": row["commit"],
            "command": row["command"],
            "train_seconds_note": "from the sweep row (rounded to 0.1 min)",
        }
    record["overrides"] = []  # the point is the default recipe now
    default_run = WORK / task  # where `evaluate` and `postprocess` look for the default recipe's checkpoint
    shutil.rmtree(default_run, ignore_errors=True)
    shutil.copytree(work, default_run)
    record["plots"] = keep_plots(task, default_run / "eval")
    record["promoted_from"] = {"sweep_point": combo, "run_folder": os.path.relpath(work, ROOT)}
    record["promote_command"] = f"python scripts/bench_accuracy.py promote {task} --point '{json.dumps(combo)}'"
    (RESULTS / f"accuracy_{task}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(table([record]))


def run(
    tasks: str = "all", minutes: float = 10.0, max_epochs: int | None = None, overrides: str = "", pretrain: str = ""
) -> None:
    """Train + evaluate ``tasks`` (comma list or ``all``) for at most ``minutes`` of training each.

    ``overrides`` are extra bundle arguments, e.g. ``--overrides "--network segnet --loss dice"``; ``pretrain``
    changes the first stage of a two-stage recipe (JSON, e.g. ``--pretrain '{"max_epochs": 12}'``; see ``PRETRAIN``).
    """
    extra = shlex.split(overrides)
    changes = (
        {k: _literal(v) for k, v in (json.loads(pretrain) if isinstance(pretrain, str) else dict(pretrain)).items()}
        if pretrain
        else {}
    )
    records = []
    for task in _names(tasks):
        record = run_task(task, minutes, max_epochs, extra, WORK / task, changes)
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"accuracy_{task}.json").write_text(json.dumps(record, indent=2) + "\n")
        records.append(record)
    print(table(records))


if __name__ == "__main__":
    fire.Fire(
        {
            "run": run,
            "evaluate": evaluate,
            "postprocess": postprocess,
            "sweep": sweep,
            "ensemble": ensemble,
            "cases": cases,
            "promote": promote,
            "cards": cards,
        }
    )
