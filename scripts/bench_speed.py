#!/usr/bin/env python
"""Training speed of a bundle against a plain PyTorch baseline written the way the seed projects trained.

Usage::

    python scripts/bench_speed.py run --task ph2_melanoma --epochs 8 --seeds 0,1,2 --amp False,True

Both sides train the same network (the bundle's ``network_def``), loss, optimizer, schedule, transforms and data
(fold 0 of ``data/prepared/<set>``) for the same number of epochs; only the pipeline differs:

* **baseline** (the seeds' way): a plain ``torch.utils.data.Dataset`` that re-reads every PNG and re-runs every
  transform each epoch, a ``DataLoader`` with the same ``num_workers`` (the bundles' value on this device: 0 on a
  CPU, where worker processes only compete with the training step for the cores), and an fp32 eager loop
  (``zero_grad / forward / loss / backward / step``).
* **bundle**: ``python -m monai.bundle run training`` as shipped (``CacheDataset`` of the deterministic transforms,
  the MONAI engine), once per ``--amp`` value: ``False`` (fp32, the default recipe) and ``True`` (bf16 autocast
  on a CPU with native bf16, fp16 AMP on CUDA).

Validation runs once, after the last epoch, on the same fold-0 cases with the same metric (MONAI ``MeanDice`` over
the foreground at ``spatial_size``), so the training epoch times exclude it. Each seed runs both sides back to back;
the ratio is taken per seed, in one run. Writes ``benchmarks/results/speed_<task>_<device>.{json,md}`` and a bar
plot ``speed_<task>_<device>.png``; ``<device>`` is ``cuda``, ``cpu`` (native bf16) or ``cpu_nobf16`` (a CPU
without native bf16, where ``--amp True`` trains in fp32: run it there with ``--amp False`` only).
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import fire

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "scripts"))
from lesiondata.bundles import comma_list, override_args, run_monai_bundle  # noqa: E402
from lesiondata.hardware import cpu_name  # noqa: E402

DATASETS = {"ph2_melanoma": "ph2", "brain_tumor": "brain178", "trus_prostate": "ctrus", "ipmn_histology": "glas"}


def _seeds(seeds) -> list[int]:
    return [int(s) for s in comma_list(seeds)]


def baseline(
    task: str, dataset_dir: str, epochs: int, seed: int, out: str, device: str = "auto", dropout: str = "plain"
) -> None:
    """Train the plain PyTorch baseline once and write its epoch times and final validation Dice to ``out``.

    ``dropout``: ``plain`` (the seeds' way: the network's dropout layers are PyTorch's ``nn.Dropout``, as MONAI's
    networks ship) or ``fast`` (the bundles' ``FastDropout``, the same layer the bundle side trains with)."""
    if dropout not in ("plain", "fast"):
        raise SystemExit(f"--dropout {dropout!r}: use plain (nn.Dropout, the seeds' way) or fast (FastDropout)")
    import torch
    from monai.bundle import ConfigParser
    from monai.metrics import DiceMetric
    from monai.transforms import AsDiscrete, Compose
    from monai.utils import set_determinism

    bundle = ROOT / "bundles" / task
    sys.path.insert(0, str(bundle))  # the bundle's own `scripts` package (networks, losses, optim, data)
    import scripts.data

    dev = torch.device(
        "cuda" if device == "auto" and torch.cuda.is_available() else "cpu" if device == "auto" else device
    )
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "train.json"))
    parser.update({"bundle_root": str(bundle), "dataset_dir": dataset_dir, "max_epochs": epochs, "seed": seed})
    parser.update({"device": f"$torch.device('{dev}')"})
    from scripts.networks import use_fast_dropout

    set_determinism(seed=seed)
    net = use_fast_dropout(parser.get_parsed_content("net"), enable=dropout == "fast")
    loss_function = parser.get_parsed_content("loss_function")
    optimizer = parser.get_parsed_content("optim")
    scheduler = parser.get_parsed_content("lr_scheduler")
    load = parser.get_parsed_content("load_transforms")
    augment = parser.get_parsed_content("augment_transforms")
    batch_size, workers = parser.get_parsed_content("batch_size"), parser.get_parsed_content("num_workers")
    num_classes = parser.get_parsed_content("num_classes")

    class PlainDataset(torch.utils.data.Dataset):
        """Re-reads and re-transforms each file every time it is asked for (no cache)."""

        def __init__(self, items: list[dict], transform: Compose) -> None:
            self.items, self.transform = items, transform

        def __len__(self) -> int:
            return len(self.items)

        def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
            d = self.transform(dict(self.items[index]))
            return torch.as_tensor(d["image"]), torch.as_tensor(d["label"])

    train_items = scripts.data.load_split(dataset_dir, "train", 0)
    val_items = scripts.data.load_split(dataset_dir, "val", 0)
    loader = torch.utils.data.DataLoader(
        PlainDataset(train_items, Compose([*load, *augment])),
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
    )
    epoch_seconds = []
    for _ in range(epochs):
        net.train()
        t0 = time.perf_counter()
        for image, label in loader:
            image, label = image.to(dev), label.to(dev)
            optimizer.zero_grad()
            loss = loss_function(net(image), label)
            loss.backward()
            optimizer.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        epoch_seconds.append(time.perf_counter() - t0)
        if scheduler is not None and not isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step()
    net.eval()
    metric = DiceMetric(include_background=False)
    onehot = AsDiscrete(to_onehot=num_classes)
    val = PlainDataset(val_items, Compose(load))
    with torch.no_grad():
        for i in range(len(val)):
            image, label = val[i]
            pred = net(image[None].to(dev)).argmax(1).cpu()
            metric(y_pred=onehot(pred)[None], y=onehot(label.to(torch.long))[None])
    Path(out).write_text(json.dumps({"epoch_seconds": epoch_seconds, "val_dice": float(metric.aggregate().item())}))


