"""Load test of the label app's ``/infer`` (or its epistemic ``/scoring``): N requests from C concurrent clients, on the loopback interface only.

Every request is what 3D Slicer sends (``result_extension=".nrrd"``, ``result_dtype="uint8"``). Each one must be
answered with a label file or refused with a busy status (503 from ``--limit_concurrency``, or 429); anything else
counts as an error. Prints the latency p50/p95/max of the answered requests, the throughput, and the server's
resident memory before, at its peak during, and after the run. Exit status 1 when a request failed or went
unanswered, or when the memory grew by more than ``max_rss_growth_mb``.

Bounded: at most ``MAX_REQUESTS`` requests, ``MAX_CONCURRENCY`` clients and ``duration_limit`` seconds.

Examples::

    # against a running server (python -m labelapp start_server ... --port 8000)
    python scripts/labelapp_load.py --url http://127.0.0.1:8000 --model ph2_melanoma --requests 80 --concurrency 4

    # start a server on a study folder for the run, and stop it afterwards
    python scripts/labelapp_load.py --studies data/studies/ph2 --model ph2_melanoma --requests 80 --concurrency 4

    # epistemic scoring of the study folder's unlabelled images, end to end, in the server and in the background
    python scripts/labelapp_load.py --studies data/studies/ph2 --model ph2_melanoma --scoring True
"""

from __future__ import annotations

import ipaddress
import json
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

import fire
import psutil
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `labelapp` is imported from the repository

from labelapp.lib.launcher import LocalServer  # noqa: E402

MAX_REQUESTS = 2000
MAX_CONCURRENCY = 32
BUSY = (429, 503)
SLICER_PARAMS = {"result_extension": ".nrrd", "result_dtype": "uint8"}


@dataclass
class Outcome:
    """One request: HTTP status (0 when no answer), latency, and an error message where it failed."""

    status: int
    seconds: float
    error: str = ""


def check_loopback(url: str) -> None:
    """Raise ``ValueError`` unless ``url`` points at this machine's loopback interface."""
    host = urlparse(url).hostname or ""
    addresses = {info[4][0] for info in socket.getaddrinfo(host, None)} if host else set()
    if not addresses or not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses):
        raise ValueError(f"{url} is not a loopback address: this load test only targets 127.0.0.1/localhost")


def server_process(url: str) -> psutil.Process | None:
    """The process listening on ``url``'s port, where the OS lets us see it."""
    port = urlparse(url).port
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                return psutil.Process(conn.pid)
    except psutil.AccessDenied:
        pass
    return None


def _rss_mb(process: psutil.Process | None) -> float:
    """Resident memory of the server process (its training/scoring children are separate jobs) in MiB."""
    try:
        return process.memory_info().rss / 2**20 if process else float("nan")
    except psutil.NoSuchProcess:
        return float("nan")


