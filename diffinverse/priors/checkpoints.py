"""Saving and loading priors; never unpickles anything.

Our format is one ``.safetensors`` file: the prior's ``state_dict`` as tensors and, in the
file's string metadata, a key ``"config"`` holding JSON::

    {"format": "diffinverse-prior", "version": 1, "class": "UNet",
     "kwargs": {...constructor keyword arguments...},
     "channels": 1, "sigma_min": 0.002, "sigma_max": 80.0, "data_range": [-1.0, 1.0],
     "metadata": {...anything JSON-able passed to save()...}}

``"class"`` is looked up in a fixed table (:data:`PRIOR_CLASSES`, extended per call through
``classes=``), never by importing a name found in a file. Shipped priors live in
``diffinverse/weights/<name>.safetensors`` and load by name.

Foreign checkpoints are wrapped into the VE prior interface:

- deepinv ``DiffUNet`` (a local state-dict file, ``.pt``/``.pth`` read with
  ``torch.load(weights_only=True)`` or ``.safetensors``): an eps-predicting DDPM network on
  images in [-1, 1] with deepinv's linear schedule (beta 1e-4 to 0.02, 1000 steps), wrapped
  with :class:`~diffinverse.priors.base.VPDenoiser`; the prior's data range is [-1, 1].
- deepinv ``NCSNpp``: already a VE (EDM-preconditioned) denoiser on [0, 1] images, wrapped
  with :class:`~diffinverse.priors.base.RangeAdapter`; the prior's data range is [0, 1].
- diffusers ``UNet2DModel`` (a local directory written by ``save_pretrained``, weights in
  safetensors): wrapped with ``VPDenoiser`` using the ``alphas_cumprod`` and prediction type of
  the scheduler config found next to it (``scheduler_config.json`` in the directory or in
  ``scheduler/``); without one, the DDPM default (linear beta 1e-4 to 0.02, 1000 steps, eps).
  The prior's data range is [-1, 1] (the diffusers convention).

To use one of these on another intensity range, wrap the result in ``RangeAdapter``.
"""
from __future__ import annotations

import importlib.resources
import json
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from diffinverse._io import atomic_output
from diffinverse.priors.base import Prior, RangeAdapter, VPDenoiser

__all__ = ["PRIOR_CLASSES", "available", "load", "load_deepinv", "load_diffusers", "save"]

FORMAT = "diffinverse-prior"
VERSION = 1


def _unet_class():
    from diffinverse.priors.unet import UNet  # lazy: the module is heavy and optional here

    return UNet


def _latent_class():
    from diffinverse.priors.latent import ConvLatentPrior  # lazy, as the UNet

    return ConvLatentPrior


#: Prior classes our format can rebuild: class name -> zero-argument function returning the class.
PRIOR_CLASSES: dict[str, Callable[[], type]] = {"UNet": _unet_class, "ConvLatentPrior": _latent_class}


def available() -> list[str]:
    """Names of the shipped priors (files ``diffinverse/weights/<name>.safetensors``)."""
    root = importlib.resources.files("diffinverse.weights")
    return sorted(p.name[: -len(".safetensors")] for p in root.iterdir() if p.name.endswith(".safetensors"))


def save(prior: Prior, path: str | Path, *, metadata: Mapping | None = None,
         dtype: torch.dtype | None = None) -> Path:
    """Write ``prior`` in our format (see the module docstring), atomically.

    Args:
        prior: a :class:`Prior` with a ``config`` attribute (its constructor keyword arguments,
            JSON-able) whose class is rebuildable by :func:`load`.
        path: destination file, conventionally ``*.safetensors``.
        metadata: JSON-able extra information (training data, steps, ...) stored alongside.
        dtype: store floating-point tensors in this dtype (e.g. ``torch.float16`` halves a
            shipped file); :func:`load` casts them back to the model's dtype.

    Returns:
        The path written.

    Raises:
        TypeError: if ``prior`` has no ``config`` or it or ``metadata`` is not JSON-able.
    """
    config = getattr(prior, "config", None)
    if not isinstance(config, Mapping):
        raise TypeError(f"save() needs a prior with a dict .config of constructor kwargs; "
                        f"{type(prior).__name__} has {type(config).__name__}")
    header = {"format": FORMAT, "version": VERSION, "class": type(prior).__name__, "kwargs": dict(config),
              "channels": int(prior.channels), "sigma_min": float(prior.sigma_min),
              "sigma_max": float(prior.sigma_max), "data_range": [float(v) for v in prior.data_range],
              "metadata": dict(metadata or {})}
    try:
        text = json.dumps(header)
    except TypeError as e:
        raise TypeError(f"config and metadata must be JSON-able: {e}") from None
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in prior.state_dict().items()}
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    path = Path(path)
    with atomic_output(path, overwrite=True) as tmp:
        save_file(tensors, str(tmp), metadata={"config": text})
    return path