FLOOR_HEADING = "### Compute floor"


def floor(
    task: str = "ph2_melanoma",
    dataset_dir: str = "",
    steps: int = 8,
    out: str = "",
    update: bool = True,
    compile: bool = False,  # noqa: A002 (the option's name on the command line)
    plain_dropout: bool = False,
    record: str = "",
) -> None:
    """The compute floor of a training epoch: the bare training step of the bundle's network, loss and optimizer on
    a synthetic batch already in memory (no data loading, no augmentation, no engine), in fp32 and with AMP.

    ``n_train / images_per_second`` is the shortest epoch any pipeline can reach with this network on this machine,
    so ``baseline epoch / floor epoch`` bounds the speed-up a better pipeline can give. Prints the figures; writes
    them to ``out`` when given and, with ``update``, to the ``compute_floor`` field of
    ``benchmarks/results/speed_<task>_<device>.{json,md}`` when that record exists (with the ceiling ratio against its
    baseline). ``--compile True`` also times the step under ``torch.compile`` (inductor), with its compilation
    time, as ``fp32_compiled`` / ``amp_compiled`` beside the eager figures (the ceiling ratios stay the eager ones).
    ``--plain_dropout True`` also times the step with PyTorch's own ``nn.Dropout`` in place of the bundles'
    ``FastDropout`` (``fp32_nn_dropout``, ``amp_nn_dropout``), in the same run. ``record``: the stem of the record
    to update instead of ``speed_<task>_<device>`` (as ``run --record`` names it).
    """
    import torch
    from monai.bundle import ConfigParser

    bundle = ROOT / "bundles" / task
    sys.path.insert(0, str(bundle))
    import scripts.data
    import scripts.optim
    from scripts.engines import amp_mode
    from scripts.networks import use_fast_dropout

    dataset_dir = Path(dataset_dir).resolve() if dataset_dir else ROOT / "data" / "prepared" / DATASETS[task]
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "train.json"))
    parser.update({"bundle_root": str(bundle), "dataset_dir": str(dataset_dir), "device": f"$torch.device('{dev}')"})
    n_train = len(scripts.data.load_split(dataset_dir, "train", 0, check_files=False))
    batch, channels = parser.get_parsed_content("batch_size"), parser.get_parsed_content("in_channels")
    size = list(parser.get_parsed_content("spatial_size"))
    figures = {"device": str(dev), "cpu": cpu_name(), "threads": torch.get_num_threads()}
    figures.update({"batch_size": batch, "n_train": n_train})
    variants = [("fp32", False, False), ("amp", True, False)]
    variants += [("fp32_compiled", False, True), ("amp_compiled", True, True)] if compile else []
    variants += [("fp32_nn_dropout", False, False), ("amp_nn_dropout", True, False)] if plain_dropout else []
    for tag, amp, compiled in variants:
        torch.manual_seed(0)
        net = parser.get_parsed_content("network_def", lazy=False).to(dev)  # a fresh network per precision
        net = use_fast_dropout(net, enable=not tag.endswith("_nn_dropout"))
        model = torch.compile(net) if compiled else net
        loss_function = parser.get_parsed_content("loss_function")
        optimizer = scripts.optim.build_optimizer(
            parser["optimizer"], net.parameters(), parser["learning_rate"], parser["weight_decay"]
        )
        x = torch.randn(batch, channels, *size, device=dev)
        y = (torch.rand(batch, 1, *size, device=dev) > 0.5).float()
        # what the bundle's --amp True resolves to: fp16 on CUDA, bf16 on a CPU with native bf16, else fp32
        mode = amp_mode(amp, dev)
        dtype = torch.bfloat16 if mode == "cpu" else torch.float16
        scaler = torch.amp.GradScaler(enabled=mode == "cuda")
        times = []
        for i in range(steps + 2):  # two warm-up steps
            t0 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(dev.type, dtype=dtype, enabled=mode is not None):
                loss = loss_function(model(x), y)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            if i >= 2:
                times.append(time.perf_counter() - t0)
            elif i == 0 and compiled:
                figures[f"{tag}_first_step_s"] = round(time.perf_counter() - t0, 1)  # compilation included
        img_s = batch / statistics.median(times)
        figures[f"{tag}_images_per_s"] = round(img_s, 2)
        figures[f"{tag}_floor_epoch_s"] = round(n_train / img_s, 3)
    figures["command"] = f"python scripts/bench_speed.py floor --task {task}" + (" --compile True" if compile else "")
    figures["command"] += (
        (f" --steps {steps}" if steps != 8 else "")
        + (" --plain_dropout True" if plain_dropout else "")
        + (f" --record {record}" if record else "")
    )
    record = RESULTS / f"{record or _record_name(task, dev.type)}.json"
    if update and record.is_file():
        payload = json.loads(record.read_text())
        base = payload["mean"]["baseline_epoch_s"]
        for tag in ("fp32", "amp"):
            figures[f"max_speedup_{tag}"] = round(base / figures[f"{tag}_floor_epoch_s"], 2)
        payload["compute_floor"] = figures
        record.write_text(json.dumps(payload, indent=2) + "\n")
        md = record.with_suffix(".md")
        text = md.read_text().split(FLOOR_HEADING)[0].rstrip() if md.is_file() else ""
        md.write_text(
            f"{text}\n\n{FLOOR_HEADING}\n\nBare training step of the same network, loss and optimizer on a batch "
            f"already in memory (`{figures['command']}`, {figures['threads']} threads): fp32 "
            f"{figures['fp32_images_per_s']} img/s -> an epoch of {n_train} images cannot take less than "
            f"{figures['fp32_floor_epoch_s']} s; AMP {figures['amp_images_per_s']} img/s -> "
            f"{figures['amp_floor_epoch_s']} s. Largest speed-up any pipeline can give over this baseline "
            f"({base} s/epoch): **{figures['max_speedup_fp32']}x** in fp32, **{figures['max_speedup_amp']}x** with AMP.\n"
        )
    if out:
        Path(out).write_text(json.dumps(figures))
    print(json.dumps(figures, indent=2))


