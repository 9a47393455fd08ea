#!/usr/bin/env python
"""End-to-end CPU inference of each bundle: PNG in -> mask written, per image, eager fp32 vs bf16 vs exported models.

Usage::

    python scripts/bench_inference.py run [--bundles ph2_melanoma,trus_prostate] [--sizes 256,512] [--threads 1]
    python scripts/bench_inference.py run --modes fp32,bf16,onnx,openvino,auto --threads 2
    python scripts/bench_inference.py run --bundles brain_tumor --ensemble_size 1,2   # a 2-network mean ensemble too
    python scripts/bench_inference.py run --bundles brain_tumor --tta_views 1,4       # 4-view flip TTA too
    python scripts/bench_inference.py show [--path benchmarks/results/inference_cpu.json]
    python scripts/bench_inference.py parts [--bundle ph2_melanoma] [--out ...]   # PNG reader, FastResized, forward

For each bundle (its current default network, ``spatial_size`` and ``tta_views``): a model is trained for ``epochs`` epochs on synthetic
data at 64x64 (weights only matter for the masks being non-trivial) and exported to TorchScript and ONNX
(``scripts/export_bundle.py``), all under ``benchmarks/work/inference/<bundle>/<network>``. Then, per input size, ``images`` synthetic
PNGs of ``size x size`` go through the bundle's inference workflow (``configs/inference.json``: load, preprocess,
network, invert to the original size, findings, save) in each mode:

* ``fp32``: eager PyTorch; ``bf16``: ``--amp bf16`` (bf16 autocast forced, see ``scripts/engines.py``);
  ``torchscript``: ``net`` = ``torch.jit.load(models/model.ts)``; ``onnx``: ``configs/inference_onnx.json``
  (ONNX Runtime, ``threads`` intra-op threads); ``openvino``: ``--backend openvino`` (the same export in OpenVINO,
  fp32); ``openvino_bf16``: the same with ``--amp bf16`` (OpenVINO in bf16); ``auto``: the bundle's default
  (``backend: auto``, ``amp: true``), which times PyTorch fp32, PyTorch and OpenVINO bf16 where native, and both
  runtimes on the first image and runs the fastest (``auto_chose``: its choice in each run).

``threads`` defaults to 1: on a shared, oversubscribed 2-core machine two OpenMP threads per process make eager
PyTorch wait at barriers for descheduled threads (per-image times up to 30x longer and bimodal).

The time of one image runs from the data loader's fetch (``GET_BATCH_STARTED``) to the end of its iteration (mask
and findings written). The images are split into ``rounds`` folders on which the modes take turns, so that load
from other jobs on a shared machine hits every mode alike; the first ``warmup`` image of each run is dropped and
the median (p50) of the rest (>= 20) is reported. A mode is *correct* when its masks agree with fp32's on >= 99.5%
of the pixels.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import fire
import monai
import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from lesiondata.bundles import BUNDLES_DIR, bundle_names, comma_list, override_args, run_monai_bundle  # noqa: E402
from lesiondata.export import export_bundle  # noqa: E402
from lesiondata.hardware import cpu_name  # noqa: E402
from lesiondata.maskstats import mask_agreement  # noqa: E402
from lesiondata.synthetic import make_demo_dataset  # noqa: E402

DEFAULT_OUT = REPO / "benchmarks" / "results" / "inference_cpu.json"
MC_SAMPLES = 5  # the label app's default epistemic_simulation_size
DEFAULT_WORK = REPO / "benchmarks" / "work" / "inference"
MODES = ("fp32", "bf16", "torchscript", "onnx", "openvino", "openvino_bf16", "auto")
DEFAULT_MODES = MODES
AGREEMENT = 0.995
TRAIN = {"spatial_size": [64, 64], "num_workers": 0, "batch_size": 4, "val_batch_size": 2}


def prepare(bundle: str, work: Path, epochs: int, ensemble_size: int = 1) -> dict[str, Any]:
    """Synthetic data, a briefly trained model and its exports for ``bundle`` (reused when already there).

    ``ensemble_size`` above 1: that many models (seeds 0, 1, ...; ``models/``, ``member<k>/``) merged into one
    mean-ensemble checkpoint by the bundle's ``configs/ensemble_merge.json``, as a seed or fold ensemble ships, and
    exported, in ``ensemble<n>/``. The members are trained apart, not copied: the ONNX exporter stores identical
    copies' weights once (a two-copy export was the size of one network), and branches with the same weights and
    input are what ONNX Runtime's common-subexpression elimination may merge, timing one network for two."""
    data = work / "data"
    if not (data / "datalist.json").is_file():
        make_demo_dataset(bundle, data, n=20, seed=1, overwrite=True)
    labels = json.loads((data / "dataset.json").read_text())["labels"]
    task = {"labels": labels, "num_classes": len(labels)}
    members = [work / "models", *(work / f"member{k}" for k in range(1, ensemble_size))]
    for seed, folder in enumerate(members):
        if not (folder / "model.pt").is_file():
            args = ["run", "--config_file", "configs/train.json", "--dataset_dir", str(data), "--ckpt_dir", str(folder)]
            args += ["--output_dir", str(folder.parent / f"train{seed or ''}"), "--max_epochs", str(epochs)]
            run_monai_bundle(bundle, [*args, *override_args({**TRAIN, **task, "seed": seed})], quiet=True)
    models = members[0]
    if ensemble_size > 1:
        models = work / f"ensemble{ensemble_size}"
        if not (models / "model.pt").is_file():
            merge = {"ensemble_members": [str(m / "model.pt") for m in members], "merged_dir": str(models)}
            merge.update({"ckpt_dir": str(models), "dataset_dir": str(data), **task})
            configs = "['configs/train.json','configs/ensemble_merge.json']"
            run_monai_bundle(bundle, ["run", "--config_file", configs, *override_args(merge)], quiet=True)
        task["ensemble_size"] = ensemble_size
    if not ((models / "model.ts").is_file() and (models / "model.onnx").is_file()):
        export_bundle(bundle, ckpt_dir=models, quiet=True, **task)
    return {"data": data, "models": models, "task": task, "members": members}


