"""Run the bundle's exported ONNX model with ONNX Runtime or OpenVINO in place of the PyTorch network.

``configs/inference_onnx.json`` sets the bundle's ``inferer`` base to :class:`OnnxInferer`; pre- and
post-processing are the bundle's own, so the masks match eager inference (see ``tests/test_export.py``). Export the
model with ``python scripts/export_bundle.py --bundle <bundle>`` (``models/model.onnx``). The export records the
sha256 of the ``model.pt`` it came from in the ONNX metadata (:func:`stamp_source`); given that checkpoint,
:class:`OnnxInferer` refuses a model exported from another one (a stale export after retraining would otherwise run
the old model). The same file runs in either runtime (``runtime``): ONNX Runtime (``backend: onnx``) or OpenVINO
(``backend: openvino``, in fp32; in bf16 with ``amp: "bf16"``); ``backend: auto`` (:class:`AutoBackend`) times them
and PyTorch on the first batch and runs the fastest.

The export itself is defined here too (:func:`onnx_export_args`, :func:`export_onnx`, and on the command line
``python -m scripts.onnx_inferer`` in the bundle folder), so a bundle that travels without this repository (a
downloaded bundle, the label app's retraining) re-exports itself the same way.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import importlib.util
import logging
import threading
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.inferers import Inferer
from monai.utils import convert_to_dst_type, convert_to_numpy, optional_import

from .engines import amp_mode, time_in_turns
from .handlers import atomic_write_bytes
from .networks import samples_dropout

__all__ = [
    "BACKENDS",
    "BACKEND_MIN_GAIN",
    "RUNTIMES",
    "AutoBackend",
    "ONNX_CONVERTER_KWARGS",
    "SOURCE_KEY",
    "OnnxInferer",
    "PRECISIONS",
    "checkpoint_sha256",
    "export_onnx",
    "onnx_export_args",
    "recorded_source",
    "select_base",
    "stale_message",
    "stamp_source",
]

ort, _has_ort = optional_import("onnxruntime")
logger = logging.getLogger(__name__)
SOURCE_KEY = "source_checkpoint_sha256"
_EXPORT_HINT = "export it with `python scripts/export_bundle.py --bundle <bundle>`"
BACKENDS = ("auto", "torch", "onnx", "openvino")
#: the runtimes an :class:`OnnxInferer` runs the export in, and the ``backend`` that forces each
RUNTIMES = {"onnxruntime": "onnx", "openvino": "openvino"}
#: inference precisions of an :class:`OnnxInferer` (OpenVINO's ``INFERENCE_PRECISION_HINT``); bf16: OpenVINO only
PRECISIONS = ("f32", "bf16")
_INSTALL = {"onnxruntime": "pip install onnxruntime==1.23.2", "openvino": "pip install openvino==2026.4.1"}
#: ``torch.onnx.export`` arguments of every bundle's model: the TorchScript-based exporter (``dynamo=False``: torch
#: 2.13's default dynamo exporter needs ``onnxscript``, which is not installed) and dynamic batch, height and width,
#: so the model runs at any ``spatial_size``.
ONNX_CONVERTER_KWARGS: dict[str, Any] = {
    "dynamo": False,
    "input_names": ["image"],
    "output_names": ["pred"],
    "dynamic_axes": {"image": {0: "batch", 2: "height", 3: "width"}, "pred": {0: "batch", 2: "height", 3: "width"}},
}


def checkpoint_sha256(path: str | Path) -> str:
    """Hex sha256 of a checkpoint file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def onnx_export_args(in_channels: int, spatial_size: Sequence[int], bundle_root: str | Path = ".") -> dict[str, Any]:
    """The arguments of MONAI's ``onnx_export`` (``python -m monai.bundle onnx_export``) for this bundle's network:
    ``network_def`` of ``configs/inference.json``, traced on a ``[1, in_channels, *spatial_size]`` sample, with
    :data:`ONNX_CONVERTER_KWARGS`. Paths are under ``bundle_root`` (relative to the bundle folder by default)."""
    root = Path(str(bundle_root))
    return {
        "net_id": "network_def",
        "meta_file": str(root / "configs" / "metadata.json"),
        "config_file": str(root / "configs" / "inference.json"),
        "use_trace": True,
        "input_shape": [1, int(in_channels), *(int(s) for s in spatial_size)],
        "converter_kwargs": copy.deepcopy(ONNX_CONVERTER_KWARGS),  # MONAI's onnx_export adds its sample to it
    }


