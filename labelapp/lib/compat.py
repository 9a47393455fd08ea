"""Let MONAI Label 0.8.5 import without ``torchvision`` and ``itk``.

MONAI Label imports two optional heavy packages at module level although this app never uses them:

- ``monailabel/transform/post.py`` does ``from torchvision.utils import make_grid, save_image``; the two functions
  only write debug image dumps. torchvision has no CPU wheel for torch 2.13 on the package registry.
- ``monailabel/transform/writer.py`` does ``import itk`` for its ITK result writers (and
  ``monailabel/datastore/utils/convert.py`` imports that writer). itk is a 1.5 GB install; this app writes its
  results with SimpleITK and PIL instead (:mod:`labelapp.lib.writer`).

:func:`install` satisfies exactly those module-level imports, and only when the real package cannot be imported:
it registers a minimal stand-in module, imports the MONAI Label modules that need it, then removes the stand-in
from ``sys.modules`` again. The MONAI Label modules keep their reference to the stand-in, whose functions raise an
``ImportError`` that explains what is missing; any later ``import torchvision`` / ``import itk`` (for example MONAI's
``optional_import``) still fails normally, so no library mistakes the stand-in for the real package.

``monailabel.app`` (the ASGI app that uvicorn serves) imports the ITK writer, so the server has to call
:func:`install` before uvicorn imports it: start it with ``python -m labelapp start_server ...`` or pass
``--uvicorn_app labelapp.asgi:app`` to ``monailabel start_server`` (see ``labelapp/README.md``). Train and scoring
subprocesses load ``labelapp/main.py``, which calls :func:`install` first thing.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from collections.abc import Callable

__all__ = ["install", "missing_packages"]

# MONAI Label modules that import an optional package at module level, by package.
_DEPENDENTS: dict[str, tuple[str, ...]] = {
    "torchvision": ("monailabel.transform.post",),
    "itk": ("monailabel.transform.writer", "monailabel.datastore.utils.convert"),
}

_REASONS: dict[str, str] = {
    "torchvision": "torchvision is not installed; MONAI Label uses it only for debug image dumps "
    "(torchvision.utils.make_grid/save_image), which this app does not use.",
    "itk": "itk is not installed; this app writes results with SimpleITK and PIL (labelapp.lib.writer). "
    "MONAI Label's ITK writers (write_itk, DICOM SEG conversion) are not available.",
}


def missing_packages() -> list[str]:
    """Return the optional packages of :data:`_DEPENDENTS` that cannot be imported here."""
    return [name for name in _DEPENDENTS if importlib.util.find_spec(name) is None]


def _unavailable(package: str, name: str) -> Callable[..., None]:
    """Return a function that raises an ``ImportError`` explaining that ``package`` is absent."""

    def unavailable(*args: object, **kwargs: object) -> None:
        raise ImportError(f"{package}.{name}() was called: {_REASONS[package]}")

    unavailable.__name__ = name
    return unavailable


class _StandIn(types.ModuleType):
    """Module whose every attribute is a function raising an explanatory ``ImportError``."""

    def __getattr__(self, name: str) -> Callable[..., None]:
        if name.startswith("__"):
            raise AttributeError(name)
        return _unavailable(self.__name__.split(".")[0], name)


def _stand_ins(package: str) -> dict[str, types.ModuleType]:
    modules: dict[str, types.ModuleType] = {package: _StandIn(package, _REASONS[package])}
    if package == "torchvision":
        utils = _StandIn("torchvision.utils", _REASONS[package])
        utils.make_grid = _unavailable(package, "make_grid")
        utils.save_image = _unavailable(package, "save_image")
        modules[package].utils = utils
        modules["torchvision.utils"] = utils
    return modules


def install() -> list[str]:
    """Import MONAI Label's modules that need torchvision/itk at module level, with stand-ins where those are absent.

    Idempotent and cheap after the first call.

    Returns:
        the packages that were replaced by stand-ins (empty when both are installed or already handled).
    """
    missing = [p for p in missing_packages() if any(m not in sys.modules for m in _DEPENDENTS[p])]
    if not missing:
        return []
    # MONAI decides once, at import, whether itk is available (ITKReader/ITKWriter); settle that before any stand-in.
    importlib.import_module("monai.data")
    stand_ins: dict[str, types.ModuleType] = {}
    for package in missing:
        stand_ins.update(_stand_ins(package))
    sys.modules.update(stand_ins)
    try:
        for package in missing:
            for module in _DEPENDENTS[package]:
                importlib.import_module(module)
    finally:
        for name, module in stand_ins.items():
            if sys.modules.get(name) is module:
                del sys.modules[name]
    return missing