def make_images(source: Path, out: Path, size: int, count: int, rounds: int) -> list[Path]:
    """``count`` PNGs of ``size x size`` (the images of ``source`` resized in turn), split into ``rounds`` folders."""
    files = sorted(source.iterdir())
    folders = [out / f"round{r}" for r in range(rounds)]
    for i in range(count):
        target = folders[i % rounds] / f"bench{i:03d}.png"
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.open(files[i % len(files)]).resize((size, size), Image.BICUBIC).save(target)
    return folders


def _mode_overrides(mode: str, models: Path, threads: int) -> tuple[list[str], dict[str, Any]]:
    # explicit amp: a bundle's inference default may be bf16 (tasks.json config_values); explicit backend: "auto"
    # would run the exported ONNX model beside model.pt on a CPU without native bf16
    if mode == "fp32":
        return ["inference.json"], {"amp": False, "backend": "torch"}
    if mode == "bf16":  # forced: amp true would time bf16 against fp32 and may run fp32
        return ["inference.json"], {"amp": "bf16", "backend": "torch"}
    if mode == "torchscript":
        handlers = [{"_target_": "StatsHandler", "iteration_log": False}]
        return ["inference.json"], {
            "net": f"$torch.jit.load('{models / 'model.ts'}')",
            "handlers": handlers,
            "amp": False,
            "backend": "torch",
        }
    if mode == "onnx":
        return ["inference.json", "inference_onnx.json"], {
            "onnx_file": str(models / "model.onnx"),
            "onnx_threads": threads,
            "amp": False,
        }
    if mode in ("openvino", "openvino_bf16", "auto"):  # auto: the bundle's default, timing PyTorch and the runtimes
        return ["inference.json"], {
            "onnx_file": str(models / "model.onnx"),
            "onnx_threads": threads,
            "amp": {"openvino": False, "openvino_bf16": "bf16", "auto": True}[mode],  # amp "bf16": OpenVINO in bf16
            "backend": "auto" if mode == "auto" else "openvino",
        }
    raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}.")


