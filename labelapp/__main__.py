"""``python -m labelapp start_server ...``: MONAI Label's CLI with this app's safe defaults.

Same arguments as ``monailabel start_server``; when not given:

- ``--app``: this folder;
- ``--host``: ``127.0.0.1`` (loopback only; MONAI Label's own default is ``0.0.0.0``);
- ``--uvicorn_app``: ``labelapp.asgi:app`` (MONAI Label's server without torchvision/itk, see ``lib/compat.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from labelapp.lib.compat import install

APP_DIR = Path(__file__).resolve().parent
DEFAULTS: dict[tuple[str, ...], str] = {
    ("--app", "-a"): str(APP_DIR),
    ("--host", "-i"): "127.0.0.1",
    ("--uvicorn_app",): "labelapp.asgi:app",
}


def with_defaults(argv: list[str]) -> list[str]:
    """Return ``argv`` with this app's defaults appended to a ``start_server`` command line."""
    if not argv or argv[0] != "start_server":
        return list(argv)
    given = {a.split("=", 1)[0] for a in argv}
    extra = [x for flags, value in DEFAULTS.items() if not given.intersection(flags) for x in (flags[0], value)]
    return [*argv, *extra]


def main(argv: list[str] | None = None) -> None:
    """Run MONAI Label's CLI (``monailabel.main.Main``) with :func:`with_defaults` applied."""
    install()
    from monailabel.main import Main

    sys.argv = ["monailabel", *with_defaults(list(sys.argv[1:] if argv is None else argv))]
    Main().run()


if __name__ == "__main__":
    main()
