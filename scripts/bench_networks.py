#!/usr/bin/env python
"""Benchmark the shared network registry on this machine's CPU: parameters, training throughput, inference latency.

Usage::

    python scripts/bench_networks.py run [--names unet,fpn] [--threads 2] [--out benchmarks/results/networks_cpu.json]
    python scripts/bench_networks.py show [--path benchmarks/results/networks_cpu.json]

Training: batch ``train_batch`` of ``3 x train_size^2`` random images, 2 classes, forward + cross-entropy + backward +
Adam step, ``warmup`` untimed steps then up to ``train_steps`` timed ones (fewer when ``train_budget_s`` runs out).
Inference: batch 1 at each size in ``infer_sizes``, eval mode, ``torch.inference_mode``; up to
``infer_steps`` timed runs. Each in fp32 and under ``torch.autocast("cpu", dtype=torch.bfloat16)``. The largest
size is skipped for networks whose fp32 latency at the first size exceeds ``skip_large_over_ms``.

Shared machines: other processes preempt our threads, and wall-clock numbers then mostly measure them (here up
to 10x slower). With ``OMP_WAIT_POLICY=PASSIVE`` (set below unless already set) the process CPU time counts only
our work, so the headline numbers are CPU-time based: ``img_s = batch * threads / cpu_s`` and
``ms = 1000 * cpu_s / threads`` of the best step, i.e. the rate if ``threads`` cores were free, assuming perfect
thread scaling (optimistic for batch-1 inference). ``*_wall`` are the best wall-clock values, ``ref_gflops`` /
``ref_gflops_after`` a matmul rate just before / after each network (low: disturbed), and ``gflops_fwd`` the
convolution/matmul FLOPs of one forward pass (``torch.utils.flop_counter``), which no machine load changes.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

# idle OpenMP threads sleep instead of spinning: process CPU time then counts only work (see the module docstring)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import fire  # noqa: E402
import monai  # noqa: E402
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bundles" / "_shared"))

from lesiondata.hardware import cpu_name  # noqa: E402 (scripts/ is this file's folder)
from scripts.networks import NETWORKS, build_network  # noqa: E402

DEFAULT_OUT = REPO / "benchmarks" / "results" / "networks_cpu.json"
DTYPES = ("fp32", "bf16")


def _autocast(dtype: str) -> torch.autocast:
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16")


def _timed(step: Callable[[], None], warmup: int, steps: int, budget_s: float) -> tuple[list[float], list[float]]:
    """Run ``warmup`` untimed calls, then timed calls until ``steps`` are done or ``budget_s`` is spent (>= 1).

    Returns:
        Wall-clock seconds and process CPU seconds of each timed call.
    """
    for _ in range(warmup):
        step()
    wall: list[float] = []
    cpu: list[float] = []
    while len(wall) < steps and (not wall or sum(wall) < budget_s):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        step()
        wall.append(time.perf_counter() - start_wall)
        cpu.append(time.process_time() - start_cpu)
    return wall, cpu


def ref_gflops(n: int = 512, runs: int = 10) -> float:
    """Best fp32 matmul rate (GFLOP/s) right now: a gauge of how much of the CPU this process gets."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return round(2 * n**3 / min(_timed(lambda: a @ b, 2, runs, 1.0)[0]) / 1e9, 1)


def forward_gflops(net: torch.nn.Module, size: int) -> float:
    """Convolution/matmul GFLOPs of one eval forward pass of a ``1 x 3 x size^2`` image (machine-independent)."""
    net.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(torch.randn(1, 3, size, size))
    return round(counter.get_total_flops() / 1e9, 2)


def train_throughput(
    net: torch.nn.Module, dtype: str, batch: int, size: int, warmup: int, steps: int, budget_s: float
) -> dict:
    """Images per second of forward + loss + backward + Adam step, CPU-time based (``img_s``) and wall-clock."""
    net.train()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    images = torch.randn(batch, 3, size, size)
    labels = torch.randint(0, 2, (batch, size, size))
    loss_fn = torch.nn.CrossEntropyLoss()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with _autocast(dtype):
            loss = loss_fn(net(images).float(), labels)
        loss.backward()
        optimizer.step()

    wall, cpu = _timed(step, warmup, steps, budget_s)
    threads = torch.get_num_threads()
    return {
        "img_s": round(batch * threads / min(cpu), 2),
        "img_s_wall": round(batch / min(wall), 2),
        "steps": len(wall),
    }


