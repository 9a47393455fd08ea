"""Simulate annotation rounds with the label app and plot validation Dice against the number of labelled cases.

For each strategy (``random`` and ``epistemic`` by default) a fresh server is started on a study folder holding the
pool images of a prepared dataset (common format, ``docs/ARCHITECTURE.md``) and a weight-less copy of the bundle.
Then, round after round, exactly as an annotator with 3D Slicer would drive it over HTTP:

1. the cases picked so far get their ground-truth label saved (``PUT /datastore/label``);
2. the model is retrained from its current weights (``POST /train/<model>``, MONAI Label's behaviour);
3. Dice is measured on a fixed validation set kept outside the datastore (``POST /infer`` with the file);
4. the next ``step`` cases are picked by the strategy (``/activelearning/<strategy>``; for ``epistemic`` after
   ``/scoring/epistemic_<model>`` has scored the unlabelled pool with MC dropout).

Both strategies start from the same ``initial`` cases (seeded). Writes ``<out>/active_learning.png`` and
``<out>/active_learning.json``. A CPU run is slow: keep the pool, ``spatial_size`` and ``epochs`` small.

Example::

    python scripts/convert.py ph2 --src ../shared/data/ph2/PH2Dataset --out data/prepared/ph2
    python scripts/simulate_active_learning.py --dataset data/prepared/ph2 --model ph2_melanoma \\
        --pool 40 --val 20 --initial 4 --step 4 --rounds 4 --epochs 8 --spatial_size 96 --out data/al_ph2
"""

from __future__ import annotations

import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import fire
import matplotlib
import numpy as np
import requests
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `labelapp` is imported from the repository

from labelapp.lib.launcher import REPO, LocalServer  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Foreground Dice of two label maps (1.0 when both are empty)."""
    p, t = pred > 0, truth > 0
    total = p.sum() + t.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(p, t).sum() / total)


def split_cases(dataset: Path, pool: int, val: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Pick ``pool`` training and ``val`` validation entries of ``datalist.json`` (seeded, disjoint)."""
    entries = json.loads((dataset / "datalist.json").read_text())["training"]
    if pool + val > len(entries):
        raise ValueError(f"{dataset} has {len(entries)} cases; pool + val = {pool + val}")
    rng = random.Random(seed)
    chosen = rng.sample(entries, pool + val)
    return chosen[:pool], chosen[pool:]


class Simulation:
    """One strategy's annotation rounds against a running server."""

    def __init__(self, url: str, model: str, dataset: Path, pool: list[dict], val: list[dict]) -> None:
        self.url, self.model, self.dataset = url, model, dataset
        self.labels = {Path(e["image"]).stem: dataset / e["label"] for e in pool}
        self.val = val
        self.labelled: list[str] = []

    def save_labels(self, cases: list[str]) -> None:
        for case in cases:
            with open(self.labels[case], "rb") as f:
                response = requests.put(
                    f"{self.url}/datastore/label?image={case}&tag=final", files={"label": (f"{case}.png", f)}
                )
            response.raise_for_status()
            self.labelled.append(case)

    def train(self, epochs: int, timeout: float) -> None:
        body = {"max_epochs": epochs, "val_split": 0.2}
        requests.post(f"{self.url}/train/{self.model}", json=body, timeout=60).raise_for_status()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            task = requests.get(f"{self.url}/train/", timeout=30).json()
            if task.get("status") not in ("SUBMITTED", "RUNNING"):
                if task.get("status") != "DONE":
                    raise RuntimeError(f"training failed: {task.get('details')}")
                return
            time.sleep(2)
        raise TimeoutError(f"training did not finish in {timeout} s")

    def validation_dice(self) -> float:
        scores = []
        params = {"params": json.dumps({"result_extension": ".png"})}
        for entry in self.val:
            with open(self.dataset / entry["image"], "rb") as f:
                response = requests.post(
                    f"{self.url}/infer/{self.model}?image=val&output=image",
                    files={"file": (Path(entry["image"]).name, f)},
                    data=params,
                    timeout=300,
                )
            response.raise_for_status()
            with tempfile.NamedTemporaryFile(suffix=".png") as tmp:
                tmp.write(response.content)
                tmp.flush()
                pred = np.asarray(Image.open(tmp.name))
            truth = np.asarray(Image.open(self.dataset / entry["label"]))
            scores.append(dice(pred, truth))
        return float(np.mean(scores))

    def pick(self, strategy: str, step: int) -> list[str]:
        if strategy.startswith("epistemic"):
            method = f"epistemic_{self.model}"
            requests.post(f"{self.url}/scoring/{method}?run_sync=true", json={}, timeout=3600).raise_for_status()
        picked: list[str] = []
        for _ in range(step):
            sample = requests.post(f"{self.url}/activelearning/{strategy}", json={}, timeout=600).json()
            if not sample.get("id") or sample["id"] in picked:
                break
            picked.append(sample["id"])
        return picked