def _resolve(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.exists():
        return path
    if isinstance(name_or_path, str) and path.suffix == "" and len(path.parts) == 1:
        known = available()
        if name_or_path in known:
            return Path(str(importlib.resources.files("diffinverse.weights") / f"{name_or_path}.safetensors"))
        raise ValueError(f"unknown prior name {name_or_path!r}; known names: {', '.join(known) or '(none shipped)'}")
    raise FileNotFoundError(f"prior checkpoint not found: {path}")


def _read_safetensors(path: Path, device: str | torch.device) -> tuple[dict[str, torch.Tensor], dict | None]:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
        tensors = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, RuntimeError) as e:
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None
    return tensors, meta


def _load_state(module: torch.nn.Module, state: Mapping[str, torch.Tensor], path: Path) -> None:
    """``load_state_dict(strict=True)`` with an error that lists what does not match."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
              for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = []
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
            if items:
                more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
                parts.append(f"{label}: {', '.join(items[:5])}{more}")
        raise ValueError(f"{path}: checkpoint does not match {type(module).__name__}; " + "; ".join(parts))
    module.load_state_dict(state, strict=True)


def _check_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device``; a CUDA device this machine lacks is a ``ValueError``.

    Checked before any file is read, so the error names the missing device rather than a
    weights file that safetensors cannot place there.
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"not a torch device: {device!r} ({e})") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {str(device)!r} requested but this machine has no CUDA device "
                             f"(torch.cuda.is_available() is False); load on 'cpu' instead")
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"device {str(device)!r} requested but this machine has {count} CUDA "
                             f"device(s), numbered 0 to {count - 1}")
    return dev


def _check_channels(prior: Prior, channels: int | None, path: Path) -> Prior:
    if channels is not None and prior.channels != channels:
        raise ValueError(f"{path}: the prior has {prior.channels} channel(s), expected {channels}")
    return prior


def load(name_or_path: str | Path, *, device: str | torch.device = "cpu", channels: int | None = None,
         classes: Mapping[str, type] | None = None, architecture: str | None = None,
         config: Mapping | None = None) -> Prior:
    """Load a prior, in eval mode on ``device``.

    Dispatch: a directory with ``vae/`` is a latent diffusion model
    (:func:`~diffinverse.priors.latent.load_latent_diffusers`), any other directory a diffusers
    ``UNet2DModel`` (:func:`load_diffusers`); with
    ``architecture`` a file is a deepinv state dict (:func:`load_deepinv`); otherwise a shipped
    name (see :func:`available`) or a ``.safetensors`` file in our format.

    Args:
        name_or_path: shipped prior name (e.g. ``"ct-ellipses"``), file or directory.
        device: where the weights go.
        channels: if given, the number of image channels the caller needs (checked).
        classes: extra ``{class name: class}`` entries for our format (e.g. a user's own prior
            class with a ``config``), on top of :data:`PRIOR_CLASSES`.
        architecture: ``"DiffUNet"`` or ``"NCSNpp"`` for a deepinv checkpoint.
        config: constructor keyword arguments of that deepinv network.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: a CUDA ``device`` on a machine without one (or without that index), unknown
            name (the known ones are listed), unreadable or corrupt file, unknown class, keys or
            shapes that do not match, wrong channel count.
    """
    _check_device(device)
    path = _resolve(name_or_path)
    if path.is_dir() and (path / "vae" / "config.json").is_file():
        from diffinverse.priors.latent import load_latent_diffusers

        return _check_channels(load_latent_diffusers(path, device=device), channels, path)
    if path.is_dir():
        return _check_channels(load_diffusers(path, device=device), channels, path)
    if architecture is not None:
        return _check_channels(load_deepinv(path, architecture, config=config, device=device), channels, path)
    tensors, meta = _read_safetensors(path, device)
    if not meta or "config" not in meta:
        raise ValueError(f"{path}: no diffinverse config in the safetensors metadata; for a deepinv "
                         f"state dict pass architecture=")
    try:
        header = json.loads(meta["config"])
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: the config metadata is not valid JSON ({e})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError(f"{path}: config is not a {FORMAT!r} header")
    if header.get("version") != VERSION:
        raise ValueError(f"{path}: format version {header.get('version')!r}, this library reads {VERSION}")
    table = {name: make() for name, make in PRIOR_CLASSES.items()} | dict(classes or {})
    cls_name = header.get("class")
    if cls_name not in table:
        raise ValueError(f"{path}: unknown prior class {cls_name!r}; known: {', '.join(sorted(table))}")
    try:
        prior = table[cls_name](**header.get("kwargs", {}))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: cannot build {cls_name} from the stored kwargs ({e})") from None
    _load_state(prior, tensors, path)
    for key in ("channels", "sigma_min", "sigma_max"):
        if key in header and getattr(prior, key) != header[key]:
            raise ValueError(f"{path}: stored {key}={header[key]!r} but the rebuilt prior has {getattr(prior, key)!r}")
    return _check_channels(prior.to(device).eval(), channels, path)


class _DiffUNetNetwork(torch.nn.Module):
    """deepinv ``DiffUNet`` as ``f(x_t, t) -> eps`` (its padded forward, timestep mode)."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(x_t, t, type_t="timestep")