STAGES = ("load_pre", "network", "post")


def time_workflow(bundle: str, configs: list[str], overrides: dict[str, Any]) -> tuple[list[dict[str, float]], str]:
    """Run the bundle's inference workflow once; per image, seconds from fetch to end of iteration (``total``) and
    its stages: ``load_pre`` (read + pre-process, until the batch is ready), ``network`` (to the end of the forward
    pass) and ``post`` (inversion to the original size, post-processing, findings, writing the mask). Also what
    ``backend: auto`` chose (``""`` for other backends)."""
    from ignite.engine import Events
    from monai.bundle import ConfigWorkflow
    from monai.engines.utils import IterationEvents

    root = BUNDLES_DIR / bundle
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    wf = ConfigWorkflow(
        config_file=[str(root / "configs" / c) for c in configs],
        meta_file=str(root / "configs" / "metadata.json"),
        logging_file=str(root / "configs" / "logging.conf"),
        workflow_type="infer",
        bundle_root=str(root),
        **overrides,
    )
    wf.initialize()
    evaluator = wf.parser.get_parsed_content("evaluator")
    times: list[dict[str, float]] = []
    marks: dict[str, float] = {}

    def mark(name: str):
        return lambda _: marks.__setitem__(name, time.perf_counter())

    def done(_) -> None:
        end = time.perf_counter()
        times.append(
            {
                "total": end - marks["start"],
                "load_pre": marks["ready"] - marks["start"],
                "network": marks["forward"] - marks["ready"],
                "post": end - marks["forward"],
            }
        )

    evaluator.add_event_handler(Events.GET_BATCH_STARTED, mark("start"))
    evaluator.add_event_handler(Events.GET_BATCH_COMPLETED, mark("ready"))
    evaluator.add_event_handler(IterationEvents.FORWARD_COMPLETED, mark("forward"))
    evaluator.add_event_handler(Events.ITERATION_COMPLETED, done)
    wf.run()
    wf.finalize()
    base = getattr(evaluator.inferer, "base", None)
    return times, str(getattr(base, "choice", ""))


def bench_bundle(
    bundle: str,
    sizes: list[int],
    modes: list[str],
    images: int,
    rounds: int,
    warmup: int,
    threads: int,
    epochs: int,
    work: Path,
    ensemble_size: int = 1,
    tta_views: int | None = None,
) -> list[dict[str, Any]]:
    """Every mode at every input size for one bundle (a mean ensemble of ``ensemble_size`` networks above 1, each
    image run through ``tta_views`` flip views: the bundle's ``tta_views``, its own default for None).

    The images are split into ``rounds`` folders and the modes take turns on each folder (in a rotating order), so
    a change of load on the shared machine hits every mode alike; the first ``warmup`` images of each run are
    dropped.
    """
    defaults = json.loads((BUNDLES_DIR / bundle / "configs" / "inference.json").read_text())
    network = defaults["network"]
    tta_views = int(defaults["tta_views"] if tta_views is None else tta_views)
    ready = prepare(bundle, work / bundle / network, epochs, ensemble_size)
    label = network if ensemble_size == 1 else f"{ensemble_size} x {network}"
    label += "" if tta_views == 1 else f", {tta_views} flip views"
    rows = []
    for size in sizes:
        folders = make_images(ready["data"] / "imagesTr", work / bundle / f"images_{size}", size, images, rounds)
        seconds: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
        chosen: dict[str, list[str]] = {m: [] for m in modes}
        outputs = {m: ready["models"].parent / "out" / f"{m}_{size}_x{ensemble_size}_tta{tta_views}" for m in modes}
        for r, folder in enumerate(folders):
            for mode in modes[r % len(modes) :] + modes[: r % len(modes)]:
                configs, extra = _mode_overrides(mode, ready["models"], threads)
                values = {"input_dir": str(folder), "output_dir": str(outputs[mode]), "ckpt_dir": str(ready["models"])}
                values.update({"dataset_dir": str(ready["data"]), **ready["task"], "tta_views": tta_views, **extra})
                times, choice = time_workflow(bundle, configs, values)
                seconds[mode] += times[warmup:]  # auto measures on the first image: dropped with the warm-up
                chosen[mode].append(choice)
        for mode in modes:
            row = {"bundle": bundle, "network": label, "input_size": size, "mode": mode}
            row.update({"ensemble_size": ensemble_size, "tta_views": tta_views})
            row["n_timed"] = len(seconds[mode])
            if mode == "auto":  # what each run's measurement on its first image chose
                row["auto_chose"] = ",".join(chosen[mode])
            totals = [t["total"] for t in seconds[mode]]
            row["p50_ms"] = round(1000 * statistics.median(totals), 1)
            row["p90_ms"] = round(1000 * float(np.percentile(totals, 90)), 1)
            for stage in STAGES:  # where the time goes: the network's share bounds what a faster network can give
                row[f"p50_{stage}_ms"] = round(1000 * statistics.median(t[stage] for t in seconds[mode]), 1)
            if mode != "fp32" and "fp32" in outputs:
                row["agreement_vs_fp32"] = round(mask_agreement(outputs["fp32"], outputs[mode])["agreement"], 6)
            row["correct"] = row.get("agreement_vs_fp32", 1.0) >= AGREEMENT
            rows.append(row)
            print(f"{bundle} {size} {mode}: p50 {row['p50_ms']} ms", file=sys.stderr, flush=True)
    return rows