def infer_once(session: requests.Session, url: str, model: str, image: str, timeout: float) -> Outcome:
    """Send one Slicer-style ``/infer`` request and classify the answer."""
    start = time.perf_counter()
    try:
        response = session.post(
            f"{url}/infer/{quote(model)}?image={quote(image)}",
            files={"params": (None, json.dumps(SLICER_PARAMS))},
            timeout=timeout,
        )
    except requests.RequestException as e:
        return Outcome(0, time.perf_counter() - start, f"no answer: {e}")
    seconds = time.perf_counter() - start
    if response.status_code == 200:
        ok = "multipart" in response.headers.get("content-type", "") and b".nrrd" in response.content[:4096]
        return Outcome(200, seconds, "" if ok else "200 without an .nrrd label")
    if response.status_code in BUSY:
        return Outcome(response.status_code, seconds)
    return Outcome(response.status_code, seconds, response.text[:200])


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``, linear interpolation."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = int(position), min(int(position) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def run_load(
    url: str, model: str, requests_total: int, concurrency: int, duration_limit: float, timeout: float
) -> tuple[list[Outcome], dict[str, float]]:
    """Send ``requests_total`` ``/infer`` requests from ``concurrency`` clients; return outcomes and memory (MiB)."""
    datastore = requests.get(f"{url}/datastore/?output=all", timeout=30).json()
    images = sorted(datastore["objects"])
    if not images:
        raise ValueError(f"the datastore of {url} has no images")
    process = server_process(url)
    memory = {"before": _rss_mb(process), "peak": 0.0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            memory["peak"] = max(memory["peak"], _rss_mb(process))
            time.sleep(0.05)

    deadline = time.monotonic() + duration_limit
    sessions = threading.local()

    def one(i: int) -> Outcome:
        if time.monotonic() > deadline:
            return Outcome(0, 0.0, "not sent: duration limit reached")
        if not hasattr(sessions, "s"):
            sessions.s = requests.Session()
        return infer_once(sessions.s, url, model, images[i % len(images)], timeout)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        outcomes = list(pool.map(one, range(requests_total)))
    memory["wall"] = time.perf_counter() - start
    stop.set()
    sampler.join()
    memory["after"] = _rss_mb(process)
    return outcomes, memory


def score_three_ways(url: str, model: str, simulation_size: int, timeout: float) -> dict[str, Any]:
    """Time ``/scoring/epistemic_<model>`` (MC dropout, ``simulation_size`` passes per image) three times.

    1. ``run_sync=true`` (in the server's process): scores every unlabelled image.
    2. The same again: every image is scored with the current weights already, so it is skipped; what is left is
       the pass over the datastore. (1 - 2) over the images scored is the time per image.
    3. In the background, as 3D Slicer's button and MONAI Label's automatic scoring run it: MONAI Label starts the
       app again in a new process, which skips every image too; the time until the task is done is that start.
    """
    process = server_process(url)
    before = _rss_mb(process)
    method = f"{url}/scoring/epistemic_{quote(model)}"
    calls = []
    for _ in range(2):
        start = time.perf_counter()
        response = requests.post(f"{method}?run_sync=true", json={"simulation_size": simulation_size}, timeout=timeout)
        if response.status_code != 200:
            raise RuntimeError(f"/scoring answered {response.status_code}: {response.text[:300]}")
        calls.append((time.perf_counter() - start, response.json()))
    (first, result), (second, again) = calls
    executed = int(result.get("executed", 0))
    if not executed:
        raise RuntimeError(
            f"/scoring scored no image ({result}): the model needs trained weights and unlabelled images not yet "
            "scored with them (a copy of the study folder without its datastore file, datastore_v2.json, scores "
            "every image afresh)"
        )
    start = time.perf_counter()
    task = requests.post(method, json={"simulation_size": simulation_size}, timeout=timeout).json()
    while True:
        status = requests.get(f"{url}/scoring/", timeout=timeout).json()
        if status.get("id") == task.get("id") and status.get("status") not in ("SUBMITTED", "RUNNING"):
            break
        if time.perf_counter() - start > timeout:
            raise RuntimeError(f"background scoring not done after {timeout:.0f} s: {status}")
        time.sleep(0.1)
    background = time.perf_counter() - start
    summary = {
        "simulation_size": simulation_size,
        "images_scored": executed,
        "first_call_s": round(first, 2),
        "monai_label_latency_s": result.get("latency"),
        "second_call_s": round(second, 2),
        "second_call_skipped": int(again.get("skipped", 0)),
        "per_image_ms": round(1000 * (first - second) / executed, 1),
        "background_call_s": round(background, 2),
        "background_status": status.get("status"),
        "rss_before_mb": round(before, 1),
        "rss_after_mb": round(_rss_mb(process), 1),
    }
    print(json.dumps(summary, indent=2))
    return summary


def report(outcomes: list[Outcome], memory: dict[str, float], concurrency: int) -> dict[str, float]:
    """Print and return the summary."""
    answered = [o.seconds * 1000 for o in outcomes if o.status == 200 and not o.error]
    busy = sum(o.status in BUSY for o in outcomes)
    errors = [o for o in outcomes if o.error]
    summary = {
        "requests": len(outcomes),
        "concurrency": concurrency,
        "ok": len(answered),
        "busy": busy,
        "errors": len(errors),
        "p50_ms": round(percentile(answered, 50), 1),
        "p95_ms": round(percentile(answered, 95), 1),
        "max_ms": round(max(answered, default=float("nan")), 1),
        "throughput_rps": round(len(answered) / memory["wall"], 2) if memory["wall"] else float("nan"),
        "rss_before_mb": round(memory["before"], 1),
        "rss_peak_mb": round(memory["peak"], 1),
        "rss_after_mb": round(memory["after"], 1),
    }
    print(json.dumps(summary, indent=2))
    for o in errors[:5]:
        print(f"error: status {o.status}: {o.error}", file=sys.stderr)
    return summary


def main(
    model: str,
    url: str = "",
    studies: str = "",
    bundle_dir: str = "",
    requests: int = 80,  # noqa: A002 - the CLI flag name
    concurrency: int = 4,
    warmup: int = 2,
    duration_limit: float = 300.0,
    timeout: float = 60.0,
    max_rss_growth_mb: float = 200.0,
    limit_concurrency: int = 0,
    infer_workers: int = -1,
    log: str = "",
    scoring: bool = False,
    simulation_size: int = 5,
) -> None:
    """Load-test ``/infer`` of ``model`` on a server at ``url``, or on one started on ``studies`` for the run.
    With ``--scoring True``, time ``/scoring/epistemic_<model>`` end to end instead (:func:`score_three_ways`).

    Args:
        model: the served model to call.
        url: a running server (loopback only); leave empty to start one on ``studies``.
        studies: a folder of PNG/JPEG images to serve (starts ``python -m monailabel.main start_server`` on a free
            loopback port, with ``MONAI_LABEL_AUTO_UPDATE_SCORING=false``, and stops it at the end).
        bundle_dir: ``--conf bundle_dir`` for the started server (default: the repository's ``bundles``).
        requests: number of ``/infer`` requests (at most 2000), sent round-robin over the datastore's images.
        concurrency: concurrent clients (at most 32).
        warmup: requests sent one by one before measuring (model load, first-call costs).
        duration_limit: stop sending after this many seconds.
        timeout: per-request timeout in seconds.
        max_rss_growth_mb: fail when the server's memory after the run exceeds the one before by more than this.
        limit_concurrency: for a started server, uvicorn's ``--limit_concurrency`` (503 beyond it); 0 = none.
        infer_workers: for a started server, ``--conf infer_workers`` (parallel inferences; 0: MONAI Label's
            own one-at-a-time route); -1 = the app default.
        log: server log file for a started server.
        scoring: time epistemic scoring of the datastore's unlabelled images instead of ``/infer``.
        simulation_size: MC-dropout passes per image when scoring (the app's default is 5).
    """
    if not 0 < requests <= MAX_REQUESTS or not 0 < concurrency <= MAX_CONCURRENCY:
        raise ValueError(f"requests must be 1..{MAX_REQUESTS} and concurrency 1..{MAX_CONCURRENCY}")
    if bool(url) == bool(studies):
        raise ValueError("give exactly one of --url (a running server) or --studies (start one)")
    if url:
        check_loopback(url)
    server = None
    if studies:
        conf = {"models": model, **({"bundle_dir": bundle_dir} if bundle_dir else {})}
        if infer_workers >= 0:
            conf["infer_workers"] = str(infer_workers)
        extra = ["--limit_concurrency", str(limit_concurrency)] if limit_concurrency else []
        env = {"MONAI_LABEL_AUTO_UPDATE_SCORING": "false"}
        server = LocalServer(studies, conf, log=log or None, env=env, extra_args=extra)
        url = server.start()
    if scoring:
        try:
            score_three_ways(url, model, simulation_size, max(timeout, duration_limit))
        finally:
            if server:
                server.stop()
        return
    try:
        run_load(url, model, warmup, 1, duration_limit, timeout)
        outcomes, memory = run_load(url, model, requests, concurrency, duration_limit, timeout)
        summary = report(outcomes, memory, concurrency)
    finally:
        if server:
            server.stop()
    grew = summary["rss_after_mb"] - summary["rss_before_mb"]
    if summary["errors"] or grew > max_rss_growth_mb:
        print(f"FAILED: {summary['errors']} error(s); server memory grew {grew:.0f} MiB", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    fire.Fire(main)