class _DiffusersNetwork(torch.nn.Module):
    """diffusers ``UNet2DModel`` as ``f(x_t, t) -> prediction``."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(x_t, t).sample


def _deepinv_classes() -> dict[str, type]:
    from deepinv.models import DiffUNet, NCSNpp

    return {"DiffUNet": DiffUNet, "NCSNpp": NCSNpp}


def load_deepinv(path: str | Path, architecture: str, *, config: Mapping | None = None,
                 device: str | torch.device = "cpu") -> Prior:
    """A deepinv ``DiffUNet`` or ``NCSNpp`` from a local state-dict file, as a prior.

    Args:
        path: ``.safetensors``, or a ``torch.save``'d state dict read with ``weights_only=True``.
        architecture: ``"DiffUNet"`` or ``"NCSNpp"``.
        config: constructor keyword arguments (``pretrained`` is always ``None``: no download).
        device: where the weights go.

    Returns:
        ``VPDenoiser`` (DiffUNet, data range [-1, 1]) or ``RangeAdapter`` (NCSNpp, [0, 1]).
    """
    path = Path(path)
    known = _deepinv_classes()
    if architecture not in known:
        raise ValueError(f"unknown deepinv architecture {architecture!r}; known: {', '.join(sorted(known))}")
    if not path.is_file():
        raise FileNotFoundError(f"deepinv checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        state, _ = _read_safetensors(path, "cpu")
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise ValueError(f"{path}: refused to load, not a weights-only checkpoint ({e})") from None
        except (RuntimeError, EOFError, OSError) as e:
            raise ValueError(f"{path}: not a readable torch checkpoint ({e})") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict (name -> tensor), got {type(state).__name__}")
    kwargs = {"in_channels": 3, "out_channels": 3, **dict(config or {}), "pretrained": None}
    try:
        net = known[architecture](**kwargs)
    except TypeError as e:
        raise ValueError(f"{path}: cannot build {architecture} from config ({e})") from None
    _load_state(net, state, path)
    net = net.to(device).eval()
    channels = int(kwargs["in_channels"])
    if architecture == "DiffUNet":
        abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
        prior = VPDenoiser(_DiffUNetNetwork(net), abar, prediction="eps", channels=channels, data_range=(-1.0, 1.0))
    else:
        prior = RangeAdapter(net, data_range=(0.0, 1.0), channels=channels)
    return prior.to(device).eval()


_PREDICTIONS = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}


def load_diffusers(directory: str | Path, *, device: str | torch.device = "cpu") -> VPDenoiser:
    """A diffusers ``UNet2DModel`` directory (or pipeline directory with ``unet/``) as a prior.

    Only safetensors weights are read (``use_safetensors=True``) and nothing is downloaded
    (``local_files_only=True``). The schedule and prediction type come from
    ``scheduler_config.json`` (in ``directory`` or ``directory/scheduler``) when present.
    """
    from diffusers import DDPMScheduler, UNet2DModel

    directory = Path(directory)
    unet_dir = directory / "unet" if (directory / "unet" / "config.json").is_file() else directory
    if not (unet_dir / "config.json").is_file():
        raise FileNotFoundError(f"{directory}: no config.json of a diffusers UNet2DModel")
    try:
        unet = UNet2DModel.from_pretrained(str(unet_dir), local_files_only=True, use_safetensors=True)
    except (OSError, ValueError) as e:
        raise ValueError(f"{unet_dir}: cannot load a UNet2DModel ({e})") from None
    sched_file = next((p for p in (directory / "scheduler_config.json", directory / "scheduler" / "scheduler_config.json")
                       if p.is_file()), None)
    if sched_file is None:
        scheduler = DDPMScheduler()
    else:
        try:
            scheduler = DDPMScheduler.from_config(json.loads(sched_file.read_text()))
        except (json.JSONDecodeError, ValueError, NotImplementedError) as e:
            raise ValueError(f"{sched_file}: unusable scheduler config ({e})") from None
    kind = scheduler.config.prediction_type
    if kind not in _PREDICTIONS:
        raise ValueError(f"{sched_file}: unsupported prediction_type {kind!r}; known: {', '.join(_PREDICTIONS)}")
    channels = int(unet.config.in_channels)
    if unet.config.out_channels not in (channels, 2 * channels):
        raise ValueError(f"{unet_dir}: out_channels={unet.config.out_channels} must be in_channels={channels} "
                         f"or twice that (learned variance)")
    prior = VPDenoiser(_DiffusersNetwork(unet), scheduler.alphas_cumprod.to(torch.float64),
                       prediction=_PREDICTIONS[kind], channels=channels, data_range=(-1.0, 1.0))
    return prior.to(device).eval()
