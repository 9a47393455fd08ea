"""Data converters into the project's common 2D segmentation format, fold assignment and synthetic samples.

Each source layout has one converter (``convert_ph2``, ``convert_coco``, ``convert_rgb_masks``,
``convert_instance_masks``, ``convert_csv_folders``); all of them write the format described in
``docs/ARCHITECTURE.md`` atomically and raise :class:`DataError` for bad input.
"""

from __future__ import annotations

from .coco import convert_coco
from .common import DatasetInfo, SourceCase, read_image, write_dataset
from .csv_folders import convert_csv_folders
from .errors import DataError
from .folds import assign_folds
from .instance_masks import convert_instance_masks
from .ph2 import convert_ph2
from .rgb_masks import COLOUR_MAPS, convert_rgb_masks
from .synthetic import KINDS, ensure_raw, make_demo_dataset, make_raw

__all__ = [
    "COLOUR_MAPS",
    "KINDS",
    "DataError",
    "DatasetInfo",
    "SourceCase",
    "assign_folds",
    "convert_coco",
    "convert_csv_folders",
    "convert_instance_masks",
    "convert_ph2",
    "convert_rgb_masks",
    "ensure_raw",
    "make_demo_dataset",
    "make_raw",
    "read_image",
    "write_dataset",
]