def export_onnx(
    bundle_root: str | Path,
    checkpoint: str | Path,
    onnx_file: str | Path,
    in_channels: int | None = None,
    spatial_size: Sequence[int] | None = None,
    overrides: dict[str, Any] | None = None,
) -> str:
    """Export ``checkpoint`` to ``onnx_file`` in this process, stamped (:func:`stamp_source`) and renamed into place
    in one step, so a running :class:`OnnxInferer` never reads a half-written model; returns the stamp.

    ``overrides`` are the config values the model was trained with (``network``, ``num_classes``, ...);
    ``in_channels`` and ``spatial_size`` (the sample's shape) default to the values of ``configs/inference.json``
    with those overrides. The bundle's ``scripts`` package must be the one importable (run from the bundle folder or
    with it on ``sys.path``; ``python -m scripts.onnx_inferer`` in the bundle folder does this, see :func:`main`).
    """
    from monai.bundle import ConfigParser, onnx_export

    overrides = dict(overrides or {})
    if in_channels is None or spatial_size is None:
        config = ConfigParser()
        config.read_config(str(Path(str(bundle_root)) / "configs" / "inference.json"))
        config.update(overrides)
        in_channels = config.get_parsed_content("in_channels") if in_channels is None else in_channels
        spatial_size = config.get_parsed_content("spatial_size") if spatial_size is None else spatial_size
    stamp: list[str] = []

    def write(partial: str) -> None:
        args = onnx_export_args(in_channels, spatial_size, bundle_root)
        onnx_export(filepath=partial, ckpt_file=str(checkpoint), **args, **overrides)
        stamp.append(stamp_source(partial, checkpoint))

    atomic_write_bytes(onnx_file, write)
    return stamp[0]


