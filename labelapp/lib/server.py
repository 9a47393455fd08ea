"""Changes to MONAI Label's FastAPI app that this app's ASGI entry point (``labelapp.asgi``) applies.

MONAI Label 0.8.5 declares ``POST /infer/{model}`` as an ``async`` endpoint that runs the whole inference
synchronously: one request at a time, and while it runs the event loop answers nothing else (``/info``, datastore,
training status). :func:`serve_infer_from_pool` replaces that route by one with the same parameters, the same
authentication and the same handler (``monailabel.endpoints.infer.run_inference``), run in worker threads:

- at most ``workers`` inferences run at once (torch releases the GIL, so they use separate cores);
- at most ``queue`` more wait for a worker;
- any request beyond that is refused at once with ``503`` and ``Retry-After: 1``, ``{"detail": "busy: ..."}``.

Memory stays bounded: only running requests hold image-sized tensors; waiting ones hold their parsed form.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from fastapi import BackgroundTasks, Depends, FastAPI, File, Form, HTTPException, UploadFile
from fastapi.routing import APIRoute

from .compat import install

install()  # monailabel.endpoints.infer imports MONAI Label's ITK writer

from monailabel.config import settings  # noqa: E402
from monailabel.endpoints import infer as infer_endpoint  # noqa: E402
from monailabel.endpoints.user.auth import RBAC, User  # noqa: E402

logger = logging.getLogger(__name__)

__all__ = ["InferPool", "serve_infer_from_pool"]

T = TypeVar("T")


class InferPool:
    """Admission control and worker threads for inference: ``workers`` running, ``queue`` waiting, rest refused.

    The workers are a fixed set of threads (not the event loop's shared pool), so per-thread memory arenas and
    torch thread settings stay bounded by ``workers``.

    Args:
        workers: inferences that may run at the same time (at least 1).
        queue: admitted requests that may wait for a worker (at least 0).
    """

    def __init__(self, workers: int, queue: int) -> None:
        if workers < 1 or queue < 0:
            raise ValueError(f"infer_workers must be >= 1 and infer_queue >= 0, got {workers} and {queue}")
        self.workers, self.queue = workers, queue
        self._admitted = threading.BoundedSemaphore(workers + queue)
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="infer")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on a worker thread and await it; refuse at once when workers and queue are full.

        Raises:
            HTTPException: 503 with ``Retry-After: 1`` when ``workers + queue`` requests are already admitted.
        """
        if not self._admitted.acquire(blocking=False):
            raise HTTPException(
                status_code=503,
                detail=f"busy: {self.workers} inference(s) running and {self.queue} waiting; retry shortly",
                headers={"Retry-After": "1"},
            )
        try:
            return await asyncio.wrap_future(self._executor.submit(fn, *args))
        finally:
            self._admitted.release()


def serve_infer_from_pool(app: FastAPI, workers: int, queue: int) -> InferPool:
    """Replace MONAI Label's ``POST /infer/{model}`` route of ``app`` by a pooled one; return the pool.

    Call before the server starts (``labelapp.asgi`` does it at import).

    Raises:
        RuntimeError: when ``app`` has no such route (another MONAI Label version).
    """
    path = f"{settings.MONAI_LABEL_API_STR}/infer/{{model}}"
    original = [r for r in app.router.routes if isinstance(r, APIRoute) and r.path == path and "POST" in r.methods]
    if len(original) != 1:
        raise RuntimeError(f"MONAI Label's app has {len(original)} 'POST {path}' routes; expected 1")
    pool = InferPool(workers, queue)

    async def api_run_inference(
        background_tasks: BackgroundTasks,
        model: str,
        image: str = "",
        session_id: str = "",
        params: str = Form("{}"),
        file: UploadFile = File(None),  # noqa: B008 - FastAPI's idiom
        label: UploadFile = File(None),  # noqa: B008 - FastAPI's idiom
        output: infer_endpoint.ResultType | None = None,
        user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER)),  # noqa: B008 - FastAPI's idiom
    ) -> Any:
        return await pool.run(
            infer_endpoint.run_inference, background_tasks, model, image, session_id, params, file, label, output
        )

    app.router.routes.remove(original[0])
    app.router.add_api_route(
        path,
        api_run_inference,
        methods=["POST"],
        summary=original[0].summary,
        tags=original[0].tags,
        responses=original[0].responses,
    )
    logger.info(f"POST {path}: {workers} worker thread(s), {queue} waiting at most, then 503")
    return pool
