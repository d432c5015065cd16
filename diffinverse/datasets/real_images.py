"""Real images for training and evaluating priors: JPEG, DICOM, NIfTI and MATLAB files, split by patient.

One reader per format turns a file into 2-D float32 images in the file's own units:

- :func:`read_jpeg` (Pillow): 8-bit greyscale in ``[0, 1]``, optionally downsampled (``scale``, area
  averaging) and blurred (Gaussian, ``blur`` pixels), against the blocking of JPEG at quality ~75;
- :func:`read_dicom` (pydicom): every frame, with the modality LUT (rescale slope/intercept, so CT
  is in Hounsfield units), ``MONOCHROME1`` inverted; compressed transfer syntaxes are decoded by
  whichever pydicom plugin is installed, and :func:`dicom_decodable` says beforehand whether one is;
- :func:`read_nifti_slices` (nibabel): the 2-D slices of a volume along one voxel axis;
- :func:`read_mat` (``scipy.io.loadmat``, MATLAB v4-v7.2; nothing is unpickled): one array, by key or
  the only numeric array with two or three dimensions; complex arrays keep their phase.

:class:`RealImages` indexes a folder (or one file) of any mix of these formats without reading the
pixels (headers only; NIfTI volumes and ``.mat`` files are read once, to drop empty slices and to
count images) and reads an image when it is asked for, keeping the last few files in a small cache.
Each image belongs to a patient, and a deterministic split by patient gives disjoint ``"train"`` and
``"heldout"`` parts:

- files whose stem is an integer (the figshare brain-tumour JPEGs ``1.jpg`` ... ``3064.jpg``, whose
  patient is not recorded but whose numbering runs patient by patient) are cut into blocks of 100
  consecutive numbers; block ``b = (number - 1) // 100`` is held out when ``b % m == (m - 1) // 2``
  with ``m = round(1 / heldout_fraction)`` (for 0.1: numbers 401-500, 1401-1500, 2401-2500, which
  cover the three tumour classes), and the 16 numbers on either side of a held-out block belong to
  neither part, so that a patient cut by a block boundary is not on both sides;
- other files are grouped by patient: the DICOM ``PatientID`` (else the file's folder), else an IXI
  (``IXI012``) or TCGA (``TCGA-FG-6692``) subject found in the file name, else the file itself. A
  patient is held out when the first 8 bytes of the SHA-256 of its key, read as a fraction of
  ``2**64``, are below ``heldout_fraction`` (stable when files are added); where that holds out none
  of two or more patients, the one with the smallest hash is held out. A single patient is never
  held out. Keys of files without a recorded patient are paths relative to the indexed folder, so
  the split is defined per folder: evaluate on the folder that was given to training.

Intensities follow the priors' convention (:func:`diffinverse.imaging.to_prior_range`): every whole
image is scaled so that its magnitude's 99.5th percentile is 1, after CT values in Hounsfield
units are turned into attenuation relative to air (``max(HU + 1000, 0)``) where ``ct=True``.

:class:`RealImageCrops` is a training data source (``sample(n, *, generator)``) on top: random image,
for MRI (``complex=True``) a smooth random phase as in the ``mri-brain`` data
(:func:`diffinverse.datasets.brain.smooth_random_phase`) unless the file held complex values, the
prior-range scaling, a random crop and flips, optionally white noise.

References:
    Cheng et al., "Enhanced Performance of Brain Tumor Classification via Tumor Region Augmentation
    and Partition", PLoS ONE 2015 (the figshare set's numbering). DICOM PS3.3 C.7.6.3 (image pixel
    module), C.11.1 (modality LUT). NIfTI-1 format.
"""
from __future__ import annotations

import functools
import hashlib
import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from diffinverse.imaging import to_prior_range

__all__ = [
    "DICOM_SUFFIXES",
    "JPEG_SUFFIXES",
    "MAT_SUFFIXES",
    "ImageRef",
    "RealImageCrops",
    "RealImages",
    "dicom_decodable",
    "patient_key",
    "read_dicom",
    "read_jpeg",
    "read_mat",
    "read_nifti_slices",
    "split_of",
]