def stamp_source(onnx_file: str | Path, checkpoint: str | Path) -> str:
    """Write the sha256 of ``checkpoint`` (the exported ``model.pt``) into the metadata of ``onnx_file``; returns it."""
    import onnx

    model = onnx.load(str(onnx_file))
    kept = [p for p in model.metadata_props if p.key != SOURCE_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    sha = checkpoint_sha256(checkpoint)
    entry = model.metadata_props.add()
    entry.key, entry.value = SOURCE_KEY, sha
    onnx.save(model, str(onnx_file))
    return sha


def recorded_source(onnx_file: str | Path) -> str | None:
    """The checkpoint sha256 :func:`stamp_source` wrote into ``onnx_file``, or None for an unstamped export."""
    import onnx

    model = onnx.load(str(onnx_file), load_external_data=False)
    return next((p.value for p in model.metadata_props if p.key == SOURCE_KEY), None)


def stale_message(onnx_file: str | Path, recorded: str | None, checkpoint: str | Path) -> str | None:
    """What to do when ``onnx_file`` (stamp ``recorded``) was exported from another checkpoint than ``checkpoint``;
    None when it matches or records nothing (an unstamped export cannot be checked)."""
    if recorded is None or recorded == checkpoint_sha256(checkpoint):
        return None
    return (
        f"{onnx_file} was exported from another checkpoint than {checkpoint} (retrained since the export?): "
        f"re-export with `python scripts/export_bundle.py --bundle <bundle> --ckpt_dir {Path(str(checkpoint)).parent}`, "
        "or point onnx_file and ckpt_dir at a matching pair."
    )


class OnnxInferer(Inferer):
    """A callable taking the preprocessed batch ``(B, C, H, W)`` and returning the exported model's logits as a tensor.

    The output has the input's type, device and metadata (as a network's output would), so ``Invertd`` and
    ``SaveImaged`` work unchanged. The ``network`` argument of MONAI's inferer interface is only used to fall back
    on (``on_stale="torch"``).

    The model is checked against ``checkpoint`` when it loads and again whenever either file changes on disk (two
    ``stat`` calls per batch otherwise), so a long-running server (the label app) that retrains ``model.pt`` never
    serves the old weights from a stale export, and picks up a re-export without a restart.

    Args:
        path: the ``.onnx`` file (``models/model.onnx``).
        threads: the runtime's intra-op threads; 0 lets the runtime choose.
        providers: ONNX Runtime execution providers; default ``["CPUExecutionProvider"]``.
        in_channels: when given, checked against the model's input so a wrong file fails with a clear message.
        checkpoint: the ``model.pt`` the model should have been exported from (``<ckpt_dir>/model.pt``); when the
            file exists and the model records its source (:func:`stamp_source`), a mismatch makes the model stale.
            Absent (an ONNX-only deployment) or unrecorded (an older export, logged), nothing is checked, except
            with ``on_stale="torch"``, which runs the export only on a verified match.
        on_stale: ``"error"``: a stale model raises (at load, or at the first batch after ``model.pt`` changed);
            ``"torch"``: batches go to the PyTorch ``network`` until the model matches again (``backend: auto``).
        runtime: ``"onnxruntime"`` or ``"openvino"`` (OpenVINO's CPU plugin).
        precision: ``"f32"`` (default; OpenVINO's own default on a CPU with native bf16 would be bf16, whose masks
            differ a little from eager fp32) or ``"bf16"`` (OpenVINO only: on a CPU with AMX it ran the PH2 UNet
            about twice as fast as in fp32, README, Speed; elsewhere it may be slower, which ``backend: auto``
            measures).

    Raises:
        FileNotFoundError: ``path`` does not exist (``on_stale="torch"``: PyTorch runs until it does).
        ImportError: the runtime is not installed.
        ValueError: the model's input channels differ from ``in_channels``; a stale model with ``on_stale="error"``.
    """

    def __init__(
        self,
        path: str | Path,
        threads: int = 0,
        providers: list[str] | None = None,
        in_channels: int | None = None,
        checkpoint: str | Path | None = None,
        on_stale: str = "error",
        runtime: str = "onnxruntime",
        precision: str = "f32",
    ) -> None:
        super().__init__()
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}; got {runtime!r}.")
        if precision not in PRECISIONS or (precision != "f32" and runtime != "openvino"):
            raise ValueError(
                f"precision must be one of {', '.join(PRECISIONS)} (bf16: openvino only); got {precision!r}."
            )
        self.path = Path(str(path))
        if not self.path.is_file() and on_stale != "torch":
            raise FileNotFoundError(f"{self.path} not found: {_EXPORT_HINT} or set onnx_file.")
        if not runtime_installed(runtime):
            raise ImportError(f"backend {RUNTIMES[runtime]} needs {runtime}: {_INSTALL[runtime]}")
        if on_stale not in ("error", "torch"):
            raise ValueError(f"on_stale must be 'error' or 'torch'; got {on_stale!r}.")
        self.threads, self.providers, self.in_channels = int(threads), providers, in_channels
        self.checkpoint = Path(str(checkpoint)) if checkpoint is not None else None
        self.on_stale, self.runtime, self.precision = on_stale, runtime, precision
        self.label = runtime if precision == "f32" else f"{runtime}-{precision}"  #: its name in the log
        self.session: Any = None  #: the ONNX Runtime session or the OpenVINO compiled model
        self.input_name = ""
        self.source: str | None = None  #: the checkpoint sha256 the loaded model records (:func:`stamp_source`)
        self.stale: str | None = None  #: why the exported model does not serve now (``on_stale="torch"``), or None
        self._seen: tuple | None = None
        self._lock = threading.Lock()
        self.refresh()

    def _files(self) -> tuple:
        return tuple(_file_state(p) for p in (self.path, self.checkpoint))

    def _load(self) -> None:
        if self.runtime == "openvino":
            session, channels, name = self._load_openvino()
            source = recorded_source(self.path)
        else:
            session = self._load_onnxruntime()
            model_input = session.get_inputs()[0]
            channels = model_input.shape[1] if len(model_input.shape) > 1 else None
            name, source = model_input.name, session.get_modelmeta().custom_metadata_map.get(SOURCE_KEY)
        if self.in_channels is not None and isinstance(channels, int) and channels != int(self.in_channels):
            raise ValueError(f"{self.path} takes {channels}-channel images but in_channels is {self.in_channels}.")
        self.session, self.input_name, self.source = session, name, source

    def _load_onnxruntime(self) -> Any:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        # idle intra-op threads would spin after each run and take the cores from the pre- and post-processing
        # that run between images (end to end at 2 threads: spinning made ONNX Runtime no faster than eager)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(
            str(self.path), sess_options=options, providers=self.providers or ["CPUExecutionProvider"]
        )

    def _load_openvino(self) -> tuple[Any, int | None, str]:
        import openvino

        core = openvino.Core()
        model = core.read_model(str(self.path))
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": self.precision, "PERFORMANCE_HINT": "LATENCY"}
        if self.threads > 0:
            config["INFERENCE_NUM_THREADS"] = self.threads
        compiled = core.compile_model(model, "CPU", config)
        channels = model.inputs[0].get_partial_shape()[1]
        return compiled, channels.get_length() if channels.is_static else None, compiled.inputs[0].get_any_name()

    def _why_stale(self) -> str | None:
        """Why the loaded model must not serve (None: it may)."""
        has_checkpoint = self.checkpoint is not None and self.checkpoint.is_file()
        recorded = self.source
        if self.on_stale == "torch":
            if not has_checkpoint:
                return f"no checkpoint {self.checkpoint} to check {self.path} against"
            if recorded is None:
                return f"{self.path} does not record the checkpoint it was exported from (re-export it)"
        if not has_checkpoint:
            return None
        if recorded is None:
            logger.warning(
                f"{self.path} does not record the checkpoint it was exported from; re-export to enable the check."
            )
            return None
        return stale_message(self.path, recorded, self.checkpoint)

    def refresh(self) -> str | None:
        """Reload the model and re-check it against the checkpoint if either file changed since the last check.

        Returns:
            Why batches go to PyTorch (``on_stale="torch"``), or None while the exported model serves.

        Raises:
            ValueError: the model is stale and ``on_stale="error"``.
        """
        files = self._files()
        if files == self._seen:
            return self.stale
        with self._lock:
            if files == self._seen:
                return self.stale
            before, quiet = self.stale, False
            try:
                if files[0] is None:
                    raise FileNotFoundError(f"no {self.path} ({_EXPORT_HINT})")
                if self.session is None or files[0] != self._seen[0]:
                    self._load()
                stale = self._why_stale()
            except Exception as error:  # auto: PyTorch until the export is there, readable and matching
                if self.on_stale == "error":
                    raise
                self.session, quiet = None, isinstance(error, FileNotFoundError)  # not exported: nothing wrong
                stale = str(error) if quiet else f"{self.path} could not be read ({error})"
            if stale and self.on_stale == "error":
                raise ValueError(stale)
            self._seen, self.stale = files, stale
            if stale:
                (logger.info if quiet else logger.warning)(f"The PyTorch network runs, not {self.label}: {stale}.")
            elif self.on_stale == "torch" or before:
                logger.info(f"{self.label} runs {self.path} (exported from {self.checkpoint}).")
            return stale

    def __call__(self, inputs: torch.Tensor, network: Any = None, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Logits of the exported model for ``inputs``, with the type, device and metadata of ``inputs``; the
        PyTorch ``network``'s while the model is stale (``on_stale="torch"``), and whenever ``network`` samples
        dropout (Monte-Carlo dropout, :func:`scripts.networks.enable_mc_dropout`): the export, traced in eval mode,
        has no dropout, so every sample would be the same."""
        if network is not None and samples_dropout(network):
            return network(inputs, *args, **kwargs)
        stale = self.refresh()
        session, input_name = self.session, self.input_name  # one consistent pair while another thread refreshes
        if stale is not None or session is None:
            if network is None:
                raise RuntimeError(f"{stale or self.stale}, and no PyTorch network was given to fall back on.")
            return network(inputs, *args, **kwargs)
        array = np.ascontiguousarray(convert_to_numpy(inputs, dtype=np.float32))
        if self.runtime == "openvino":  # an infer request per call (microseconds): one is not safe across threads
            logits = session.create_infer_request().infer({input_name: array})[0]
        else:
            logits = session.run(None, {input_name: array})[0]
        return convert_to_dst_type(torch.from_numpy(logits), inputs, dtype=torch.float32)[0]


#: a runtime (or bf16) is chosen over PyTorch fp32 only when PyTorch fp32 takes at least this many times as long
BACKEND_MIN_GAIN = 1.05
BACKEND_PROBE_REPEATS = 3


class AutoBackend(Inferer):
    """``backend: auto`` on a CPU: the fastest of PyTorch fp32, PyTorch bf16 autocast (where ``amp`` allows it on this
    CPU) and the matching export in each installed runtime (OpenVINO also in bf16 where ``amp`` allows it), timed on
    the first batch.

    Each candidate runs once to warm up, then :data:`BACKEND_PROBE_REPEATS` times in turns; the fastest run of each
    is compared and PyTorch fp32 is left only for a candidate at least :data:`BACKEND_MIN_GAIN` times faster (near a
    tie the exact, always-current network stays). The times and the choice are logged. The choice is measured again
    whenever the set of exports that may serve changes (one exported, retrained, re-exported: each runtime's
    :meth:`OnnxInferer.refresh`), and a stale export never serves. This inferer owns inference precision: PyTorch
    runs under the autocast setting it chose, whatever the caller's, and the output is always float32.

    Args:
        runtimes: runtime name -> :class:`OnnxInferer` (``on_stale="torch"``) on the bundle's export.
        bf16: whether PyTorch bf16 autocast is a candidate.
    """

    owns_precision = True  #: :class:`scripts.engines.Evaluator` leaves ``amp`` to this inferer

    def __init__(self, runtimes: dict[str, OnnxInferer], bf16: bool = False) -> None:
        super().__init__()
        self.runtimes, self.bf16 = dict(runtimes), bool(bf16)
        self.choice = "torch"  #: ``"torch"``, ``"torch-bf16"`` or a runtime name
        self.seconds: dict[str, float] = {}  #: the fastest time of each candidate at the last measurement
        self._measured_for: tuple[str, ...] | None = None
        self._lock = threading.Lock()  # concurrent first requests (the label app's workers) measure once

    def _torch(self, bf16: bool) -> Callable[..., torch.Tensor]:
        def run(inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args, **kwargs) -> torch.Tensor:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                return network(inputs, *args, **kwargs).float()

        return run

    def _serving(self) -> tuple[str, ...]:
        """The runtimes whose export may serve now (each :meth:`OnnxInferer.refresh` re-checks it)."""
        return tuple(name for name, inferer in self.runtimes.items() if inferer.refresh() is None)

    def candidates(self, serving: Sequence[str]) -> dict[str, Callable[..., torch.Tensor]]:
        found = {"torch": self._torch(False)}
        if self.bf16:
            found["torch-bf16"] = self._torch(True)
        found.update({name: self.runtimes[name] for name in serving})
        return found

    def measure(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args, **kwargs) -> str:
        """Time every candidate on ``inputs`` and set :attr:`choice` (and :attr:`seconds`); returns the choice."""
        serving = self._serving()
        found = self.candidates(serving)
        self._measured_for = serving
        if len(found) == 1:
            self.choice, self.seconds = "torch", {}
            return self.choice
        runtimes = [name for name in found if name not in ("torch", "torch-bf16")]
        steps = {name: partial(run, inputs, network, *args, **kwargs) for name, run in found.items()}
        with torch.no_grad():  # a runtime that cannot run this model or input is left out
            self.seconds, failed = time_in_turns(steps, BACKEND_PROBE_REPEATS, optional=runtimes)
        for name, error in failed.items():
            logger.warning(f"backend auto: {name} failed on the first batch, not using it: {error}")
        best = min(self.seconds, key=self.seconds.get)
        self.choice = best if self.seconds["torch"] >= BACKEND_MIN_GAIN * self.seconds[best] else "torch"
        figures = ", ".join(f"{name} {1000 * s:.1f} ms" for name, s in self.seconds.items())
        logger.info(
            f"backend auto: on the first batch {figures}: running {self.choice} (another than PyTorch fp32 needs "
            f"{BACKEND_MIN_GAIN}x; backend torch, onnx or openvino forces one, in bf16 with amp 'bf16')"
        )
        return self.choice

    def __call__(self, inputs: torch.Tensor, network: Any = None, *args: Any, **kwargs: Any) -> torch.Tensor:
        if network is None:
            raise RuntimeError("backend auto needs the PyTorch network to measure against and to fall back on.")
        if samples_dropout(network):  # Monte-Carlo dropout: the network as the caller runs it
            return network(inputs, *args, **kwargs)
        serving = self._serving()
        if serving != self._measured_for:
            with self._lock:
                if serving != self._measured_for:
                    self.measure(inputs, network, *args, **kwargs)
        with self._lock:  # the choice of the measurement just made, or of one another thread finished meanwhile
            choice, serving = self.choice, self._measured_for
        return self.candidates(serving)[choice](inputs, network, *args, **kwargs)


def runtime_installed(runtime: str) -> bool:
    """Whether ``runtime`` (a key of :data:`RUNTIMES`) can be imported here."""
    return _has_ort if runtime == "onnxruntime" else importlib.util.find_spec(runtime) is not None


def _file_state(path: Path | None) -> tuple[int, int, int] | None:
    """What changes when a file is rewritten or replaced (inode, mtime, size); None for no file."""
    if path is None:
        return None
    try:
        state = path.stat()
    except OSError:
        return None
    return state.st_ino, state.st_mtime_ns, state.st_size


def select_base(
    backend: str,
    onnx_file: str | Path,
    checkpoint: str | Path,
    device: torch.device | str = "cpu",
    in_channels: int | None = None,
    threads: int = 0,
    amp: bool | str = False,
) -> Inferer | None:
    """The inference ``backend`` key: the base inferer for :class:`scripts.uncertainty.FlipTTAInferer`.

    * ``torch``: None (the PyTorch network, with ``amp``).
    * ``onnx`` / ``openvino``: :class:`OnnxInferer` on ``onnx_file`` in ONNX Runtime / OpenVINO (in bf16 with
      ``amp: "bf16"``, as PyTorch; ONNX Runtime stays fp32); a missing, mismatched or stale file is an error, also
      when ``checkpoint`` changes while the workflow runs.
    * ``auto``: on CUDA, and with ``amp: "bf16"`` (forced bf16 autocast), PyTorch. On a CPU, :class:`AutoBackend`:
      whichever of PyTorch fp32, PyTorch bf16 and OpenVINO bf16 (both where ``amp`` is true on a CPU with native
      bf16) and the export in each installed runtime ran fastest on the first batch. An export serves only while it is stamped with the sha256
      of ``checkpoint``: before it exists, after a retraining, unstamped, PyTorch runs and the reason is logged; an
      export or re-export is picked up (and measured) without a restart (:meth:`OnnxInferer.refresh`). No fixed
      rule held on the CPUs measured (README, Speed): bf16 was fastest on an AMD EPYC with AVX512-BF16, ONNX
      Runtime on AVX2-only EPYCs, OpenVINO on an Intel Xeon with AVX512-BF16, OpenVINO bf16 on one with AMX.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}.")
    if backend == "torch":
        return None
    if backend != "auto":
        runtime = next(name for name, forced in RUNTIMES.items() if forced == backend)
        precision = "bf16" if runtime == "openvino" and amp == "bf16" else "f32"
        return OnnxInferer(
            onnx_file,
            threads=threads,
            in_channels=in_channels,
            checkpoint=checkpoint,
            runtime=runtime,
            precision=precision,
        )
    if torch.device(device).type != "cpu" or amp == "bf16":  # amp "bf16" forces PyTorch bf16 autocast
        return None
    bf16 = amp_mode(amp, device) == "cpu"
    variants = [(name, "f32") for name in RUNTIMES] + ([("openvino", "bf16")] if bf16 else [])
    common = {"threads": threads, "in_channels": in_channels, "checkpoint": checkpoint, "on_stale": "torch"}
    made = [
        OnnxInferer(onnx_file, runtime=name, precision=p, **common) for name, p in variants if runtime_installed(name)
    ]
    runtimes = {inferer.label: inferer for inferer in made}  # onnxruntime, openvino, openvino-bf16
    missing = [_INSTALL[name] for name in RUNTIMES if name not in runtimes]
    if missing:
        logger.info(f"backend auto: not measuring the runtimes that are not installed ({'; '.join(missing)})")
    return AutoBackend(runtimes, bf16=bf16) if runtimes or bf16 else None


