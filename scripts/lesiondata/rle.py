"""COCO run-length encoding (RLE) and polygon rasterisation, without pycocotools.

COCO RLE runs go through the mask in column-major (Fortran) order and start with a run of zeros. ``counts`` is
either a list of run lengths ("uncompressed", used for ``iscrowd`` annotations in JSON) or the compressed string
of pycocotools' ``rleToString``: each run, after the third, is stored as the difference to the run two before it,
in little-endian groups of 5 bits plus a continuation bit, offset by 48 into printable ASCII.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from skimage.draw import polygon as draw_polygon

__all__ = ["counts_from_string", "counts_to_string", "mask_to_counts", "polygon_to_mask", "rle_to_mask"]


def counts_from_string(s: str) -> list[int]:
    """Decode a compressed COCO RLE string into run lengths (the inverse of :func:`counts_to_string`)."""
    counts: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def counts_to_string(counts: Sequence[int]) -> str:
    """Encode run lengths as a compressed COCO RLE string (pycocotools' ``rleToString``)."""
    out = []
    for i, run in enumerate(counts):
        x = int(run) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def mask_to_counts(mask: np.ndarray) -> list[int]:
    """Run lengths of a binary mask in column-major order, starting with a (possibly empty) run of zeros."""
    flat = (np.asarray(mask).ravel(order="F") > 0).astype(np.int8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate(([0], changes, [flat.size]))
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0] == 1:
        runs = [0, *runs]
    return [int(r) for r in runs]


def rle_to_mask(counts: Sequence[int] | str, height: int, width: int) -> np.ndarray:
    """Decode COCO RLE (compressed string or list of runs) into a uint8 0/1 mask of ``height x width``.

    Raises:
        ValueError: the runs do not add up to ``height * width`` or are negative.
    """
    runs = counts_from_string(counts) if isinstance(counts, str) else [int(c) for c in counts]
    runs_arr = np.asarray(runs, dtype=np.int64)
    if (runs_arr < 0).any() or int(runs_arr.sum()) != height * width:
        raise ValueError(f"RLE runs add up to {int(runs_arr.sum())} pixels, expected {height}x{width}={height * width}")
    values = np.zeros(len(runs_arr), dtype=np.uint8)
    values[1::2] = 1
    return np.repeat(values, runs_arr).reshape((height, width), order="F")


def polygon_to_mask(points: Sequence[float], height: int, width: int) -> np.ndarray:
    """Rasterise one COCO polygon ``[x1, y1, x2, y2, ...]`` into a uint8 0/1 mask.

    COCO coordinates are continuous with pixel ``(i, j)`` covering ``[j, j+1) x [i, i+1)``; a pixel is inside when
    its centre ``(j + 0.5, i + 0.5)`` is inside the polygon.
    """
    xy = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    mask = np.zeros((height, width), dtype=np.uint8)
    if len(xy) < 3:
        return mask
    rr, cc = draw_polygon(xy[:, 1] - 0.5, xy[:, 0] - 0.5, shape=(height, width))
    mask[rr, cc] = 1
    return mask