def _record_name(task: str, device_type: str) -> str:
    """``speed_<task>_<device>``: ``cuda``, ``cpu`` (native bf16, where AMP means bf16 autocast) or ``cpu_nobf16``
    (a CPU without it, where the bundle's ``amp`` resolves to fp32), so records of different machines sit side by side."""
    if device_type != "cpu":
        return f"speed_{task}_{device_type}"
    sys.path.insert(0, str(ROOT / "bundles" / task))
    from scripts.engines import cpu_supports_bf16

    return f"speed_{task}_cpu" if cpu_supports_bf16() else f"speed_{task}_cpu_nobf16"


def _bundle(
    task: str, dataset_dir: Path, epochs: int, seed: int, amp: bool, work: Path, keys: dict | None = None
) -> dict:
    overrides = {
        **(keys or {}),
        "dataset_dir": str(dataset_dir),
        "ckpt_dir": str(work),
        "output_dir": str(work / "eval"),
        "max_epochs": epochs,
        "val_interval": epochs,
        "seed": seed,
        "amp": amp,
    }
    run_monai_bundle(task, ["run", "--config_file", "configs/train.json", *override_args(overrides)], quiet=True)
    history = json.loads((work / "history.json").read_text())
    # the last epoch's time includes the one validation pass: leave it out
    return {"epoch_seconds": [h["epoch_seconds"] for h in history[:-1]], "val_dice": history[-1]["val_mean_dice"]}


