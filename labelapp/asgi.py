"""ASGI entry point: MONAI Label's server app, importable without torchvision and itk.

``monailabel.app`` imports MONAI Label's ITK writer at module level, so uvicorn must import it through this module
(``monailabel start_server ... --uvicorn_app labelapp.asgi:app``, run from the repository root); ``python -m
labelapp start_server`` does that by default. See :mod:`labelapp.lib.compat`.
"""

from labelapp.lib.compat import install

install()

from monailabel.app import app  # noqa: E402

__all__ = ["app"]