JPEG_SUFFIXES = (".jpg", ".jpeg", ".png")
DICOM_SUFFIXES = (".dcm", ".dicom")
MAT_SUFFIXES = (".mat",)
_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_BLOCK, _GUARD = 100, 16
_PATIENT_PATTERN = re.compile(r"(IXI\d{3}|TCGA-[A-Za-z0-9]{2}-[A-Za-z0-9]{4})")
_SPLITS = ("train", "heldout", "all")


@dataclass(frozen=True)
class ImageRef:
    """One 2-D image: its file, the frame or slice in it, its format and its patient key."""

    path: Path
    index: int
    format: str
    patient: str


# ----------------------------------------------------------------------------- readers


def read_jpeg(path: str | os.PathLike, *, scale: int = 1, blur: float = 0.0) -> torch.Tensor:
    """Read an 8-bit image file (JPEG or PNG) as greyscale.

    Args:
        path: the file.
        scale: integer downsampling factor (area average over ``scale x scale`` blocks; 2 halves a
            512 x 512 JPEG, so its 8 x 8 coding blocks become 4 x 4 pixels and their edges are averaged).
        blur: standard deviation (pixels, after downsampling) of a Gaussian blur; 0: none.

    Returns:
        float32 ``(H // scale, W // scale)`` in ``[0, 1]``.

    Raises:
        ValueError: naming the file, if Pillow cannot decode it or the arguments are invalid.
    """
    from PIL import Image, UnidentifiedImageError

    if scale < 1 or blur < 0:
        raise ValueError(f"scale must be >= 1 and blur >= 0, got {scale}, {blur}")
    p = Path(path)
    try:
        with Image.open(p) as im:
            a = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"{p}: not a readable image file ({err})") from None
    x = torch.from_numpy(np.ascontiguousarray(a))
    if scale > 1:
        x = F.avg_pool2d(x[None, None], scale)[0, 0]
    if blur > 0:
        x = _gaussian_blur(x, blur)
    return x


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(H, W)`` with reflected borders."""
    r = max(1, math.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    k = torch.exp(-t**2 / (2 * sigma**2))
    k = k / k.sum()
    y = F.pad(x[None, None], (r, r, r, r), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, -1))
    return F.conv2d(y, k.view(1, 1, -1, 1))[0, 0]


def _pydicom():
    try:
        import pydicom
    except ImportError as err:
        raise ImportError("reading DICOM files needs pydicom (pip install pydicom)") from err
    return pydicom


def _dcmread(path: Path, **kwargs):
    pydicom = _pydicom()
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, **kwargs)
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a readable DICOM file ({type(err).__name__}: {err})") from None


def dicom_decodable(path: str | os.PathLike) -> tuple[bool, str]:
    """Whether the installed pydicom plugins can decode a DICOM file's pixels (reads the header only).

    Returns:
        ``(ok, reason)``; ``reason`` names the transfer syntax and what would decode it when not ok.

    Raises:
        ValueError: naming the file, if it is not a readable DICOM file or has no pixel data.
    """
    p = Path(path)
    return _decodable(_dcmread(p, stop_before_pixels=True), p)


def _decodable(ds, p: Path) -> tuple[bool, str]:
    if "Rows" not in ds or "Columns" not in ds:
        raise ValueError(f"{p}: a DICOM file without an image (no Rows/Columns)")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        return False, f"{int(ds.SamplesPerPixel)} samples per pixel (colour); only greyscale is read"
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        from pydicom.pixels import get_decoder  # pydicom >= 3
    except ImportError:  # pydicom 2 cannot tell beforehand: reading will say
        return True, ""
    if ts is None:
        return True, ""
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        return False, f"no pydicom decoder for transfer syntax {ts.name} ({ts})"
    if not decoder.is_available:
        missing = "; ".join(getattr(decoder, "missing_dependencies", [])) or "a pydicom pixel-data plugin"
        return False, f"no installed plugin decodes transfer syntax {ts.name} ({missing})"
    return True, ""


def read_dicom(path: str | os.PathLike) -> torch.Tensor:
    """Read every frame of a greyscale DICOM image in modality units.

    The modality LUT is applied (``RescaleSlope``/``RescaleIntercept``, so CT is in Hounsfield
    units); ``MONOCHROME1`` images (low values bright) are inverted to ``max - x``.

    Args:
        path: the file.

    Returns:
        float32 ``(F, H, W)`` (``F = 1`` for single-frame files).

    Raises:
        ValueError: naming the file, if it is not a readable DICOM image or its pixels cannot be decoded
            (the message names the transfer syntax).
    """
    _pydicom()
    try:
        from pydicom.pixels import apply_modality_lut  # pydicom >= 3
    except ImportError:
        from pydicom.pixel_data_handlers.util import apply_modality_lut

    p = Path(path)
    ds = _dcmread(p)
    try:
        a = ds.pixel_array
    except Exception as err:  # noqa: BLE001 -- pydicom raises RuntimeError/ValueError/AttributeError by plugin and defect
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        raise ValueError(f"{p}: cannot decode the pixel data (transfer syntax {getattr(ts, 'name', ts)}): "
                         f"{str(err).splitlines()[0]}") from None
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise ValueError(f"{p}: {int(ds.SamplesPerPixel)} samples per pixel; only greyscale images are read")
    a = np.asarray(apply_modality_lut(a, ds), dtype=np.float32)
    if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        a = a.max() - a
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    a = a.reshape(frames, *a.shape[-2:])
    if not np.isfinite(a).all():
        raise ValueError(f"{p}: the pixel data hold NaN or Inf values")
    return torch.from_numpy(np.ascontiguousarray(a))


def read_nifti_slices(path: str | os.PathLike, *, axis: int = 2) -> torch.Tensor:
    """All 2-D slices of a NIfTI volume along one voxel axis (see :mod:`diffinverse.datasets.volumes`).

    Args:
        path: a ``.nii`` or ``.nii.gz`` file (3-D, or 4-D: its first volume).
        axis: voxel axis to slice along (0, 1 or 2), in the file's voxel order.

    Returns:
        float32 ``(S, H, W)``, slice ``s`` being ``volume.select(axis, s)``.

    Raises:
        ValueError: naming the file, if nibabel cannot read it or it is not 3-D/4-D.
    """
    from diffinverse.datasets.volumes import read_nifti

    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
    p = Path(path)
    try:
        vol, _ = read_nifti(p)
    except Exception as err:  # noqa: BLE001 -- nibabel, gzip and numpy raise many types for damaged files
        raise ValueError(f"{p}: not a readable NIfTI volume ({type(err).__name__}: {err})") from None
    if not torch.isfinite(vol).all():
        raise ValueError(f"{p}: the volume holds NaN or Inf values")
    return vol.movedim(axis, 0).contiguous()


def _mat_candidates(m: dict) -> list[str]:
    return [k for k, v in m.items() if not k.startswith("__") and isinstance(v, np.ndarray)
            and v.ndim in (2, 3) and np.issubdtype(v.dtype, np.number) and v.dtype != np.bool_ and min(v.shape) > 1]


def read_mat(path: str | os.PathLike, *, key: str | None = None, axis: int = 2) -> torch.Tensor:
    """Read one image array from a MATLAB ``.mat`` file (v4 to v7.2, via ``scipy.io.loadmat``).

    Args:
        path: the file.
        key: the variable; ``None`` picks the only numeric variable with 2 or 3 dimensions.
        axis: for a 3-D array, the axis that indexes its images.

    Returns:
        float32 ``(N, H, W)`` for real arrays, or ``(N, 2, H, W)`` (real, imaginary) for complex ones.

    Raises:
        ValueError: naming the file: unreadable, MATLAB v7.3 (HDF5), no such key, or no / several
            candidate arrays without ``key`` (the message lists them).
    """
    import scipy.io

    p = Path(path)
    try:
        m = scipy.io.loadmat(p)
    except NotImplementedError:
        raise ValueError(f"{p}: a MATLAB v7.3 (HDF5) file; save it with -v7 or read it with h5py") from None
    except Exception as err:  # noqa: BLE001 -- scipy raises many types (IndexError, ValueError, ...) for damaged files
        raise ValueError(f"{p}: not a readable .mat file ({type(err).__name__}: {err})") from None
    cands = _mat_candidates(m)
    if key is None:
        if len(cands) != 1:
            raise ValueError(f"{p}: {'no' if not cands else 'several'} 2-D/3-D numeric arrays "
                             f"({', '.join(cands) or 'variables: ' + ', '.join(k for k in m if not k.startswith('__'))}); "
                             "give the key (e.g. real-mri:PATH with --mat-key NAME)")
        key = cands[0]
    elif key not in m:
        raise ValueError(f"{p}: no variable {key!r}; it holds {', '.join(k for k in m if not k.startswith('__'))}")
    elif key not in cands:
        v = m[key]
        raise ValueError(f"{p}: variable {key!r} is not a 2-D/3-D numeric array "
                         f"(shape {getattr(v, 'shape', None)}, dtype {getattr(v, 'dtype', type(v).__name__)})")
    a = m[key]
    if a.ndim == 3:
        if axis not in (0, 1, 2):
            raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
        a = np.moveaxis(a, axis, 0)
    else:
        a = a[None]
    if np.iscomplexobj(a):
        a = np.stack([a.real, a.imag], axis=1)
    out = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    if not torch.isfinite(out).all():
        raise ValueError(f"{p}: variable {key!r} holds NaN or Inf values")
    return out


# ----------------------------------------------------------------------------- index and split


def _is_nifti(p: Path) -> bool:
    return p.name.lower().endswith(_NIFTI_SUFFIXES)


def _has_dicom_preamble(p: Path) -> bool:
    try:
        with p.open("rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def _format_of(p: Path) -> str | None:
    name = p.name.lower()
    if name.endswith(JPEG_SUFFIXES):
        return "jpeg"
    if name.endswith(DICOM_SUFFIXES):
        return "dicom"
    if _is_nifti(p):
        return "nifti"
    if name.endswith(MAT_SUFFIXES):
        return "mat"
    if _has_dicom_preamble(p):  # DICOM files are often named by their UID alone (CT.1.3.12...)
        return "dicom"
    return None


def patient_key(path: str | os.PathLike, root: str | os.PathLike | None = None) -> str:
    """The patient of a non-DICOM file: an IXI or TCGA subject in its name, else the file itself.

    Args:
        path: the file.
        root: folder the key is made relative to (keys are stable when the tree is moved).
    """
    p = Path(path)
    m = _PATIENT_PATTERN.search(p.name)
    if m:
        return m.group(1)
    return str(p.relative_to(root)) if root is not None and p.is_relative_to(root) else str(p)


def _hash_fraction(key: str) -> float:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2.0**64


def split_of(refs: list[ImageRef], heldout_fraction: float) -> list[str]:
    """``"train"``, ``"heldout"`` or ``"gap"`` for each image (rules in the module docstring).

    Args:
        refs: the images, with their patient keys (numbered JPEGs: ``"number:<n>"``).
        heldout_fraction: in ``[0, 1)``; 0 holds nothing out.

    Returns:
        one label per ref.
    """
    if not 0 <= heldout_fraction < 1:
        raise ValueError(f"heldout_fraction must lie in [0, 1), got {heldout_fraction}")
    out = ["train"] * len(refs)
    if heldout_fraction == 0:
        return out
    m = max(2, round(1 / heldout_fraction))
    target = (m - 1) // 2
    patients = sorted({r.patient for r in refs if not r.patient.startswith("number:")})
    held = {k for k in patients if _hash_fraction(k) < heldout_fraction}
    if not held and len(patients) >= 2:
        held = {min(patients, key=_hash_fraction)}
    for i, r in enumerate(refs):
        if r.patient.startswith("number:"):
            n = int(r.patient.split(":", 1)[1])
            if ((n - 1) // _BLOCK) % m == target:
                out[i] = "heldout"
            elif any(((n - 1 + d) // _BLOCK) % m == target for d in (-_GUARD, _GUARD)):
                out[i] = "gap"
        elif r.patient in held:
            out[i] = "heldout"
    return out


def _index_file(p: Path, fmt: str, root: Path, *, axis: int, mat_key: str | None,
                min_foreground: float, modality: str | None, ct: bool) -> list[ImageRef]:
    """The images of one file (headers only; NIfTI volumes are read once to drop empty slices, ``.mat``
    files to count their images)."""
    if fmt == "jpeg":
        key = f"number:{int(p.stem)}" if p.stem.isdigit() else patient_key(p, root)
        return [ImageRef(p, 0, fmt, key)]
    if fmt == "dicom":
        ds = _dcmread(p, stop_before_pixels=True)
        if modality is not None and str(ds.get("Modality", "")) != modality:
            return []
        ok, why = _decodable(ds, p)
        if not ok:
            warnings.warn(f"skipping {p}: {why}", stacklevel=3)
            return []
        pid = str(ds.get("PatientID", "") or "").strip()
        folder = p.parent.relative_to(root) if p.parent.is_relative_to(root) else p.parent
        key = f"dicom:{pid}" if pid else f"folder:{folder}"
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        return [ImageRef(p, f, fmt, key) for f in range(frames)]
    if fmt == "nifti":
        sl = read_nifti_slices(p, axis=axis)
        flat = ((sl + 1000.0).clamp_min(0) if ct else sl.abs()).flatten(1)
        level = torch.quantile(flat.flatten()[:: max(1, flat.numel() // 5_000_000)], 0.995)
        fg = (flat > 0.1 * level).float().mean(1)
        keep = torch.nonzero(fg >= min_foreground).flatten().tolist()
        return [ImageRef(p, s, fmt, patient_key(p, root)) for s in keep]
    if fmt == "mat":
        n = read_mat(p, key=mat_key, axis=axis).shape[0]
        return [ImageRef(p, i, fmt, patient_key(p, root)) for i in range(n)]
    raise ValueError(f"unknown format {fmt!r}")


def shrink_to(x: torch.Tensor, max_side: int) -> torch.Tensor:
    """Area-average ``(..., H, W)`` by the smallest integer factor ``f`` with ``max(H, W) / f <= max_side``.

    ``max_side`` 0, or an image already small enough, returns ``x`` unchanged. Trailing rows and
    columns that do not fill an ``f x f`` block are dropped (``torch.nn.functional.avg_pool2d``).
    """
    factor = math.ceil(max(x.shape[-2:]) / max_side) if max_side > 0 else 1
    if factor <= 1:
        return x
    lead = x.shape[:-2]
    return F.avg_pool2d(x.reshape(-1, 1, *x.shape[-2:]), factor).reshape(*lead, *(n // factor for n in x.shape[-2:]))


class RealImages:
    """Real 2-D images from a folder (searched recursively) or one file, read lazily, split by patient.

    Args:
        path: a folder or a single JPEG/PNG, DICOM, NIfTI or ``.mat`` file. Files are recognised by
            suffix (``.jpg .jpeg .png .dcm .dicom .nii .nii.gz .mat``) or, for DICOM, by the ``DICM``
            marker at byte 128; other files (``.txt``, ``.csv``, ...) in a folder are ignored; DICOM
            files whose pixels no installed plugin can decode are skipped with a warning naming each.
        split: ``"train"``, ``"heldout"`` or ``"all"`` (see the module docstring for the rule).
        heldout_fraction: fraction of patients (or of numbered blocks) held out.
        ct: the images are CT: DICOM and NIfTI values are Hounsfield units and become
            ``max(HU + 1000, 0)`` (attenuation relative to air, before scaling).
        axis: NIfTI slice axis (voxel order), and the image axis of 3-D ``.mat`` arrays.
        mat_key: the ``.mat`` variable (``None``: auto-detected per file).
        jpeg_scale: downsampling factor for JPEG/PNG files (2: half resolution).
        jpeg_blur: Gaussian blur (pixels, after downsampling) for JPEG/PNG files.
        max_side: ``> 0``: an image whose longer side exceeds this many pixels (after ``jpeg_scale``)
            is area-averaged by the smallest integer factor that brings that side to at most
            ``max_side`` (:func:`shrink_to`; e.g. 512 x 512 CT slices to 256 x 256). 0: keep sizes.
        min_foreground: NIfTI slices where fewer than this fraction of pixels exceed 10% of the
            volume's 99.5th percentile (of ``|x|``; CT: of ``HU + 1000``) are dropped (empty slices
            at the ends of a volume).
        modality: keep only DICOM files of this ``Modality`` (``"MR"``, ``"CT"``); others are ignored.
        cache_files: how many decoded files to keep in memory.

    Indexing reads headers (NIfTI volumes and ``.mat`` files once); ``self[i]`` reads the pixels. Items are float32
    ``(1, H, W)`` (``(2, H, W)`` for complex ``.mat`` arrays), scaled so that the magnitude's 99.5th
    percentile is 1 (:func:`diffinverse.imaging.to_prior_range`). Sizes may differ between items.

    Attributes:
        refs: the :class:`ImageRef` of each item of this split, in sorted file order.
        patients: the patient keys of this split, sorted.

    Raises:
        FileNotFoundError: ``path`` does not exist or holds no image of a known format (in this split).
        ValueError: naming the file, for a corrupt or unexpected file.
    """

    def __init__(self, path: str | os.PathLike, *, split: str = "train", heldout_fraction: float = 0.1,
                 ct: bool = False, axis: int = 2, mat_key: str | None = None, jpeg_scale: int = 2,
                 jpeg_blur: float = 0.0, max_side: int = 0, min_foreground: float = 0.1,
                 modality: str | None = None, cache_files: int = 8):
        if split not in _SPLITS:
            raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
        if jpeg_scale < 1 or jpeg_blur < 0:
            raise ValueError(f"jpeg_scale must be >= 1 and jpeg_blur >= 0, got {jpeg_scale}, {jpeg_blur}")
        if max_side < 0:
            raise ValueError(f"max_side must be >= 0 (0: keep sizes), got {max_side}")
        root = Path(path)
        if root.is_file():
            files, base = [root], root.parent
        elif root.is_dir():
            files, base = sorted(f for f in root.rglob("*") if f.is_file()), root
        else:
            raise FileNotFoundError(f"{root}: no such file or folder")
        refs: list[ImageRef] = []
        for f in files:
            fmt = _format_of(f)
            if fmt is None:
                if root.is_file():
                    raise ValueError(f"{f}: not a JPEG/PNG, DICOM, NIfTI or .mat file")
                continue
            refs.extend(_index_file(f, fmt, base, axis=axis, mat_key=mat_key, min_foreground=min_foreground,
                                    modality=modality, ct=ct))
        if not refs:
            raise FileNotFoundError(f"{root}: no readable JPEG/PNG, DICOM, NIfTI or .mat images found")
        labels = split_of(refs, heldout_fraction)
        self.refs = refs if split == "all" else [r for r, lab in zip(refs, labels) if lab == split]
        if not self.refs:
            raise FileNotFoundError(f"{root}: no images in the {split!r} split (patients: "
                                    f"{len({r.patient for r in refs})}, heldout_fraction {heldout_fraction})")
        self.patients = sorted({r.patient for r in self.refs})
        self.split, self.ct, self.axis, self.mat_key = split, ct, axis, mat_key
        self.jpeg_scale, self.jpeg_blur, self.max_side = jpeg_scale, jpeg_blur, max_side
        self._read_file = functools.lru_cache(maxsize=max(1, cache_files))(self._read_file_uncached)

    def __len__(self) -> int:
        return len(self.refs)

    def _read_file_uncached(self, path: Path, fmt: str) -> torch.Tensor:
        """All images of one file, ``(N, C, H, W)`` float32 in file units (CT: attenuation)."""
        if fmt == "jpeg":
            x = read_jpeg(path, scale=self.jpeg_scale, blur=self.jpeg_blur)[None, None]
        elif fmt == "dicom":
            x = read_dicom(path)[:, None]
        elif fmt == "nifti":
            x = read_nifti_slices(path, axis=self.axis)[:, None]
        else:
            x = read_mat(path, key=self.mat_key, axis=self.axis)
            x = x if x.ndim == 4 else x[:, None]
        if self.ct and fmt in ("dicom", "nifti"):
            x = (x + 1000.0).clamp_min(0)
        return shrink_to(x, self.max_side)

    def read(self, i: int) -> torch.Tensor:
        """Item ``i`` in file units, ``(C, H, W)`` float32 (not scaled)."""
        r = self.refs[i]
        return self._read_file(r.path, r.format)[r.index]

    def __getitem__(self, i: int) -> torch.Tensor:
        """Item ``i`` scaled into the prior range (magnitude's 99.5th percentile = 1), ``(C, H, W)``."""

        return to_prior_range(self.read(i)[None])[0][0]

    def counts(self) -> dict[str, int]:
        """Images per format in this split."""
        out: dict[str, int] = {}
        for r in self.refs:
            out[r.format] = out.get(r.format, 0) + 1
        return out


class RealImageCrops:
    """Training batches from :class:`RealImages`: random image, random phase (MRI), crop, flips.

    Args:
        images: the images (one split).
        crop: crop side in pixels (images smaller than that are zero-padded), or ``None`` for whole
            images (then all must share one size).
        complex: give 2-channel complex images: a real image times ``exp(i phase)`` with the smooth
            random phase of the ``mri-brain`` data; complex files keep their own phase. ``False``
            gives 1-channel images (and rejects complex files).
        flips: random left-right and up-down flips.
        noise: white noise whose standard deviation (prior units, per channel) is drawn uniformly
            in ``[0, noise]`` per image; 0: none (against JPEG blocking, e.g. 0.02).

    ``sample(n, *, generator) -> (n, C, crop, crop)`` float32; every whole image is in the prior range
    (magnitude's 99.5th percentile = 1) before it is cropped, as in :class:`~diffinverse.datasets.
    brain.BrainSlices`. The same generator state gives the same batch.
    """

    def __init__(self, images: RealImages, *, crop: int | None = 64, complex: bool = True, flips: bool = True,
                 noise: float = 0.0):
        if crop is not None and crop < 1 or noise < 0:
            raise ValueError(f"crop must be >= 1 or None and noise >= 0, got {crop}, {noise}")
        self.images, self.crop, self.complex, self.flips, self.noise = images, crop, complex, flips, noise
        self.channels = 2 if complex else 1

    def __len__(self) -> int:
        return len(self.images)

    def _one(self, i: int, generator: torch.Generator) -> torch.Tensor:
        from diffinverse.datasets.brain import smooth_random_phase

        x = self.images.read(i)
        if x.shape[0] == 2 and not self.complex:
            raise ValueError(f"{self.images.refs[i].path}: complex image, but the source gives real images")
        if x.shape[0] == 1 and self.complex:
            phase = smooth_random_phase(1, tuple(x.shape[-2:]), generator=generator)
            x = torch.cat([x * phase.cos(), x * phase.sin()])
        x = to_prior_range(x[None])[0]
        if self.noise > 0:
            std = self.noise * float(torch.rand(1, generator=generator))
            x = x + std * torch.randn(x.shape, generator=generator)
        if self.crop is not None:
            from diffinverse.datasets.images import random_crop

            x = random_crop(x, self.crop, generator=generator)
        return x[0]

    def sample(self, n: int, *, generator: torch.Generator) -> torch.Tensor:
        """Draw ``n`` images, ``(n, C, crop, crop)`` float32."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        idx = torch.randint(0, len(self.images), (n,), generator=generator).tolist()
        items = [self._one(i, generator) for i in idx]
        if len({tuple(t.shape) for t in items}) > 1:
            raise ValueError("images of different sizes need a crop size")
        x = torch.stack(items)
        if self.flips:
            f = torch.rand(n, 2, generator=generator) < 0.5
            x = torch.where(f[:, 0, None, None, None], x.flip(-1), x)
            x = torch.where(f[:, 1, None, None, None], x.flip(-2), x)
        return x
