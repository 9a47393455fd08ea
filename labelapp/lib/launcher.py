"""Start and stop a local (loopback-only) server of this app from Python: for tests, benchmarks and simulations."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

__all__ = ["LocalServer", "free_port"]

APP_DIR = Path(__file__).resolve().parents[1]
REPO = APP_DIR.parent


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalServer:
    """``monailabel start_server`` for this app on ``127.0.0.1``, in its own process group, as a context manager.

    Leaving the ``with`` block (normally or by an exception) stops the server and everything it started (training
    and scoring subprocesses): SIGTERM to the process group, SIGKILL if it has not exited after ``stop_timeout``.

    Args:
        studies: the studies folder.
        conf: ``--conf`` pairs (``models``, ``bundle_dir``, ``bundle_overrides`` (dict or JSON), ...).
        app_dir: the app folder (default: this app; tests pass a copy so they never touch ``labelapp/model``).
        port: default: a free port.
        log: file for the server's output (default: discarded).
        env: extra environment variables for the server.
        extra_args: more ``start_server`` arguments, e.g. ``["--limit_concurrency", "8"]``.
        start_timeout: seconds to wait for ``/info`` to answer.
        stop_timeout: seconds to wait after SIGTERM.
    """

    def __init__(
        self,
        studies: str | os.PathLike,
        conf: dict[str, object],
        app_dir: str | os.PathLike = APP_DIR,
        port: int | None = None,
        log: str | os.PathLike | None = None,
        env: dict[str, str] | None = None,
        extra_args: list[str] | None = None,
        start_timeout: float = 180.0,
        stop_timeout: float = 15.0,
    ) -> None:
        self.studies, self.conf, self.app_dir = Path(studies), dict(conf), Path(app_dir)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(log) if log else None
        self.env, self.extra_args = dict(env or {}), list(extra_args or [])
        self.start_timeout, self.stop_timeout = start_timeout, stop_timeout
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        """The ``start_server`` command line (run from the repository root)."""
        cmd = [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(self.app_dir)]
        cmd += ["--studies", str(self.studies), "--host", "127.0.0.1", "--port", str(self.port)]
        cmd += ["--uvicorn_app", "labelapp.asgi:app"]
        for key, value in self.conf.items():
            cmd += ["--conf", key, value if isinstance(value, str) else json.dumps(value)]
        return cmd + self.extra_args

    def log_tail(self, lines: int = 60) -> str:
        """The last lines of the server log (for error messages)."""
        if not self.log or not self.log.exists():
            return "(no log)"
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def start(self) -> str:
        """Start the server and wait until ``/info`` answers; return its URL.

        Raises:
            RuntimeError: when the server exits or does not answer within ``start_timeout`` (log tail included).
        """
        out = open(self.log, "w") if self.log else subprocess.DEVNULL  # noqa: SIM115 - closed below
        try:
            self.process = subprocess.Popen(
                self.command(),
                cwd=REPO,
                env={**os.environ, **self.env},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            if self.log:
                out.close()
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/info/", timeout=5) as response:
                    if response.status == 200:
                        return self.url
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server did not answer /info within {self.start_timeout} s:\n{self.log_tail()}")
            time.sleep(1)

    def stop(self) -> None:
        """Stop the server's process group (the server and its training/scoring subprocesses)."""
        process, self.process = self.process, None
        if process is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(process.pid, sig)  # the group outlives a crashed server while its children run
            except ProcessLookupError:
                break
            try:
                process.wait(timeout=self.stop_timeout)
                break
            except subprocess.TimeoutExpired:
                continue

    def __enter__(self) -> LocalServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
