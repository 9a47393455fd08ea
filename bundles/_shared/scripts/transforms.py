"""Transforms the bundles need that MONAI does not have: channel-count harmonisation, the diffusion filter, mask
clean-up, a fast channel argmax, the presence-channel drop of a presence-gated network, an elastic deformation that
costs nothing when it does not fire, MONAI's anti-aliased resize with a faster Gaussian filter, colour constancy and
hair removal."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.data.meta_obj import get_track_meta
from monai.networks.layers.convutils import gaussian_1d
from monai.transforms import (
    MapTransform,
    Rand2DElasticd,
    RandDeformGrid,
    Resize,
    Resized,
    ScaleIntensityRange,
    ScaleIntensityRanged,
)
from monai.utils import (
    convert_to_dst_type,
    convert_to_tensor,
    ensure_tuple_rep,
    fall_back_tuple,
    get_equivalent_dtype,
)
from scipy import ndimage


def plain_tensor(img) -> torch.Tensor:
    """``img``'s data as a plain tensor: a MetaTensor's without its bookkeeping (every operation on a MetaTensor
    also updates its metadata, a cost that dominates at these image sizes), any other array as a tensor."""
    return img.as_tensor() if isinstance(img, MetaTensor) else torch.as_tensor(img)


def like_input(out: torch.Tensor, img):
    """``out`` in ``img``'s type: a MetaTensor with ``img``'s metadata and recorded operations, else as it is."""
    return convert_to_dst_type(out, img, dtype=out.dtype)[0]


class EnsureChannelsd(MapTransform):
    """Make a channel-first image have exactly ``channels`` channels.

    Grey (1 channel) is repeated to 3; RGB(A) becomes grey by the mean of the first three channels; an alpha
    channel is dropped. In-house data often mixes grey and RGB files: this keeps the network input fixed.

    Args:
        keys: keys of the channel-first images.
        channels: 1 or 3.
    """

    def __init__(self, keys: KeysCollection, channels: int, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}: set in_channels in the bundle config.")
        self.channels = channels

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            c = img.shape[0]
            if c == self.channels:
                # PNGs load as channel-last memory: one copy here makes every later transform faster
                d[key] = img.contiguous()
                continue
            if self.channels == 3 and c == 1:
                d[key] = img.repeat(3, *([1] * (img.ndim - 1)))
            elif self.channels == 3 and c == 4:
                d[key] = img[:3]
            elif self.channels == 1 and c in (3, 4):
                d[key] = img[:3].float().mean(0, keepdim=True).to(img.dtype)
            else:
                raise ValueError(f"cannot turn an image with {c} channels into {self.channels} (key {key!r}).")
        return d


def diffusion_filter(
    img: torch.Tensor, iterations: int, step: float = 0.2, kappa: float = 0.1, mode: str = "isotropic"
):
    """Smooth a channel-first 2D image by explicit diffusion.

    ``isotropic`` solves the heat equation (equivalent to Gaussian smoothing with sigma = sqrt(2 * step *
    iterations)); ``perona_malik`` uses the edge-stopping conductance exp(-(|grad| / kappa)^2) and keeps
    edges. Intensities are assumed scaled to 0..1 (``kappa`` is in those units).

    Args:
        img: (C, H, W) tensor.
        iterations: number of explicit steps; 0 returns ``img`` unchanged.
        step: time step, stable for <= 0.25.
        kappa: edge threshold for ``perona_malik``.
        mode: ``isotropic`` or ``perona_malik``.
    """
    if iterations <= 0:
        return img
    if mode not in ("isotropic", "perona_malik"):
        raise ValueError(f"diffusion mode must be 'isotropic' or 'perona_malik', got {mode!r}.")
    if not 0 < step <= 0.25:
        raise ValueError(f"diffusion step must be in (0, 0.25] for a stable explicit scheme, got {step}.")
    u = torch.as_tensor(img, dtype=torch.float32).unsqueeze(0)
    for _ in range(int(iterations)):
        p = F.pad(u, (1, 1, 1, 1), mode="replicate")
        grads = [p[..., :-2, 1:-1] - u, p[..., 2:, 1:-1] - u, p[..., 1:-1, :-2] - u, p[..., 1:-1, 2:] - u]
        if mode == "isotropic":
            u = u + step * sum(grads)
        else:
            u = u + step * sum(torch.exp(-((g / kappa) ** 2)) * g for g in grads)
    out = u.squeeze(0)
    return out.to(img.dtype) if torch.is_floating_point(torch.as_tensor(img)) else out


class _PlainTensorMapd(MapTransform):
    """A dictionary transform that computes on each key's plain tensor (:func:`plain_tensor`) and copies the input's
    metadata back once (:func:`like_input`); the data pass through untouched while :attr:`active` is false (an
    option set to "off"). Subclasses define :meth:`apply` on a ``(C, H, W)`` tensor."""

    @property
    def active(self) -> bool:
        return True

    def apply(self, img: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        if not self.active:
            return d
        for key in self.key_iterator(d):
            img = d[key]
            # on the plain tensor: each operation on a MetaTensor would otherwise go through its bookkeeping
            d[key] = like_input(self.apply(plain_tensor(img)), img)
        return d


class DiffusionFilterd(_PlainTensorMapd):
    """Dictionary wrapper of :func:`diffusion_filter` (the TRUS recipe's speckle filter); iterations 0 = off."""

    def __init__(
        self,
        keys: KeysCollection,
        iterations: int = 0,
        step: float = 0.2,
        kappa: float = 0.1,
        mode: str = "isotropic",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.iterations, self.step, self.kappa, self.mode = int(iterations), float(step), float(kappa), mode

    @property
    def active(self) -> bool:
        return self.iterations > 0

    def apply(self, img: torch.Tensor) -> torch.Tensor:
        return diffusion_filter(img, self.iterations, self.step, self.kappa, self.mode)


def _component_sizes(components: np.ndarray, n: int) -> np.ndarray:
    """Pixels per label of an ``ndimage.label`` result, index 0 = unlabelled (10x faster than ``sum_labels``)."""
    return np.bincount(components.ravel(), minlength=n + 1)


def fill_enclosed(region: np.ndarray) -> np.ndarray:
    """``ndimage.binary_fill_holes(region)`` (same result: a hole is a 4-connected background region that does not
    reach the image border), by one labelling of the background instead of an iterated dilation (PH2's whole
    post-processing at 512x512 went from 23 to 17 ms in ``scripts/bench_inference.py``). Returns ``region`` itself
    when it has no hole."""
    background, n = ndimage.label(~region)
    if n == 0:
        return region
    reaches_border = np.zeros(n + 1, dtype=bool)
    for side in (background[0], background[-1], background[:, 0], background[:, -1]):
        reaches_border[side] = True
    hole = ~reaches_border
    hole[0] = False  # label 0 is ``region`` itself
    return region | hole[background] if hole.any() else region


_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def _bounding_box(region: np.ndarray, margin: int = 1) -> tuple[slice, ...]:
    """Slices of the smallest box around ``region``'s pixels grown by ``margin`` on each side (within the image)."""
    box = []
    for axis in range(region.ndim):
        occupied = np.flatnonzero(region.any(axis=tuple(a for a in range(region.ndim) if a != axis)))
        box.append(slice(max(int(occupied[0]) - margin, 0), int(occupied[-1]) + margin + 1))
    return tuple(box)


def clean_mask(
    mask: np.ndarray,
    num_classes: int,
    keep_largest: bool = False,
    fill_holes: bool = False,
    min_component_fraction: float = 0.0,
) -> np.ndarray:
    """Post-process a 2D integer label map: keep each label's largest connected component and/or fill its holes.

    Each label is cleaned inside its bounding box grown by one pixel: the same components and holes as on the whole
    image (outside the box is all background, connected to the border through the one-pixel ring), at a fraction
    of the cost where a label covers little of the image.

    Args:
        mask: (X, Y) integer label map.
        num_classes: labels are 1..num_classes-1 (0 is background).
        keep_largest: keep only the largest 8-connected component of each label.
        fill_holes: fill holes fully enclosed by a label.
        min_component_fraction: drop 8-connected components smaller than this fraction of the image area
            (applied first; a mask whose components are all smaller comes out empty).
    """
    if not (keep_largest or fill_holes or min_component_fraction > 0):
        return mask
    out = mask.copy()
    filled_over = False  # whether a lower label's filled hole may have taken pixels of a higher label
    for value in range(1, int(num_classes)):
        full = mask == value
        if not full.any():
            continue
        box = _bounding_box(full)
        labelled = full[box]
        region = labelled
        if min_component_fraction > 0:
            components, n = ndimage.label(region, structure=_EIGHT_CONNECTED)
            if n == 1:  # one component: its size without counting every label
                sizes = np.array([0, np.count_nonzero(region)])
            else:
                sizes = _component_sizes(components, n)
            keep = sizes >= min_component_fraction * mask.size
            if not keep[1:].any():
                out[full] = 0
                continue
            if not keep[1:].all():  # else every component stays: ``region`` is unchanged
                keep[0] = False  # the background of ``region``
                region = keep[components]
        if keep_largest:
            components, n = ndimage.label(region, structure=_EIGHT_CONNECTED)
            if n > 1:
                region = components == (int(np.argmax(_component_sizes(components, n)[1:])) + 1)
        if fill_holes:
            region = fill_enclosed(region)
        if region is labelled and not filled_over:  # nothing dropped or filled: ``out`` holds this label already
            continue
        target = out[box]  # a view: writes go to ``out``
        if region is not labelled:
            target[labelled & ~region] = 0
        # also over a lower label's filled hole, as without the boxes
        target[region if filled_over else region & ~labelled] = value
        filled_over = filled_over or fill_holes
    return out


class CleanMaskd(MapTransform):
    """Dictionary wrapper of :func:`clean_mask` for channel-first (1, X, Y) label maps; all options off = no-op."""

    def __init__(
        self,
        keys: KeysCollection,
        num_classes: int,
        keep_largest: bool = False,
        fill_holes: bool = False,
        min_component_fraction: float = 0.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.num_classes, self.keep_largest, self.fill_holes = int(num_classes), bool(keep_largest), bool(fill_holes)
        if not 0.0 <= float(min_component_fraction) < 1.0:
            raise ValueError(f"min_component_fraction must be in [0, 1); got {min_component_fraction}.")
        self.min_component_fraction = float(min_component_fraction)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        if not (self.keep_largest or self.fill_holes or self.min_component_fraction > 0):
            return d
        for key in self.key_iterator(d):
            img = d[key]
            cleaned = clean_mask(
                plain_tensor(img).detach().cpu().numpy()[0].astype(np.int64),
                self.num_classes,
                self.keep_largest,
                self.fill_holes,
                self.min_component_fraction,
            )
            new = torch.as_tensor(cleaned[None], dtype=img.dtype, device=img.device)
            d[key] = like_input(new, img)
        return d


def argmax_channels(x: torch.Tensor) -> torch.Tensor:
    """``x.argmax(0, keepdim=True)`` for a channel-first ``(C, ...)`` tensor, by element-wise comparisons.

    Same result (ties go to the lowest channel) in the dtype of ``x``, many times faster on a CPU: torch's argmax
    over the leading axis of a contiguous tensor strides across memory (~27 ms for 2 x 512 x 512 on one core,
    0.2 ms here).
    """
    if x.shape[0] == 2:  # foreground vs background, the common case: one comparison
        return (x[1] > x[0]).to(x.dtype)[None]
    best, index = x[0], torch.zeros_like(x[0])
    for c in range(1, x.shape[0]):
        better = x[c] > best
        index = torch.where(better, torch.full_like(index, c), index)
        best = torch.where(better, x[c], best)
    return index[None]


def checked_threshold(threshold: float | None) -> float | None:
    """A ``foreground_threshold`` as a float (None stays None, the argmax); outside (0, 1) it is refused."""
    if threshold is not None and not 0.0 < float(threshold) < 1.0:
        raise ValueError(
            f"foreground_threshold {threshold} must lie strictly between 0 and 1 (0.5 = the argmax), or be null for "
            "the argmax."
        )
    return None if threshold is None else float(threshold)


def threshold_channels(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """Label map ``(1, ...)`` from channel-first probabilities ``(C, ...)`` (channel 0 the background): a pixel is
    foreground where ``1 - x[0] > threshold``, and takes the most probable foreground channel there.

    With two channels this is ``x[1] > threshold``; ``threshold`` 0.5 then gives the argmax (ties aside). Above 0.5
    it trims the rim a model over-segments, below it grows the mask. Probabilities only: on logits the threshold
    means nothing.
    """
    threshold = checked_threshold(threshold)
    if x.shape[0] == 2:
        return (x[1] > threshold).to(x.dtype)[None]
    labels = argmax_channels(x[1:]) + 1
    return torch.where(1 - x[0:1] > threshold, labels, torch.zeros_like(labels))


class ArgmaxChanneld(MapTransform):
    """Dictionary transform: channel-first probabilities or logits ``(C, ...)`` -> label map ``(1, ...)``.

    Equivalent to MONAI's ``AsDiscreted(argmax=True)`` (values in the input's dtype, metadata kept), computed with
    :func:`argmax_channels`; with a ``threshold``, :func:`threshold_channels` instead.

    Args:
        keys: keys of the channel-first probabilities or logits.
        input_keys: where to keep each key's input (the probabilities, for the findings' confidence), one name per
            key; None keeps nothing. The input object itself is kept, not a copy: MONAI's ``CopyItemsd`` before the
            argmax would deep-copy the probabilities and their metadata for the same result.
        threshold: None for the argmax; else the foreground probability a pixel must exceed (the bundles'
            ``foreground_threshold``). The input must then be probabilities (after the softmax).
    """

    def __init__(
        self,
        keys: KeysCollection,
        input_keys: KeysCollection | None = None,
        threshold: float | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.input_keys = ensure_tuple_rep(input_keys, len(self.keys))
        self.threshold = checked_threshold(threshold)  # refused here, when the config is parsed, not per image

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key, input_key in self.key_iterator(d, self.input_keys):
            img = d[key]
            x = plain_tensor(img)
            d[key] = like_input(
                argmax_channels(x) if self.threshold is None else threshold_channels(x, self.threshold), img
            )
            if input_key is not None:
                d[input_key] = img
        return d


class DropPresenced(MapTransform):
    """Dictionary transform: drop the presence channel of a :class:`scripts.networks.PresenceGatedNet`'s train-mode
    output (``num_classes + 1`` channels) so the training metrics see the ``num_classes`` segmentation channels.

    Outputs with ``num_classes`` channels (eval mode, or networks without the head) pass through unchanged, so the
    same post-processing serves training and validation.
    """

    def __init__(self, keys: KeysCollection, num_classes: int, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.num_classes = int(num_classes)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            if d[key].shape[0] == self.num_classes + 1:
                d[key] = d[key][: self.num_classes]
        return d


class _ControlGridOnlyDeformGrid(RandDeformGrid):
    """MONAI's ``RandDeformGrid`` that draws its random offsets only when it builds the grid.

    ``Rand2DElasticd`` first asks its grid for offsets at the image's full size (``2 x H x W`` normal draws, the
    largest single cost of a firing at 384x384), then builds the grid, which draws them again at the control-grid size and uses only those. Here
    the first request draws nothing; the grid's offsets and magnitude come from the same distributions.
    """

    _building = False

    def randomize(self, grid_size: Sequence[int]) -> None:
        if self._building:
            super().randomize(grid_size)

    def __call__(self, spatial_size: Sequence[int]) -> torch.Tensor:
        self._building = True
        try:
            return super().__call__(spatial_size)
        finally:
            self._building = False


class RandElasticd(Rand2DElasticd):
    """MONAI's ``Rand2DElasticd`` (B-spline control-grid deformation, as in the U-Net paper), skipped when it does
    not fire, without MONAI's discarded full-size draw of random offsets (:class:`_ControlGridOnlyDeformGrid`).

    MONAI's transform resamples through an identity grid on the images it leaves alone (about 20 ms at 384x384
    per image and key), so with ``prob`` 0 it would still slow every training sample; this one returns the data
    untouched then. Arguments are ``Rand2DElasticd``'s: ``spacing`` is the control-point distance and
    ``magnitude_range`` the standard deviation of their displacement, both in pixels.
    """

    def __init__(self, keys: KeysCollection, prob: float = 0.1, **kwargs) -> None:
        super().__init__(keys, prob=1.0, **kwargs)
        self.apply_prob = float(prob)
        grid = self.rand_2d_elastic.deform_grid
        lean = _ControlGridOnlyDeformGrid(grid.spacing, grid.magnitude, device=grid.device)
        lean.R = grid.R
        self.rand_2d_elastic.deform_grid = lean

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        if self.apply_prob <= 0.0 or self.R.rand() >= self.apply_prob:
            return dict(data)
        return super().__call__(data)


def gaussian_smooth(img: torch.Tensor, sigma: Sequence[float]) -> torch.Tensor:
    """MONAI's ``GaussianSmooth(sigma)`` of a channel-first ``(C, *spatial)`` tensor (its erf kernel truncated at 4
    sigma, zero padding, one axis after the other) by shifted multiply-adds instead of a grouped convolution: the
    same values (tests/test_bundle_scripts.py), faster on a CPU for the small kernels of an anti-aliased downsizing:
    the whole resize of a 3 x 560 x 768 PH2 image to 256 x 256 took 5.2 ms against MONAI's 26.4 ms (5.1x), of a
    3 x 512 x 512 one 3.2 against 7.5 ms (2.3x), at 2 threads on an Intel Xeon (``python scripts/bench_inference.py
    parts``, ``benchmarks/results/inference_parts_cpu_xeon.json``). A sigma <= 0 leaves its axis as it is (MONAI's
    kernel there is the identity)."""
    out = img
    for axis, s in enumerate(sigma):
        if s <= 0:
            continue
        kernel = gaussian_1d(torch.tensor(float(s)), truncated=4.0, approx="erf", normalize=False).tolist()
        radius, length = len(kernel) // 2, out.shape[axis + 1]
        pad = [0, 0] * (out.ndim - 1)  # F.pad lists the last axis first
        pad[2 * (out.ndim - 2 - axis)] = pad[2 * (out.ndim - 2 - axis) + 1] = radius
        padded = F.pad(out[None], pad)[0]
        acc = padded.narrow(axis + 1, 0, length) * kernel[0]
        for i, weight in enumerate(kernel[1:], 1):
            acc.add_(padded.narrow(axis + 1, i, length), alpha=weight)
        out = acc
    return out


class FastResize(Resize):
    """MONAI's ``Resize`` whose anti-aliasing filter is :func:`gaussian_smooth`: the same output and the same
    recorded (invertible) operation, the filter several times faster. Lazy resizing and ``size_mode="longest"`` go
    to MONAI's own path unchanged."""

    def __call__(  # type: ignore[override]
        self,
        img: torch.Tensor,
        mode: str | None = None,
        align_corners: bool | None = None,
        anti_aliasing: bool | None = None,
        anti_aliasing_sigma: Sequence[float] | float | None = None,
        dtype=None,
        lazy: bool | None = None,
    ) -> torch.Tensor:
        anti_aliasing = self.anti_aliasing if anti_aliasing is None else anti_aliasing
        sigma = self.anti_aliasing_sigma if anti_aliasing_sigma is None else anti_aliasing_sigma
        pending = isinstance(img, MetaTensor) and bool(img.pending_operations)
        if anti_aliasing and not (self.lazy if lazy is None else lazy) and self.size_mode == "all" and not pending:
            size = img.shape[1:]
            out_size = fall_back_tuple(self.spatial_size, size)
            if len(out_size) == len(size) and any(o < i for o, i in zip(out_size, size, strict=True)):
                # MONAI's sigmas, in its float32 arithmetic (the kernel must be the same to the last bit)
                factors = torch.div(torch.Tensor(list(size)), torch.Tensor(list(out_size)))
                if sigma is None:  # MONAI's (and skimage's) default: (factor - 1) / 2 on each downsized axis
                    sigmas = torch.clamp_min((factors - 1) / 2, 0.0).tolist()
                else:
                    given = ensure_tuple_rep(sigma, len(size))
                    sigmas = [s * int(f > 1) for s, f in zip(given, factors.tolist(), strict=True)]
                compute = get_equivalent_dtype(dtype or self.dtype or img.dtype, torch.Tensor)
                plain = convert_to_tensor(img, dtype=compute, track_meta=False)  # also a NumPy array
                img = convert_to_dst_type(gaussian_smooth(plain, sigmas), img, dtype=compute)[0]
            anti_aliasing = False
        return super().__call__(img, mode, align_corners, anti_aliasing, sigma, dtype, lazy)


class FastResized(Resized):
    """MONAI's ``Resized`` (same arguments) with :class:`FastResize`'s faster anti-aliasing filter."""

    def __init__(self, keys: KeysCollection, spatial_size, size_mode: str = "all", *args, **kwargs) -> None:
        super().__init__(keys, spatial_size, size_mode, *args, **kwargs)
        self.resizer = FastResize(spatial_size=spatial_size, size_mode=size_mode, lazy=self.lazy)


class FastScaleIntensityRange(ScaleIntensityRange):
    """MONAI's ``ScaleIntensityRange`` (same arguments, bit-identical output) computed in place on one copy of the
    plain tensor: MONAI's four operations each allocate a new image and go through MetaTensor's bookkeeping, a
    large share of the pre-processing of a 512x512 RGB image. Anything else than a tensor with ``b_min``/``b_max``
    set and ``a_min != a_max`` goes to MONAI's own path."""

    def __call__(self, img):
        if not isinstance(img, torch.Tensor) or self.b_min is None or self.b_max is None or self.a_max == self.a_min:
            return super().__call__(img)
        plain = plain_tensor(img)
        compute = plain.dtype if plain.is_floating_point() else torch.get_default_dtype()  # MONAI's promotion
        out = plain.to(compute, copy=True)
        out.sub_(self.a_min).div_(self.a_max - self.a_min).mul_(self.b_max - self.b_min).add_(self.b_min)
        if self.clip:
            out.clamp_(self.b_min, self.b_max)
        out = out.to(get_equivalent_dtype(self.dtype or img.dtype, torch.Tensor))
        if not get_track_meta():  # MONAI's output type: a MetaTensor exactly when metadata is tracked
            return out
        return convert_to_dst_type(out, img, dtype=out.dtype)[0] if isinstance(img, MetaTensor) else MetaTensor(out)


class FastScaleIntensityRanged(ScaleIntensityRanged):
    """MONAI's ``ScaleIntensityRanged`` (same arguments) with :class:`FastScaleIntensityRange`."""

    def __init__(self, keys: KeysCollection, a_min: float, a_max: float, *args, **kwargs) -> None:
        super().__init__(keys, a_min, a_max, *args, **kwargs)
        s = self.scaler
        self.scaler = FastScaleIntensityRange(s.a_min, s.a_max, s.b_min, s.b_max, s.clip, s.dtype)


def shades_of_grey(img: torch.Tensor, power: float) -> torch.Tensor:
    """Shades-of-grey colour constancy (Finlayson & Trezzi, 2004) of a channel-first RGB image scaled to 0..1.

    The illuminant of channel ``c`` is estimated as the Minkowski ``power``-mean of its intensities; each channel is
    divided by its estimate (normalised so that a grey illuminant changes nothing) and clipped to 0..1. ``power`` 1
    is grey-world, large powers tend to max-RGB; dermoscopy studies use 6. Images with other than 3 channels, and
    ``power`` 0, are returned unchanged.
    """
    if power <= 0 or img.shape[0] != 3:
        return img
    x = img.float()
    illuminant = x.clamp_min(0).pow(power).mean(dim=tuple(range(1, x.ndim))).pow(1.0 / power)
    illuminant = illuminant / illuminant.norm().clamp_min(1e-8)
    gains = 1.0 / (illuminant * 3**0.5).clamp_min(1e-8)
    return (x * gains.view(-1, *([1] * (x.ndim - 1)))).clamp_(0.0, 1.0).to(img.dtype)


class ColourConstancyd(_PlainTensorMapd):
    """Dictionary wrapper of :func:`shades_of_grey` (``power`` 0 = off, the default of every bundle but where a
    recipe sets ``colour_constancy_power``); metadata is kept."""

    def __init__(self, keys: KeysCollection, power: float = 0.0, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if float(power) < 0:
            raise ValueError(
                f"colour_constancy_power must be >= 0 (0 = off, 6 = the usual shades of grey); got {power}."
            )
        self.power = float(power)

    @property
    def active(self) -> bool:
        return self.power > 0

    def apply(self, img: torch.Tensor) -> torch.Tensor:
        return shades_of_grey(img, self.power)


_LINE_DIRECTIONS = ((0, 1), (1, 0), (1, 1), (1, -1))  # (row, column) steps: horizontal, vertical, both diagonals


def _line_extreme(x: torch.Tensor, step: tuple[int, int], radius: int, reduce) -> torch.Tensor:
    """Grey dilation (``reduce`` = ``torch.maximum``) or erosion (``torch.minimum``) of ``x`` (N, C, H, W) by a line
    of ``2 * radius + 1`` pixels along ``step`` (``(dy, dx)``, dy 0 or 1, dx -1, 0 or 1); the image's edge is
    repeated beyond it.

    By doubling (van Herk's idea in its simplest form): the reduction over 2, 4, 8 ... pixels along the line from
    each pixel, then two overlapping windows cover the line: about log2(length) + 1 passes over the image instead of
    ``length`` (11 pixels: 4 instead of 10), the same values.
    """
    dy, dx = step
    height, width = x.shape[-2:]
    length = 2 * radius + 1
    table = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    left = 0  # padded column of the table's column 0: it moves right along an anti-diagonal

    def along(table: torch.Tensor, shift: int) -> torch.Tensor:  # reduce(t[j], t[j + shift * step]) where both exist
        h, w = table.shape[-2] - shift * dy, table.shape[-1] - shift * abs(dx)
        first = table[..., :h, (shift if dx < 0 else 0) :][..., :w]
        second = table[..., shift * dy :, (shift if dx > 0 else 0) :][..., :h, :w]
        return reduce(first, second)

    span = 1
    while 2 * span <= length:  # table[j]: the reduction over the ``2 * span`` pixels from j along the line
        table = along(table, span)
        left += span if dx < 0 else 0
        span *= 2
    rest = length - span  # the windows at j and j + rest * step, ``span`` pixels each, cover ``length``
    table = along(table, rest)
    left += rest if dx < 0 else 0
    top, start = radius - radius * dy, radius - radius * dx - left
    return table[..., top : top + height, start : start + width]


def remove_hair(img: torch.Tensor, threshold: float, length: int = 11) -> torch.Tensor:
    """Remove dark hairs from a channel-first 2D image scaled to 0..1, as DullRazor does (Lee et al., 1997).

    Each channel is closed (dilated, then eroded) by lines of ``length`` pixels in four directions and the
    brightest of the four closings is kept: a structure thinner than ``length`` across in some direction, as a hair
    is, disappears from it, while a lesion, wider than ``length`` every way, stays. Pixels where that closing is
    brighter than the image by more than ``threshold`` (mean over the channels), grown by one pixel, are hair; they
    take the closing's values. ``threshold`` 0 returns ``img`` unchanged.

    Args:
        img: (C, H, W) tensor.
        threshold: black-hat contrast (0..1 intensity units) above which a pixel is hair; 0.1 finds PH2's hairs
            and leaves the skin's texture alone at 256x256.
        length: line length in pixels, longer than a hair is wide at the image's size (11 at 256x256; an even
            length is taken as the next odd one).
    """
    if threshold <= 0:
        return img
    if length < 3:
        raise ValueError(f"hair_removal_length must be at least 3 pixels, got {length}.")
    x = img.float()[None]
    radius = int(length) // 2
    closing = None
    for step in _LINE_DIRECTIONS:
        dilated = _line_extreme(x, step, radius, torch.maximum)
        closed = _line_extreme(dilated, step, radius, torch.minimum)
        closing = closed if closing is None else torch.maximum(closing, closed, out=closing)
    hair = ((closing - x).mean(1, keepdim=True) > threshold).to(torch.uint8)
    for step in _LINE_DIRECTIONS[:2]:  # grown by one pixel: a 3 x 3 square, one axis after the other
        hair = _line_extreme(hair, step, 1, torch.maximum)
    hair = hair.bool()
    return torch.where(hair, closing, x)[0].to(img.dtype)


class HairRemovald(_PlainTensorMapd):
    """Dictionary wrapper of :func:`remove_hair` (``threshold`` 0 = off, every bundle's default but where a recipe
    sets ``hair_removal_threshold``); metadata is kept."""

    def __init__(
        self, keys: KeysCollection, threshold: float = 0.0, length: int = 11, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if float(threshold) < 0:
            raise ValueError(f"hair_removal_threshold must be >= 0 (0 = off, 0.1 for PH2); got {threshold}.")
        if float(threshold) > 0 and int(length) < 3:
            raise ValueError(f"hair_removal_length must be at least 3 pixels, got {length}.")
        self.threshold, self.length = float(threshold), int(length)

    @property
    def active(self) -> bool:
        return self.threshold > 0

    def apply(self, img: torch.Tensor) -> torch.Tensor:
        return remove_hair(img, self.threshold, self.length)