def _group(row: dict[str, Any]) -> str:
    """The bundle a row times, with its network when that is more than one plain pass (an ensemble, TTA)."""
    plain = row.get("ensemble_size", 1) == 1 and row.get("tta_views", 1) == 1 and " x " not in row["network"]
    return row["bundle"] if plain else f"{row['bundle']} ({row['network']})"


def fastest(results: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """Per bundle (an ensemble or TTA row apart, as ``bundle (network)``) and input size, the fastest mode whose
    masks are correct."""
    best: dict[str, dict[str, str]] = {}
    for r in results:
        key = _group(r)
        current = best.setdefault(key, {}).get(str(r["input_size"]))
        if r["correct"] and (current is None or r["p50_ms"] < _p50(results, r, current)):
            best[key][str(r["input_size"])] = r["mode"]
    return best


def _p50(results: list[dict[str, Any]], like: dict[str, Any], mode: str) -> float:
    same = (like["bundle"], like["network"], like["input_size"], mode)
    return next(r["p50_ms"] for r in results if (r["bundle"], r["network"], r["input_size"], r["mode"]) == same)


def _stages(row: dict[str, Any]) -> list[str]:
    if "p50_network_ms" not in row:  # a record from before the stages were timed
        return ["-", "-"]
    rest = row["p50_load_pre_ms"] + row["p50_post_ms"]
    split = f"{row['p50_load_pre_ms']:.0f}/{row['p50_network_ms']:.0f}/{row['p50_post_ms']:.0f}"
    return [split, f"{row['p50_ms'] / rest:.2f}x" if rest > 0 else "-"]


def format_table(results: list[dict[str, Any]]) -> str:
    """One row per bundle and input size: p50 per mode with its ratio to fp32, worst agreement, fastest correct,
    and fp32's stages (load + pre-process / network / post-process + write) with the speed-up a network taking no
    time at all would give (fp32 total over its load + pre + post)."""
    modes = list(dict.fromkeys(r["mode"] for r in results))
    best = fastest(results)
    head = ["bundle", "network", "input"] + [f"{m} p50 ms" for m in modes] + ["min agreement", "fastest correct"]
    head += ["fp32 pre/net/post ms", "max speed-up (network -> 0)"]
    rows = [head]
    for bundle, network, size in dict.fromkeys((r["bundle"], r["network"], r["input_size"]) for r in results):
        group = {
            r["mode"]: r for r in results if (r["bundle"], r["network"], r["input_size"]) == (bundle, network, size)
        }
        base = group.get("fp32", {}).get("p50_ms")
        cells = []
        for m in modes:
            p50 = group[m]["p50_ms"] if m in group else None
            ratio = f" ({p50 / base:.2f}x)" if p50 is not None and base and m != "fp32" else ""
            cells.append("-" if p50 is None else f"{p50:.0f}{ratio}")
        agreement = min((r.get("agreement_vs_fp32", 1.0) for r in group.values()), default=1.0)
        rows.append(
            [
                bundle,
                network,
                f"{size}x{size}",
                *cells,
                f"{100 * agreement:.2f}%",
                best.get(_group(next(iter(group.values()))), {}).get(str(size), "-"),
                *_stages(group.get("fp32", {})),
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows)


def _as_list(value: str | int | tuple | list | None, default: list) -> list:
    if value is None:
        return list(default)
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return list(value) if isinstance(value, (tuple, list)) else [value]


def run(
    bundles: str | tuple | None = None,
    sizes: str | tuple = (256, 512),
    modes: str | tuple = DEFAULT_MODES,
    images: int = 24,
    rounds: int = 4,
    warmup: int = 1,
    threads: int = 1,
    epochs: int = 3,
    work: str = str(DEFAULT_WORK),
    out: str = str(DEFAULT_OUT),
    ensemble_size: str | int | tuple = 1,
    tta_views: str | int | tuple | None = None,
) -> None:
    """Benchmark ``bundles`` (default: all), print the table, write the JSON results to ``out``.

    ``ensemble_size``: one or more sizes (``1,2``); above 1, a merged mean ensemble of that many networks (seeds or
    folds) is timed, the latency an ensemble default would have. ``tta_views``: one or more of the bundle's
    ``tta_views`` (``1,4``; default: each bundle's own, e.g. 3 for brain_tumor), each timed with every ensemble
    size."""
    import onnxruntime
    import openvino

    sys.path.insert(0, str(BUNDLES_DIR / "_shared"))
    from scripts.engines import amp_mode

    torch.set_num_threads(threads)
    selected = _as_list(bundles, bundle_names())
    size_list, mode_list = [int(s) for s in _as_list(sizes, [])], _as_list(modes, [])
    ensembles = [int(n) for n in _as_list(ensemble_size, [1])]
    views = [None] if tta_views is None else [int(n) for n in _as_list(tta_views, [])]
    timed = (images // rounds - warmup) * rounds
    if timed < 20 or images % rounds:
        raise ValueError(f"need >= 20 timed images and images divisible by rounds; got {images}, {rounds}, {warmup}.")
    meta = {
        "cpu": cpu_name(),
        "threads": threads,
        "torch": torch.__version__,
        "monai": monai.__version__,
        "onnxruntime": onnxruntime.__version__,
        "openvino": openvino.__version__.split("-")[0],
        "amp_true_resolves_to": amp_mode(True, "cpu") or "fp32 (no native bf16)",
        "images_per_size": images,
        "rounds": rounds,
        "warmup_per_run": warmup,
        "timed_per_mode": timed,
        "train_epochs": epochs,
        "ensemble_sizes": ensembles,
        "tta_views": views if tta_views is not None else "each bundle's default",
        "load_average_start": os.getloadavg(),
        "note": "per image: load PNG, preprocess, network at the bundle's spatial_size, invert, findings, save mask; "
        "shared machine (other jobs running): compare ratios within one run",
    }
    started = time.perf_counter()
    results = []
    for bundle in selected:
        for n in ensembles:
            for v in views:
                results += bench_bundle(
                    bundle, size_list, mode_list, images, rounds, warmup, threads, epochs, Path(work), n, v
                )
    meta.update({"load_average_end": os.getloadavg(), "wall_s": round(time.perf_counter() - started, 1)})
    print(format_table(results))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(
        json.dumps({"meta": meta, "results": results, "fastest_correct": fastest(results)}, indent=4) + "\n"
    )
    print(f"wrote {out}")


def show(path: str = str(DEFAULT_OUT)) -> None:
    """Print the table of a results file."""
    print(format_table(json.loads(Path(path).read_text())["results"]))


def _times_ms(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t0))
    return times


def parts(
    bundle: str = "ph2_melanoma",
    threads: int = 2,
    repeats: int = 30,
    out: str = str(REPO / "benchmarks" / "results" / "inference_parts_cpu.json"),
    png_dirs: str | tuple | None = None,
) -> None:
    """Pieces of every bundle's pipeline against MONAI's own, in one run (the two sides take turns):

    * reading a PNG (smooth RGB 256x256 and 512x512, grey 512x512, and up to ``repeats`` PNGs of each folder of
      ``png_dirs``, e.g. a converter's ``imagesTr``): MONAI's ``LoadImage`` (its ``PILReader``) against
      ``LoadImage(reader=FastPNGReader())`` (libspng), with whether the arrays are equal;
    * the anti-aliased resize of pre-processing: the bundles' ``FastResized`` against MONAI's ``Resized``
      (``anti_aliasing=True``, bilinear) at PH2's original size, at 512x512 and on a grey 512x512 image, with
      whether the outputs are equal;
    * ``bundle``'s network (its default, random weights, eval mode, no gradients) on a ``MetaTensor`` against a
      plain tensor (what ``FlipTTAInferer`` now passes it) at the bundle's ``spatial_size``;
    * the label app's epistemic scoring of one image: ``MC_SAMPLES`` Monte-Carlo dropout passes of that network
      with PyTorch's ``nn.Dropout`` against the bundles' ``FastDropout`` (``equal`` is None: the masks are random).
    """
    sys.path.insert(0, str(BUNDLES_DIR / bundle))
    from monai.bundle import ConfigParser
    from monai.data import MetaTensor
    from monai.transforms import LoadImage, Resized

    from scripts.data import FastPNGReader
    from scripts.networks import use_fast_dropout
    from scripts.transforms import FastResized
    from scripts.uncertainty import sample_probabilities

    torch.set_num_threads(threads)
    rows: list[dict[str, Any]] = []
    generator = torch.Generator().manual_seed(0)
    for shape in ((3, 560, 768), (3, 512, 512), (1, 512, 512)):
        image = MetaTensor(torch.rand(shape, generator=generator))
        kwargs = {"keys": "image", "spatial_size": (256, 256), "mode": "bilinear", "anti_aliasing": True}
        sides = {"monai": Resized(**kwargs), "fast": FastResized(**kwargs)}
        times: dict[str, list[float]] = {name: [] for name in sides}
        for i in range(repeats):
            for name in sides if i % 2 == 0 else list(sides)[::-1]:
                times[name] += _times_ms(lambda t=sides[name], x=image: t({"image": x.clone()}), 1)
        equal = torch.equal(sides["monai"]({"image": image})["image"], sides["fast"]({"image": image})["image"])
        row = {"part": f"Resized {'x'.join(map(str, shape))} -> 256x256", "equal": equal}
        row.update({f"{name}_ms": round(statistics.median(t), 2) for name, t in times.items()})
        rows.append(row)
    # reading a PNG: MONAI's LoadImage (PILReader) against the bundles' FastPNGReader (libspng), on smooth images
    # (upsampled noise: a PNG's compression, and so its decoding time, depends on the content)
    folder = Path(tempfile.mkdtemp(prefix="bench_png_"))
    pngs: dict[str, list[Path]] = {}
    for shape in ((256, 256, 3), (512, 512, 3), (512, 512)):
        coarse = torch.rand(1, shape[2] if len(shape) == 3 else 1, 32, 32, generator=generator)
        smooth = torch.nn.functional.interpolate(coarse, size=shape[:2], mode="bicubic", align_corners=False)
        pixels = (smooth[0].clamp(0, 1) * 255).to(torch.uint8).permute(1, 2, 0).squeeze(-1).numpy()
        path = folder / f"{'x'.join(map(str, shape))}.png"
        Image.fromarray(pixels).save(path)
        pngs[f"smooth {'x'.join(map(str, shape))}"] = [path]
    for source in comma_list(png_dirs) if png_dirs else []:  # real images: up to `repeats` PNGs of each folder
        files = sorted(Path(source).expanduser().glob("*.png"))[:repeats]
        if not files:
            raise FileNotFoundError(f"no PNG files in {source}: pass folders of PNGs as --png_dirs a,b")
        with Image.open(files[0]) as image:
            first = "x".join(map(str, np.asarray(image).shape))
        pngs[f"{Path(source).parent.name}/{Path(source).name} ({len(files)} files, first {first})"] = files
    readers = {"monai": LoadImage(image_only=True), "fast": LoadImage(reader=FastPNGReader(), image_only=True)}
    for label, files in pngs.items():
        times = {name: [] for name in readers}
        for i in range(max(repeats, len(files))):
            path = str(files[i % len(files)])
            for name in readers if i % 2 == 0 else list(readers)[::-1]:
                times[name] += _times_ms(lambda t=readers[name], f=path: t(f), 1)
        equal = all(torch.equal(readers["monai"](str(f)), readers["fast"](str(f))) for f in files)
        row = {"part": f"LoadImage PNG {label}", "equal": equal}
        row.update({f"{name}_ms": round(statistics.median(t), 2) for name, t in times.items()})
        rows.append(row)
    shutil.rmtree(folder)
    config = ConfigParser()
    config.read_config(str(BUNDLES_DIR / bundle / "configs" / "inference.json"))
    net = config.get_parsed_content("network_def").eval()
    size = config.get_parsed_content("spatial_size")
    plain = torch.rand(1, config.get_parsed_content("in_channels"), *size, generator=generator)
    inputs = {"metatensor": MetaTensor(plain.clone()), "plain": plain}
    times = {name: [] for name in inputs}
    with torch.no_grad():
        for i in range(repeats):
            for name in inputs if i % 2 == 0 else list(inputs)[::-1]:
                times[name] += _times_ms(lambda x=inputs[name]: net(x), 1)
        equal = torch.equal(net(inputs["metatensor"]).as_tensor(), net(plain))
    row = {"part": f"{bundle} {config['network']} forward {'x'.join(map(str, size))}", "equal": equal}
    row.update({"monai_ms": round(statistics.median(times["metatensor"]), 2)})
    row.update({"fast_ms": round(statistics.median(times["plain"]), 2)})
    rows.append(row)
    # the label app's epistemic scoring: MC-dropout passes of the network, PyTorch's nn.Dropout against FastDropout
    nets = {"monai": use_fast_dropout(copy.deepcopy(net), enable=False), "fast": net}
    times = {name: [] for name in nets}
    with torch.no_grad():
        for i in range(repeats):
            for name in nets if i % 2 == 0 else list(nets)[::-1]:
                run = partial(sample_probabilities, nets[name], plain, "mc_dropout", MC_SAMPLES)
                times[name] += _times_ms(run, 1)
    row = {"part": f"{bundle} MC dropout x{MC_SAMPLES} {'x'.join(map(str, size))}", "equal": None}
    row.update({f"{name}_ms": round(statistics.median(t), 2) for name, t in times.items()})
    rows.append(row)
    for row in rows:
        row["speed_up"] = round(row["monai_ms"] / row["fast_ms"], 2)
        print(
            f"{row['part']:60s} MONAI/PyTorch {row['monai_ms']:7.2f} ms  ours {row['fast_ms']:7.2f} ms  "
            f"{row['speed_up']:.2f}x  equal {row['equal']}"
        )
    meta = {
        "cpu": cpu_name(),
        "threads": threads,
        "repeats": repeats,
        "torch": torch.__version__,
        "monai": monai.__version__,
        "note": "median ms, the two sides alternating in one run; "
        "'monai': MONAI's PILReader / Resized / a MetaTensor input / nn.Dropout, 'fast': FastPNGReader / FastResized / "
        "a plain tensor / FastDropout",
    }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps({"meta": meta, "results": rows}, indent=4) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    fire.Fire({"run": run, "show": show, "parts": parts})
