"""fastMRI HDF5 files: a lazy reader, the submission-layout writer, and a centre crop.

A fastMRI file holds

- ``kspace``: ``(S, H, W)`` (single-coil) or ``(S, C, H, W)`` (multi-coil) complex64, ``H`` the
  readout (frequency-encode, usually 2x oversampled, e.g. 640) and ``W`` the phase-encode lines;
- optionally ``mask``: ``(W,)`` sampled phase-encode lines (test/challenge files, whose
  ``kspace`` is already undersampled);
- optionally ``reconstruction_rss`` / ``reconstruction_esc``: ``(S, h, w)`` float32 magnitude
  targets, centre-cropped to the reconstruction matrix (usually 320 x 320);
- ``ismrmrd_header``: ISMRMRD XML whose ``encoding/reconSpace/matrixSize`` gives ``(x, y) = (h, w)``;
- attributes such as ``acquisition``, ``max``, ``norm``, ``patient_id``.

:class:`FastMRIFile` opens a file, validates its layout at once (so a bad file fails before any
work is done) and reads k-space slice by slice. Errors are :class:`FastMRIError` (a
``ValueError``) whose message starts with the file's path. :func:`write_submission` writes the
fastMRI submission layout atomically: a temporary file in the destination's directory, then
``os.replace``, so a reader never sees a partial file.

References:
    Zbontar et al., "fastMRI: An Open Dataset and Benchmarks for Accelerated MRI", 2018
    (``fastmri/data/mri_data.py``, ``fastmri/utils.py:save_reconstructions``).
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path

import h5py
import numpy as np
import torch

from diffinverse._io import atomic_output

__all__ = ["FastMRIError", "FastMRIFile", "TARGET_KEYS", "DEFAULT_RECON_SIZE", "atomic_output",
           "center_crop", "ismrmrd_header", "read_mask", "write_fastmri_file", "write_submission"]

TARGET_KEYS = ("reconstruction_rss", "reconstruction_esc")
DEFAULT_RECON_SIZE = (320, 320)
_NS = "http://www.ismrm.org/ISMRMRD"


class FastMRIError(ValueError):
    """A fastMRI file that cannot be used; the message names the file and the problem."""


def center_crop(x, shape: tuple[int, int]):
    """Centre crop of the last two dimensions, fastMRI's convention (``from = (n - m) // 2``).

    Args:
        x: numpy array or torch tensor ``(..., H, W)``.
        shape: ``(h, w)`` with ``h <= H`` and ``w <= W``.

    Returns:
        ``x[..., (H - h) // 2 : (H - h) // 2 + h, (W - w) // 2 : (W - w) // 2 + w]`` (a view).
    """
    h, w = int(shape[0]), int(shape[1])
    H, W = x.shape[-2], x.shape[-1]
    if not (0 < h <= H and 0 < w <= W):
        raise ValueError(f"crop size {(h, w)} must be positive and fit inside the image {(H, W)}")
    top, left = (H - h) // 2, (W - w) // 2
    return x[..., top:top + h, left:left + w]


def _find(root: ET.Element, path: list[str]) -> ET.Element | None:
    # '{*}' matches the ISMRMRD namespace and also headers written without one
    return root.find("/".join("{*}" + p for p in path))


def _parse_header(raw, path: Path) -> dict:
    if isinstance(raw, np.ndarray):
        raw = raw.item() if raw.ndim == 0 else raw.tobytes()
    try:
        root = ET.fromstring(raw)
    except ET.ParseError as err:
        raise FastMRIError(f"{path}: ismrmrd_header is not valid XML ({err})") from None
    out = {}
    for key, space in (("encoding_size", "encodedSpace"), ("recon_size", "reconSpace")):
        x, y = (_find(root, ["encoding", space, "matrixSize", a]) for a in ("x", "y"))
        if x is not None and y is not None:
            out[key] = (int(x.text), int(y.text))
        fov = [_find(root, ["encoding", space, "fieldOfView_mm", a]) for a in ("x", "y", "z")]
        if key == "recon_size" and all(f is not None for f in fov):
            out["recon_fov_mm"] = tuple(float(f.text) for f in fov)
    return out


class FastMRIFile:
    """A fastMRI HDF5 file, validated on opening and read lazily, slice by slice.

    Args:
        path: the ``.h5`` file.

    Attributes:
        path: the file's path.
        multicoil: whether ``kspace`` is ``(S, C, H, W)``.
        num_slices, num_coils: ``S`` and ``C`` (1 for single-coil).
        shape: ``(H, W)`` of one k-space slice.
        mask: ``(W,)`` float32 0/1 array of acquired lines, or ``None`` (fully sampled file).
        targets: names of the reference reconstructions present (subset of :data:`TARGET_KEYS`).
        target_shapes: ``{name: (h, w)}`` of each target's slices.
        recon_size: ``(h, w)`` reconstruction matrix, from ``ismrmrd_header``
            (``reconSpace/matrixSize``), else :data:`DEFAULT_RECON_SIZE`, limited to ``(H, W)``.
        encoding_size: ``(H, W)`` from the header (``encodedSpace``), else ``shape``.
        voxel_size_mm: ``(dx, dy, dz)`` of the reconstruction from the header's field of view, or
            ``None`` when the header does not state it.
        attrs: the file's attributes (``acquisition``, ``max``, ``norm``, ...) as Python values.

    Raises:
        FileNotFoundError: the file does not exist.
        FastMRIError: not HDF5; no ``kspace``, or a ``kspace`` that is a group; ``kspace`` of the
            wrong rank or not complex; a ``mask`` whose width differs from ``W``; a target of the
            wrong rank or slice count, or holding NaN/Inf or no positive value (checked on
            opening, slice by slice); a malformed header.

    Example:
        >>> with FastMRIFile("file1000001.h5") as f:
        ...     k = f.read_kspace(slice(0, 2))     # (2, C, H, W) complex64
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such file")
        if not h5py.is_hdf5(self.path):
            raise FastMRIError(f"{self.path}: not an HDF5 file")
        try:
            self._h5 = h5py.File(self.path, "r")
        except OSError as err:
            raise FastMRIError(f"{self.path}: cannot be opened as HDF5 ({err})") from None
        try:
            self._validate()
        except BaseException:
            self._h5.close()
            raise

    def _validate(self) -> None:
        p, h5 = self.path, self._h5
        if "kspace" not in h5:
            raise FastMRIError(f"{p}: no 'kspace' dataset (found: {sorted(h5.keys())})")
        if not isinstance(h5["kspace"], h5py.Dataset):
            kind = "an HDF5 group" if isinstance(h5["kspace"], h5py.Group) else type(h5["kspace"]).__name__
            raise FastMRIError(f"{p}: 'kspace' is {kind}, not a dataset (fastMRI files store k-space as "
                               f"one (slices, [coils,] H, W) complex array)")
        ks = h5["kspace"]
        if ks.ndim not in (3, 4):
            raise FastMRIError(f"{p}: 'kspace' must be (slices, H, W) or (slices, coils, H, W), got shape {ks.shape}")
        if not np.issubdtype(ks.dtype, np.complexfloating):
            raise FastMRIError(f"{p}: 'kspace' must be complex, got dtype {ks.dtype}")
        if min(ks.shape) == 0:
            raise FastMRIError(f"{p}: 'kspace' is empty, shape {ks.shape}")
        self._kspace = ks
        self.multicoil = ks.ndim == 4
        self.num_slices = ks.shape[0]
        self.num_coils = ks.shape[1] if self.multicoil else 1
        self.shape = (ks.shape[-2], ks.shape[-1])

        self.mask = None
        if "mask" in h5:
            m = np.asarray(h5["mask"][()]).astype(np.float32)
            if m.ndim != 1 or m.shape[0] != self.shape[1]:
                raise FastMRIError(f"{p}: 'mask' must have shape ({self.shape[1]},) to match the k-space width "
                                   f"{self.shape[1]}, got shape {m.shape}")
            if not np.isin(m, (0.0, 1.0)).all() or m.sum() == 0:
                raise FastMRIError(f"{p}: 'mask' must hold 0/1 values with at least one acquired line")
            self.mask = m

        self.targets, self.target_shapes = [], {}
        for key in TARGET_KEYS:
            if key in h5:
                t = h5[key]
                if not isinstance(t, h5py.Dataset):
                    raise FastMRIError(f"{p}: '{key}' is an HDF5 group, not a dataset")
                if t.ndim != 3 or t.shape[0] != self.num_slices:
                    raise FastMRIError(f"{p}: '{key}' must be ({self.num_slices}, h, w), got shape {t.shape}")
                _check_target(t, key, p)
                self.targets.append(key)
                self.target_shapes[key] = tuple(t.shape[1:])

        header = _parse_header(h5["ismrmrd_header"][()], p) if "ismrmrd_header" in h5 else {}
        self.encoding_size = header.get("encoding_size", self.shape)
        recon = header.get("recon_size", DEFAULT_RECON_SIZE)
        self.recon_size = (min(recon[0], self.shape[0]), min(recon[1], self.shape[1]))
        fov = header.get("recon_fov_mm")
        rs = header.get("recon_size")
        self.voxel_size_mm = (fov[0] / rs[0], fov[1] / rs[1], fov[2]) if fov and rs and min(rs) > 0 else None
        self.attrs = {k: (v.decode() if isinstance(v, bytes) else v.item() if isinstance(v, np.generic) else v)
                      for k, v in h5.attrs.items()}

    def read_kspace(self, index: int | slice) -> np.ndarray:
        """Read k-space slices.

        Args:
            index: a slice number or a Python ``slice`` of slice numbers.

        Returns:
            complex64 ``([n,] [C,] H, W)`` (the file's layout; the slice axis only for a ``slice``).

        Raises:
            FastMRIError: if the data hold NaN or Inf.
        """
        k = np.asarray(self._kspace[index]).astype(np.complex64, copy=False)
        if not np.isfinite(k).all():
            raise FastMRIError(f"{self.path}: 'kspace' holds NaN or Inf values (slices {_describe(index, self.num_slices)})")
        return k

    def zero_slices(self, index: slice = slice(None)) -> list[int]:
        """Numbers of the slices in ``index`` whose k-space is all zero (read one slice at a time)."""
        return [i for i in range(*index.indices(self.num_slices)) if not np.any(self._kspace[i])]

    def read_target(self, key: str, index: int | slice = slice(None)) -> np.ndarray:
        """Read a reference reconstruction (``'reconstruction_rss'`` or ``'reconstruction_esc'``).

        Returns:
            float32 ``([n,] h, w)``.
        """
        if key not in self.targets:
            raise FastMRIError(f"{self.path}: no '{key}' dataset (targets present: {self.targets})")
        return np.asarray(self._h5[key][index], dtype=np.float32)

    def close(self) -> None:
        """Close the underlying HDF5 file."""
        self._h5.close()

    def __enter__(self) -> FastMRIFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        kind = f"{self.num_coils}-coil" if self.multicoil else "single-coil"
        return (f"FastMRIFile('{self.path}', {kind}, {self.num_slices} slices of {self.shape}, "
                f"recon {self.recon_size}, mask={'yes' if self.mask is not None else 'no'}, targets={self.targets})")


def _check_target(t: h5py.Dataset, key: str, path: Path) -> None:
    """A reference volume must be finite with a positive maximum (its data range), slice by slice."""
    peak = -np.inf
    for i in range(t.shape[0]):
        s = np.asarray(t[i])
        if not np.isfinite(s).all():
            raise FastMRIError(f"{path}: '{key}' holds NaN or Inf values (slice {i}); it cannot serve as a reference")
        peak = max(peak, float(s.max()) if s.size else -np.inf)
    if not peak > 0:
        raise FastMRIError(f"{path}: '{key}' has no positive value (maximum {peak}); it cannot serve as a reference")


def _describe(index: int | slice, n: int) -> str:
    if isinstance(index, slice):
        start, stop, _ = index.indices(n)
        return f"{start}:{stop}"
    return str(index)


def _as_numpy(a) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """The ``mask`` dataset of an HDF5 file (a :func:`write_submission` output or a fastMRI file).

    A file with one row of lines per slice (its ``mask_layout`` attribute is ``"slices"``, as
    ``diffinverse-reconstruct --sampler ads`` writes it) gives its row if it has one slice.

    Returns:
        float32 0/1 array, ``(W,)`` (phase-encode lines, fastMRI's layout) or ``(h, W)``.

    Raises:
        FileNotFoundError: no such file.
        FastMRIError: not HDF5; no ``mask`` dataset (the datasets present are listed), or a
            group of that name; a mask that is not 1-D or 2-D, holds values other than 0 and 1,
            or samples nothing; one row per slice for more than one slice.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if not h5py.is_hdf5(path):
        raise FastMRIError(f"{path}: not an HDF5 file")
    with h5py.File(path, "r") as f:
        if "mask" not in f:
            raise FastMRIError(f"{path}: no 'mask' dataset (found: {sorted(f.keys())})")
        if not isinstance(f["mask"], h5py.Dataset):
            raise FastMRIError(f"{path}: 'mask' is an HDF5 group, not a dataset")
        m = np.asarray(f["mask"][()])
        if f.attrs.get("mask_layout") == "slices":
            if m.ndim != 2 or m.shape[0] != 1:
                raise FastMRIError(f"{path}: 'mask' holds one row of lines per slice (chosen by --sampler ads) for "
                                   f"{m.shape[0] if m.ndim else 0} slices, not one mask for all slices")
            m = m[0]
    if m.ndim not in (1, 2) or m.size == 0:
        raise FastMRIError(f"{path}: 'mask' must be (W,) lines or an (h, W) array, got shape {m.shape}")
    if not (np.issubdtype(m.dtype, np.number) or m.dtype == bool) or not np.isin(m, (0, 1)).all():
        raise FastMRIError(f"{path}: 'mask' must hold only 0 and 1 (a binary sampling mask)")
    if not m.any():
        raise FastMRIError(f"{path}: 'mask' samples nothing (all zero)")
    return m.astype(np.float32)


def write_submission(path: str | os.PathLike, reconstruction, *, std=None, mask=None,
                     attrs: Mapping | None = None, extra: Mapping | None = None, overwrite: bool = False) -> Path:
    """Write reconstructions in fastMRI's submission layout, atomically.

    Args:
        path: the output ``.h5``.
        reconstruction: ``(S, h, w)`` real magnitude volume (numpy or torch), already centre-cropped.
        std: optional ``(S, h, w)`` per-pixel posterior standard deviation, stored as ``std``.
        mask: optional sampling mask, stored as ``mask`` (bool) as fastMRI's challenge files store
            it: ``(W,)`` phase-encode lines (pass a line mask's columns), or ``(h, W)`` for a 2-D
            mask. :class:`FastMRIFile` and ``diffinverse-reconstruct --mask-file`` read it back.
        attrs: optional file attributes (strings, numbers; e.g. the sampler's settings).
        extra: optional further datasets, ``{name: array}``, stored as given (e.g. ``order``, the
            lines ADS acquired); a name of the datasets above is refused.
        overwrite: replace an existing file.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    rec = _as_numpy(reconstruction)
    if np.iscomplexobj(rec) or rec.ndim != 3:
        raise ValueError(f"reconstruction must be a real (S, h, w) volume, got {rec.dtype} {rec.shape}")
    arrays = {"reconstruction": rec.astype(np.float32)}
    if std is not None:
        s = _as_numpy(std)
        if s.shape != rec.shape:
            raise ValueError(f"std must have the reconstruction's shape {rec.shape}, got {s.shape}")
        arrays["std"] = s.astype(np.float32)
    if mask is not None:
        m = _as_numpy(mask)
        if m.ndim not in (1, 2) or not np.isin(m, (0, 1)).all():
            raise ValueError(f"mask must be a 0/1 array of shape (W,) or (h, W), got {m.dtype} {m.shape}")
        arrays["mask"] = m.astype(bool)
    for key, value in (extra or {}).items():
        if key in ("reconstruction", "std", "mask"):
            raise ValueError(f"extra dataset {key!r} would replace the {key!r} argument's dataset")
        arrays[key] = _as_numpy(value)
    with atomic_output(path, overwrite=overwrite) as tmp:
        with h5py.File(tmp, "w") as f:
            for key, value in arrays.items():
                f.create_dataset(key, data=value)
            for key, value in (attrs or {}).items():
                f.attrs[key] = value
    return Path(path)


def ismrmrd_header(encoding_size: tuple[int, int], recon_size: tuple[int, int], *,
                   fov_mm: tuple[float, float, float] | None = None) -> bytes:
    """A minimal ISMRMRD XML header with the fields fastMRI's loaders read.

    Args:
        encoding_size: ``(H, W)`` of the k-space (``encodedSpace/matrixSize`` x, y).
        recon_size: ``(h, w)`` of the reconstruction (``reconSpace/matrixSize`` x, y).
        fov_mm: reconstruction field of view ``(x, y, slice thickness)`` in mm; default 1 mm
            pixels and slices.

    Returns:
        UTF-8 XML bytes.
    """
    fov = fov_mm or (float(recon_size[0]), float(recon_size[1]), 1.0)
    enc_fov = (fov[0] * encoding_size[0] / recon_size[0], fov[1] * encoding_size[1] / recon_size[1], fov[2])

    def space(name, size, f):
        return (f"<{name}><matrixSize><x>{size[0]}</x><y>{size[1]}</y><z>1</z></matrixSize>"
                f"<fieldOfView_mm><x>{f[0]:g}</x><y>{f[1]:g}</y><z>{f[2]:g}</z></fieldOfView_mm></{name}>")

    w = encoding_size[1]
    return (f'<?xml version="1.0" encoding="utf-8"?>\n<ismrmrdHeader xmlns="{_NS}"><encoding>'
            + space("encodedSpace", encoding_size, enc_fov) + space("reconSpace", recon_size, fov)
            + f"<encodingLimits><kspace_encoding_step_1><minimum>0</minimum><maximum>{w - 1}</maximum>"
            f"<center>{w // 2}</center></kspace_encoding_step_1></encodingLimits>"
            "</encoding></ismrmrdHeader>").encode()


def write_fastmri_file(path: str | os.PathLike, kspace, *, mask=None, targets: Mapping | None = None,
                       recon_size: tuple[int, int] = DEFAULT_RECON_SIZE,
                       fov_mm: tuple[float, float, float] | None = None,
                       attrs: Mapping | None = None, overwrite: bool = False) -> Path:
    """Write a file in fastMRI's layout (for demos, tests and simulated data), atomically.

    Args:
        path: the output ``.h5``.
        kspace: complex ``(S, H, W)`` or ``(S, C, H, W)``, stored as complex64.
        mask: optional ``(W,)`` 0/1 lines; stored as ``mask`` (then ``kspace`` should be undersampled).
        targets: optional ``{"reconstruction_rss": (S, h, w), ...}`` float magnitude volumes.
        recon_size: ``(h, w)`` written to the header.
        fov_mm: header field of view, see :func:`ismrmrd_header`.
        attrs: file attributes; ``max`` and ``norm`` of the first target are added when absent.
        overwrite: replace an existing file.
    """
    k = _as_numpy(kspace).astype(np.complex64)
    if k.ndim not in (3, 4):
        raise ValueError(f"kspace must be (S, H, W) or (S, C, H, W), got shape {k.shape}")
    attrs = dict(attrs or {})
    with atomic_output(path, overwrite=overwrite) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("kspace", data=k)
            if mask is not None:
                f.create_dataset("mask", data=_as_numpy(mask).astype(bool))
            for i, (key, value) in enumerate((targets or {}).items()):
                t = _as_numpy(value).astype(np.float32)
                f.create_dataset(key, data=t)
                if i == 0:
                    attrs.setdefault("max", float(t.max()))
                    attrs.setdefault("norm", float(np.linalg.norm(t)))
            f.create_dataset("ismrmrd_header", data=ismrmrd_header(k.shape[-2:], recon_size, fov_mm=fov_mm))
            for key, value in attrs.items():
                f.attrs[key] = value
    return Path(path)