def _plot(path: Path, rows: list[dict], tags: list[str], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    series = [("baseline", "plain PyTorch baseline")]
    series += [("baseline_fastdrop", "baseline, FastDropout")] if "baseline_fastdrop_epoch_s" in rows[0] else []
    series += [(t, t.replace("_", " ")) for t in tags]
    width = 0.8 / len(series)
    for j, (key, label) in enumerate(series):
        xs = [i - 0.4 + width * (j + 0.5) for i in range(len(rows))]
        ax.bar(xs, [r[f"{key}_epoch_s"] for r in rows], width=width, label=label)
    ax.set_xticks(list(range(len(rows))), [f"seed {r['seed']}" for r in rows])
    ax.set_ylabel("median training epoch (s)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(
    task: str = "ph2_melanoma",
    epochs: int = 8,
    seeds: str = "0,1,2",
    amp: str = "False,True",
    dataset_dir: str = "",
    baseline_dropout: str = "plain",
    variants: str | dict = "",
    record: str = "",
) -> None:
    """Baseline vs bundle (once per ``amp`` value: ``False`` = the bundle in fp32, ``True`` = bf16/fp16 AMP) for
    each seed; prints the table and writes JSON, markdown and a PNG.

    ``baseline_dropout``: ``plain`` (default) trains the baseline with PyTorch's ``nn.Dropout``, as the seeds did
    with MONAI's networks; ``plain,fast`` also trains it with the bundles' ``FastDropout`` in the same run
    (``baseline_fastdrop_*`` columns and ``*_speedup_vs_fastdrop``), to show how much of the ratio that layer is.
    ``variants``: other bundle settings timed in the same run, beside the bundle as shipped, as JSON
    ``{"name": {"key": value, ...}}`` (e.g. ``'{"threadloader": {"thread_loader": true}}'``): each adds
    ``bundle_<amp>_<name>`` columns, so a loading option is compared with the default on the same seeds and machine.
    ``record``: the file stem under ``benchmarks/results/`` (default ``speed_<task>_<device>``), to keep a record of
    another CPU model beside the existing ones (e.g. ``speed_ph2_melanoma_cpu_xeon``)."""
    import torch

    dropouts = comma_list(baseline_dropout)
    if not dropouts or dropouts[0] != "plain" or not set(dropouts) <= {"plain", "fast"}:
        raise SystemExit(f"--baseline_dropout {baseline_dropout!r}: use plain or plain,fast")
    extra = json.loads(variants) if isinstance(variants, str) and variants else variants or {}
    if not isinstance(extra, dict) or any(not isinstance(v, dict) or not k.isidentifier() for k, v in extra.items()):
        raise SystemExit(
            f'--variants {variants!r}: give JSON {{"name": {{"bundle_key": value}}}}, names as identifiers'
        )
    dataset_dir = Path(dataset_dir).resolve() if dataset_dir else ROOT / "data" / "prepared" / DATASETS[task]
    if not (dataset_dir / "datalist.json").is_file():
        raise SystemExit(f"{dataset_dir} not prepared: run scripts/convert.py on ../shared/data first (see README).")
    amps = [a.lower() == "true" for a in comma_list(amp)]
    # (column tag, amp, bundle keys) of every bundle run per seed: the shipped bundle, then each variant
    runs = [
        (("bundle_amp" if use_amp else "bundle_fp32") + (f"_{variant}" if variant else ""), use_amp, keys)
        for use_amp, (variant, keys) in itertools.product(amps, [("", {}), *extra.items()])
    ]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_speed_") as tmp:
        for seed in _seeds(seeds):
            row: dict = {"seed": seed}
            for dropout in dropouts:
                key = "baseline" if dropout == "plain" else "baseline_fastdrop"
                out = Path(tmp) / f"{key}_{seed}.json"
                cmd = [sys.executable, __file__, "baseline", "--task", task, "--dataset_dir", str(dataset_dir)]
                cmd += ["--epochs", str(epochs), "--seed", str(seed), "--out", str(out), "--dropout", dropout]
                subprocess.run(cmd, check=True)
                base = json.loads(out.read_text())
                row[f"{key}_epoch_s"] = round(statistics.median(base["epoch_seconds"]), 3)
                row[f"{key}_val_dice"] = round(base["val_dice"], 4)
            for tag, use_amp, keys in runs:
                fast = _bundle(task, dataset_dir, epochs, seed, use_amp, Path(tmp) / f"{tag}_{seed}", keys)
                f = statistics.median(fast["epoch_seconds"])
                row.update({f"{tag}_epoch_s": round(f, 3), f"{tag}_speedup": round(row["baseline_epoch_s"] / f, 2)})
                if "baseline_fastdrop_epoch_s" in row:
                    row[f"{tag}_speedup_vs_fastdrop"] = round(row["baseline_fastdrop_epoch_s"] / f, 2)
                row[f"{tag}_val_dice"] = round(fast["val_dice"], 4)
            rows.append(row)
            print(json.dumps(row), flush=True)
    mean = {k: round(statistics.mean(r[k] for r in rows), 4) for k in rows[0] if k != "seed"}
    tags = [tag for tag, _, _ in runs]
    header = "| seed | baseline s/epoch | baseline val Dice | " + " | ".join(
        f"{t} s/epoch | {t} speed-up | {t} val Dice" for t in tags
    )
    name = record or _record_name(task, device)
    lines = [
        f"## {task}: training speed, plain PyTorch baseline vs bundle ({name.removeprefix(f'speed_{task}_')}, {epochs} epochs)",
        "",
        header + " |",
        "|---|---|---|" + "---|---|---|" * len(tags),
    ]
    for r in [*rows, {"seed": "mean", **mean}]:
        cells = [str(r["seed"]), str(r["baseline_epoch_s"]), str(r["baseline_val_dice"])]
        for t in tags:
            cells += [str(r[f"{t}_epoch_s"]), f"{r[f'{t}_speedup']}x", str(r[f"{t}_val_dice"])]
        lines.append("| " + " | ".join(cells) + " |")
    if "fast" in dropouts:
        lines += [
            "",
            "The baseline above trains with PyTorch's `nn.Dropout`, as the seeds did with MONAI's networks. The same "
            "baseline with the bundles' `FastDropout` (same data, loop and seed), against the same bundle runs:",
            "",
            "| seed | baseline (FastDropout) s/epoch | val Dice | "
            + " | ".join(f"{t} speed-up against it" for t in tags)
            + " |",
            "|---|---|---|" + "---|" * len(tags),
        ]
        for r in [*rows, {"seed": "mean", **mean}]:
            cells = [str(r["seed"]), str(r["baseline_fastdrop_epoch_s"]), str(r["baseline_fastdrop_val_dice"])]
            lines.append("| " + " | ".join(cells + [f"{r[f'{t}_speedup_vs_fastdrop']}x" for t in tags]) + " |")
    markdown = "\n".join(lines)
    command = (
        f"python scripts/bench_speed.py run --task {task} --epochs {epochs} --seeds {','.join(map(str, _seeds(seeds)))}"
    )
    command += f" --amp {','.join(str(a) for a in amps)}"
    command += f" --baseline_dropout {','.join(dropouts)}" if dropouts != ["plain"] else ""
    command += f" --variants '{json.dumps(extra)}'" if extra else ""
    command += f" --record {record}" if record else ""
    payload = {
        "task": task,
        "device": device,
        "epochs": epochs,
        "rows": rows,
        "mean": mean,
        "dice_gap_vs_baseline": {t: round(mean[f"{t}_val_dice"] - mean["baseline_val_dice"], 4) for t in tags},
        "baseline_dropout": dropouts,
        "variants": extra,
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "command": command,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown + "\n")
    _plot(RESULTS / f"{name}.png", rows, tags, f"{task}: {epochs} epochs, {device}")
    # the ceiling for the ratio: the bare training step, in a fresh process (adds `compute_floor` to the record)
    floor_cmd = [sys.executable, __file__, "floor", "--task", task, "--dataset_dir", str(dataset_dir)]
    subprocess.run(floor_cmd + (["--record", record] if record else []), check=True)
    print((RESULTS / f"{name}.md").read_text())


if __name__ == "__main__":
    fire.Fire({"run": run, "baseline": baseline, "floor": floor})