def infer_latency(net: torch.nn.Module, dtype: str, size: int, warmup: int, steps: int, budget_s: float) -> dict:
    """Batch-1 latency in milliseconds, CPU-time based (``ms``) and wall-clock."""
    net.eval()
    image = torch.randn(1, 3, size, size)

    def step() -> None:
        with torch.inference_mode(), _autocast(dtype):
            net(image)

    wall, cpu = _timed(step, warmup, steps, budget_s)
    threads = torch.get_num_threads()
    return {"ms": round(1000 * min(cpu) / threads, 1), "ms_wall": round(1000 * min(wall), 1), "runs": len(wall)}


def bench_one(
    name: str,
    train_batch: int = 8,
    train_size: int = 256,
    train_steps: int = 3,
    train_budget_s: float = 6.0,
    infer_sizes: tuple[int, ...] = (256, 512),
    infer_steps: int = 5,
    infer_budget_s: float = 2.0,
    warmup: int = 1,
    skip_large_over_ms: float = 250.0,
) -> dict:
    """Parameters, training throughput and inference latency of one registered network at its default width."""
    torch.manual_seed(0)
    net = build_network(name, in_channels=3, out_channels=2)
    params = sum(p.numel() for p in net.parameters())
    result: dict = {"name": name, "params": params, "load_average_1min": os.getloadavg()[0], "ref_gflops": ref_gflops()}
    result.update(gflops_fwd={str(s): forward_gflops(net, s) for s in infer_sizes}, train={}, infer={})
    for dtype in DTYPES:
        result["train"][dtype] = train_throughput(
            net, dtype, train_batch, train_size, warmup, train_steps, train_budget_s
        )
    for size in infer_sizes:
        first = result["infer"].get(str(infer_sizes[0]), {}).get("fp32", {}).get("ms", 0.0)  # CPU-time based
        if size != infer_sizes[0] and first > skip_large_over_ms:
            result["infer"][str(size)] = {"skipped": f"fp32 latency at {infer_sizes[0]} > {skip_large_over_ms} ms"}
            continue
        result["infer"][str(size)] = {
            d: infer_latency(net, d, size, warmup, infer_steps, infer_budget_s) for d in DTYPES
        }
    result["ref_gflops_after"] = ref_gflops()
    return result


def format_table(results: list[dict], wall: bool = False) -> str:
    """A plain-text table of the results: CPU-time based, or the wall-clock values with ``wall=True``."""
    train_key, infer_key = ("img_s_wall", "ms_wall") if wall else ("img_s", "ms")
    sizes = list(results[0]["infer"]) if results else []
    head = ["network", "params M", f"GFLOP fwd {sizes[0] if sizes else ''}", "train img/s fp32", "bf16"]
    for size in sizes:
        head += [f"infer {size} ms fp32", "bf16"]
    rows = [head]
    for r in results:
        row = [r["name"], f"{r['params'] / 1e6:.2f}", f"{r['gflops_fwd'][sizes[0]]:.1f}"]
        row += [f"{r['train'][d][train_key]:.2f}" for d in DTYPES]
        for size in sizes:
            cell = r["infer"][size]
            row += ["skipped", "skipped"] if "skipped" in cell else [f"{cell[d][infer_key]:.0f}" for d in DTYPES]
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows)


def run(names: str | tuple | None = None, threads: int = 2, out: str = str(DEFAULT_OUT), **options) -> None:
    """Benchmark ``names`` (default: every registered network), print a table, write JSON to ``out``.

    ``options`` are passed to :func:`bench_one` (``train_steps``, ``infer_sizes``, ``skip_large_over_ms``, ...).
    """
    torch.set_num_threads(threads)
    selected = list(NETWORKS) if names is None else names.split(",") if isinstance(names, str) else list(names)
    meta = {
        "cpu": cpu_name(),
        "threads": threads,
        "torch": torch.__version__,
        "monai": monai.__version__,
        "load_average_start": os.getloadavg(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "note": "shared machine, other jobs running: img_s/ms are CPU-time based (see scripts/bench_networks.py), "
        "*_wall values are disturbed; all timings are noisy",
        "options": options,
    }
    started = time.perf_counter()
    results = []
    for name in selected:
        t0 = time.perf_counter()
        results.append(bench_one(name, **options))
        print(f"{name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    meta["load_average_end"] = os.getloadavg()
    meta["wall_s"] = round(time.perf_counter() - started, 1)
    show_table(results)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps({"meta": meta, "results": results}, indent=4) + "\n")
    print(f"wrote {out}")


def show_table(results: list[dict]) -> None:
    """Print the CPU-time based table, then the wall-clock one."""
    print("CPU-time based (rate if the cores were free):\n" + format_table(results))
    print("\nwall-clock, best step (disturbed by other processes):\n" + format_table(results, wall=True))


def show(path: str = str(DEFAULT_OUT)) -> None:
    """Print the tables of a results file."""
    show_table(json.loads(Path(path).read_text())["results"])


if __name__ == "__main__":
    fire.Fire({"run": run, "show": show})