def run_strategy(
    strategy: str,
    model: str,
    dataset: Path,
    pool: list[dict],
    val: list[dict],
    initial: list[str],
    args: dict,
    work: Path,
) -> list[dict]:
    """Run the rounds of one strategy on a fresh server; return ``[{"labelled": n, "dice": d}, ...]``."""
    studies, bundles = work / strategy / "studies", work / strategy / "bundles"
    studies.mkdir(parents=True)
    for entry in pool:
        shutil.copy(dataset / entry["image"], studies / Path(entry["image"]).name)
    ignore = shutil.ignore_patterns("*.pt", "eval", "outputs", "runs", "__pycache__")
    shutil.copytree(Path(args["bundle_dir"]) / model, bundles / model, symlinks=False, ignore=ignore)
    conf = {"models": model, "bundle_dir": str(bundles), "bundle_overrides": args["overrides"]}
    env = {"MONAI_LABEL_AUTO_UPDATE_SCORING": "false"}
    curve = []
    with LocalServer(studies, conf, log=work / strategy / "server.log", env=env) as server:
        sim = Simulation(server.url, model, dataset, pool, val)
        sim.save_labels(initial)
        for round_ in range(args["rounds"]):
            sim.train(args["epochs"], args["train_timeout"])
            curve.append({"labelled": len(sim.labelled), "dice": sim.validation_dice()})
            print(f"{strategy}: round {round_}: {curve[-1]}", flush=True)
            if round_ + 1 < args["rounds"]:
                sim.save_labels(sim.pick(strategy, args["step"]))
    return curve


def plot(curves: dict[str, list[dict]], path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for strategy, curve in curves.items():
        ax.plot([c["labelled"] for c in curve], [c["dice"] for c in curve], marker="o", label=strategy)
    ax.set_xlabel("labelled cases")
    ax.set_ylabel("validation Dice")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(
    dataset: str,
    model: str = "ph2_melanoma",
    out: str = "data/active_learning",
    strategies: str = "random,epistemic",
    pool: int = 40,
    val: int = 20,
    initial: int = 4,
    step: int = 4,
    rounds: int = 4,
    epochs: int = 8,
    spatial_size: int = 96,
    seed: int = 0,
    bundle_dir: str = str(REPO / "bundles"),
    train_timeout: float = 1800.0,
) -> None:
    """Simulate active-learning rounds per strategy and plot validation Dice vs labelled cases.

    Args:
        dataset: a prepared dataset folder (``datalist.json``, ``imagesTr``, ``labelsTr``).
        model: the bundle to train (a folder of ``bundle_dir``).
        out: output folder for ``active_learning.png`` / ``.json`` (and the servers' work folders).
        strategies: comma-separated label-app strategies to compare.
        pool: unlabelled cases the annotator may label; val: fixed validation cases (never in the pool).
        initial: cases labelled before the first training; step: cases labelled per round; rounds: trainings.
        epochs: ``max_epochs`` per training (each continues from the previous weights).
        spatial_size: network input size (``bundle_overrides``), small for CPU runs.
        seed: case selection seed (the same initial cases for every strategy).
        bundle_dir: where ``model`` is; it is copied, never modified.
        train_timeout: seconds allowed per training.
    """
    data, output = Path(dataset).resolve(), Path(out).resolve()
    if not (data / "datalist.json").exists():
        raise FileNotFoundError(f"{data}/datalist.json not found: prepare the dataset with scripts/convert.py first")
    pool_entries, val_entries = split_cases(data, pool, val, seed)
    first = [Path(e["image"]).stem for e in random.Random(seed + 1).sample(pool_entries, initial)]
    overrides = {"spatial_size": [spatial_size, spatial_size], "num_workers": 0, "cache_rate": 0}
    args = {
        "rounds": rounds,
        "step": step,
        "epochs": epochs,
        "bundle_dir": bundle_dir,
        "overrides": overrides,
        "train_timeout": train_timeout,
    }
    output.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="al_", dir=output))
    curves = {}
    for strategy in [s.strip() for s in strategies.split(",") if s.strip()]:
        curves[strategy] = run_strategy(strategy, model, data, pool_entries, val_entries, first, args, work)
    result = {
        "dataset": str(data),
        "model": model,
        "settings": {**args, "pool": pool, "val": val, "initial": initial, "seed": seed},
        "curves": curves,
    }
    (output / "active_learning.json").write_text(json.dumps(result, indent=2))
    plot(curves, output / "active_learning.png", f"{model}: {pool} pool, {val} validation cases")
    shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {output / 'active_learning.png'} and {output / 'active_learning.json'}")


if __name__ == "__main__":
    fire.Fire(main)
