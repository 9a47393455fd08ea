#!/usr/bin/env python
"""Convert a public dataset layout into the project's common format (see docs/ARCHITECTURE.md).

Usage::

    python scripts/convert.py ph2 --src PH2Dataset --out data/prepared/ph2
    python scripts/convert.py coco --src roboflow_export --out data/prepared/brain [--label_mode category]
    python scripts/convert.py rgb_masks --src ipmn --out data/prepared/ipmn --colour_map ipmn3 [--tolerance 30]
    python scripts/convert.py instance_masks --src glas --out data/prepared/glas
    python scripts/convert.py csv_folders --src ctrus --out data/prepared/ctrus [--threshold 127]

Every command takes ``--overwrite``, ``--seed`` (folds) and ``--limit N`` (first N cases, for a trial run);
``python scripts/convert.py <command> --help`` lists the rest. Bad input stops with a message naming the file,
and leaves no output behind.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fire  # noqa: E402

from lesiondata import (  # noqa: E402
    DataError,
    convert_coco,
    convert_csv_folders,
    convert_instance_masks,
    convert_ph2,
    convert_rgb_masks,
)


def command(converter: Callable[..., dict]) -> Callable[..., None]:
    """Wrap a converter for the command line: print a short summary, turn a DataError into a clean exit."""

    @functools.wraps(converter)
    def run(*args, **kwargs) -> None:
        try:
            stats = converter(*args, **kwargs)
        except DataError as exc:
            sys.exit(f"error: {exc}")
        print(json.dumps(stats, indent=1))

    return run


COMMANDS = {
    "ph2": command(convert_ph2),
    "coco": command(convert_coco),
    "rgb_masks": command(convert_rgb_masks),
    "instance_masks": command(convert_instance_masks),
    "csv_folders": command(convert_csv_folders),
}

if __name__ == "__main__":
    fire.Fire(COMMANDS)