def _cli_value(text: str) -> Any:
    """A ``--key value`` argument as fire (the ``monai.bundle`` CLI) reads it: a Python literal, else the string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m scripts.onnx_inferer [--ckpt_file models/model.pt] [--filepath models/model.onnx] [--key value
    ...]``, run in the bundle folder: :func:`export_onnx` from the command line (what ``scripts/export_bundle.py``
    runs, and what a downloaded bundle re-exports itself with). Extra ``--key value`` pairs are the config values the
    model was trained with (``--network segresnet``). Prints the stamp (the checkpoint's sha256)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m scripts.onnx_inferer", description=main.__doc__)
    parser.add_argument("--ckpt_file", default="models/model.pt", help="the trained checkpoint")
    parser.add_argument("--filepath", default="models/model.onnx", help="the ONNX file to write")
    args, rest = parser.parse_known_args(argv)
    if len(rest) % 2 or not all(k.startswith("--") for k in rest[::2]):
        parser.error(f"config overrides come as --key value pairs; got {' '.join(rest)}")
    overrides = {k[2:]: _cli_value(v) for k, v in zip(rest[::2], rest[1::2], strict=True)}
    if not Path(args.ckpt_file).is_file():
        parser.error(f"{args.ckpt_file} not found: train the bundle first or pass --ckpt_file.")
    print(export_onnx(".", args.ckpt_file, args.filepath, overrides=overrides))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
