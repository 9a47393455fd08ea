"""ASGI entry point: MONAI Label's server app, importable without torchvision and itk, with pooled inference.

Serve it with ``monailabel start_server ... --uvicorn_app labelapp.asgi:app`` (from the repository root) or
``python -m labelapp start_server ...`` (which sets that flag). It is MONAI Label's own FastAPI app with two changes:

- MONAI Label modules that import torchvision/itk at module level import without them (:mod:`labelapp.lib.compat`);
- ``POST /infer/{model}`` runs in ``infer_workers`` worker threads with at most ``infer_queue`` requests waiting,
  and answers 503 (busy) beyond that, instead of blocking the event loop (:mod:`labelapp.lib.server`).

``--conf infer_workers <n>`` (default: CPU cores, at most 4; 0 keeps MONAI Label's route) and ``--conf infer_queue
<n>`` (default 8) set the pool.
"""

import os

from labelapp.lib.compat import install

install()

from monailabel.app import app  # noqa: E402
from monailabel.config import settings  # noqa: E402

from labelapp.lib.server import serve_infer_from_pool  # noqa: E402

_conf = settings.MONAI_LABEL_APP_CONF
_workers = int(_conf.get("infer_workers", min(4, os.cpu_count() or 1)))
if _workers > 0:  # 0 keeps MONAI Label's own route (inference on the event loop, one at a time)
    serve_infer_from_pool(app, workers=_workers, queue=int(_conf.get("infer_queue", 8)))

__all__ = ["app"]
