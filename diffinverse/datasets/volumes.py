"""NIfTI volumes via nibabel: read, cut into 2D slices, and write back keeping the affine.

Volumes are handled in the file's voxel order ``(X, Y, Z)`` (no reorientation); the 4x4
``affine`` maps voxel indices to world millimetres and is carried through unchanged, so a volume
written by :func:`write_nifti` lies where the input lay in scanner space. The voxel size is the
length of the affine's first three columns (:func:`voxel_size`); nibabel stores it in the
header's ``pixdim`` when writing.

:func:`read_volume` / :func:`write_volume` convert to and from this package's volume layout
``(1, 1, D, H, W)``: ``D`` is the chosen voxel axis (``axis``), ``H, W`` the other two in their file
order, as :func:`nifti_slices` cuts them.

What is refused, with an error naming it: a file whose affine is not usable (neither a qform nor
an sform set, i.e. both codes 0, unless asked for nibabel's pixdim-only fallback; a non-finite or
singular matrix), a 4-D time series (more than one volume; one can be picked with ``volume=``),
data of more than 4 dimensions, complex or RGB data, and on writing non-real or non-numeric
arrays.

References:
    NIfTI-1 data format, https://nifti.nimh.nih.gov/nifti-1 ; nibabel documentation.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from diffinverse._io import atomic_output

__all__ = ["NIFTI_SUFFIXES", "read_nifti", "nifti_slices", "write_nifti", "read_volume", "write_volume", "voxel_size"]

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def _is_nifti(p: Path) -> bool:
    return p.name.lower().endswith(NIFTI_SUFFIXES)


def voxel_size(affine: np.ndarray | torch.Tensor) -> np.ndarray:
    """Voxel edge lengths (mm) of a ``(4, 4)`` voxel-to-world affine: the norms of its first three
    columns, ``(3,)`` float64 in voxel-axis order."""
    a = np.asarray(affine.cpu() if isinstance(affine, torch.Tensor) else affine, dtype=np.float64)
    if a.shape != (4, 4):
        raise ValueError(f"affine must be (4, 4), got shape {a.shape}")
    return np.sqrt((a[:3, :3] ** 2).sum(axis=0))


def _check_affine(aff: np.ndarray, where: str) -> np.ndarray:
    if aff.shape != (4, 4):
        raise ValueError(f"{where}: affine must be (4, 4), got shape {aff.shape}")
    if not np.isfinite(aff).all():
        raise ValueError(f"{where}: the affine has non-finite entries:\n{aff}")
    if abs(np.linalg.det(aff[:3, :3])) < 1e-12:
        raise ValueError(f"{where}: the affine is singular (zero voxel size or collinear axes):\n{aff}")
    return aff


def read_nifti(path: str | os.PathLike, *, volume: int | None = None,
               allow_missing_affine: bool = False) -> tuple[torch.Tensor, np.ndarray]:
    """Read a 3D NIfTI image (or one volume of a 4D series).

    Args:
        path: a ``.nii`` or ``.nii.gz`` file.
        volume: for 4D data, the index of the volume to read; a 4D file with a single volume is
            read as 3D without it.
        allow_missing_affine: accept a file with neither a qform nor an sform (both codes 0) and
            return nibabel's fallback affine (voxel sizes from ``pixdim``, no orientation or
            origin); otherwise such a file is refused.

    Returns:
        ``(volume, affine)``: float32 ``(X, Y, Z)`` tensor (scl_slope/inter applied) and the
        float64 ``(4, 4)`` voxel-to-world affine (the sform if set, else the qform, as nibabel
        chooses).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a NIfTI file name; data not 3D or 4D; a 4D time series without ``volume``
            (or ``volume`` out of range); complex or RGB data; no usable affine.
    """
    import nibabel as nib

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    if not _is_nifti(p):
        raise ValueError(f"{p}: expected a NIfTI file ({', '.join(NIFTI_SUFFIXES)})")
    img = nib.load(str(p))
    dtype = np.dtype(img.get_data_dtype())
    if dtype.kind == "c":
        raise ValueError(f"{p}: complex data ({dtype}) is not supported; store magnitude (and phase) as real "
                         f"volumes")
    if dtype.kind not in "iuf":
        raise ValueError(f"{p}: data type {dtype} (e.g. RGB) is not supported; expected integer or float voxels")
    shape = img.shape
    if len(shape) == 4:
        if volume is None and shape[3] != 1:
            raise ValueError(f"{p}: a 4-D time series of {shape[3]} volumes {tuple(shape)}; "
                             f"pass volume=INDEX to read one of them")
        t = 0 if volume is None else volume
        if not -shape[3] <= t < shape[3]:
            raise ValueError(f"{p}: volume={volume} is out of range for {shape[3]} volumes")
        data = np.asarray(img.slicer[..., t].get_fdata(dtype=np.float32))
    elif len(shape) == 3:
        if volume not in (None, 0):
            raise ValueError(f"{p}: volume={volume} given for a 3-D file (it holds one volume)")
        data = np.asarray(img.get_fdata(dtype=np.float32))
    else:
        raise ValueError(f"{p}: expected a 3D volume (or a 4D series), got {len(shape)}-D data of shape {shape}")
    header = img.header
    if int(header["qform_code"]) == 0 and int(header["sform_code"]) == 0 and not allow_missing_affine:
        raise ValueError(f"{p}: no usable affine (qform_code and sform_code are both 0: the voxel-to-world "
                         f"mapping is unknown); pass allow_missing_affine=True to use the voxel sizes only")
    aff = _check_affine(np.asarray(img.affine, dtype=np.float64), str(p))
    return torch.from_numpy(np.ascontiguousarray(data)), aff


def nifti_slices(path: str | os.PathLike, *, axis: int = 2) -> torch.Tensor:
    """All 2D slices of a NIfTI volume along one voxel axis.

    Args:
        path: a ``.nii``/``.nii.gz`` file, or a folder whose NIfTI files are read in sorted order.
        axis: voxel axis to slice along (0, 1 or 2; 2 = axial for RAS-like volumes).

    Returns:
        float32 ``(S, 1, H, W)``, slice ``s`` being ``volume.select(axis, s)`` with the remaining
        axes in their order. With a folder, all volumes must give the same ``(H, W)``.

    Files are read by :func:`read_nifti` with ``allow_missing_affine=True`` (slices need no world
    coordinates); a 4-D time series is refused as there.

    Raises:
        ValueError: ``axis`` not in (0, 1, 2), a folder without NIfTI files, differing slice sizes,
            or a file :func:`read_nifti` refuses.
    """
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
    p = Path(path)
    files = sorted(f for f in p.iterdir() if _is_nifti(f)) if p.is_dir() else [p]
    if not files:
        raise ValueError(f"{p}: no NIfTI files ({', '.join(NIFTI_SUFFIXES)}) found")
    # the slices need no world coordinates: a file without an affine is fine here
    stacks = [read_nifti(f, allow_missing_affine=True)[0].movedim(axis, 0)[:, None] for f in files]
    if len({s.shape[-2:] for s in stacks}) > 1:
        raise ValueError(f"{p}: volumes give different slice sizes {sorted({tuple(s.shape[-2:]) for s in stacks})}")
    return torch.cat(stacks)


def write_nifti(path: str | os.PathLike, volume: torch.Tensor | np.ndarray, affine: np.ndarray | torch.Tensor, *,
                overwrite: bool = False) -> Path:
    """Write a 3D volume as NIfTI, atomically (:func:`diffinverse._io.atomic_output`).

    Args:
        path: destination ``.nii`` or ``.nii.gz`` (compression follows the suffix).
        volume: ``(X, Y, Z)`` real array; stored as float32.
        affine: ``(4, 4)`` voxel-to-world matrix (e.g. from :func:`read_nifti`), stored as both the
            sform and qform.
        overwrite: replace an existing file; otherwise an existing file raises.

    Returns:
        the path written.

    Raises:
        ValueError: wrong shapes, a non-NIfTI suffix, complex data.
        TypeError: a non-numeric (e.g. boolean, object or string) array.
        FileExistsError: ``path`` exists and ``overwrite`` is false.
    """
    import nibabel as nib

    p = Path(path)
    if not _is_nifti(p):
        raise ValueError(f"{p}: expected a NIfTI file name ending in {' or '.join(NIFTI_SUFFIXES)}")
    vol = volume.detach().cpu().numpy() if isinstance(volume, torch.Tensor) else np.asarray(volume)
    if np.iscomplexobj(vol) or vol.ndim != 3:
        raise ValueError(f"volume must be a real (X, Y, Z) array, got shape {vol.shape} dtype {vol.dtype}")
    if vol.dtype.kind not in "iuf":
        raise TypeError(f"volume must hold integer or float numbers, got dtype {vol.dtype}")
    aff = np.asarray(affine.cpu() if isinstance(affine, torch.Tensor) else affine, dtype=np.float64)
    aff = _check_affine(aff, str(p))
    img = nib.Nifti1Image(vol.astype(np.float32), aff)
    img.set_qform(aff, code=1)
    img.set_sform(aff, code=1)
    img.header.set_xyzt_units("mm")
    with atomic_output(p, overwrite=overwrite) as tmp:
        nib.save(img, tmp)
    return p


def read_volume(path: str | os.PathLike, *, axis: int = 2, volume: int | None = None,
                allow_missing_affine: bool = False) -> tuple[torch.Tensor, np.ndarray]:
    """Read a NIfTI file as a volume in this package's layout.

    Args:
        path: a ``.nii`` or ``.nii.gz`` file (see :func:`read_nifti` for what is refused).
        axis: the file's voxel axis that becomes ``D`` (the slice axis; 2 = axial for RAS-like
            files); the other two become ``H, W`` in file order.
        volume, allow_missing_affine: as in :func:`read_nifti`.

    Returns:
        ``(x, affine)``: float32 ``(1, 1, D, H, W)`` and the file's ``(4, 4)`` voxel-to-world affine
        (for the file's ``(X, Y, Z)`` order; :func:`write_volume` with the same ``axis`` undoes
        the reordering).
    """
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
    data, aff = read_nifti(path, volume=volume, allow_missing_affine=allow_missing_affine)
    return data.movedim(axis, 0)[None, None].contiguous(), aff


def write_volume(path: str | os.PathLike, x: torch.Tensor, affine: np.ndarray | torch.Tensor, *, axis: int = 2,
                 overwrite: bool = False) -> Path:
    """Write a ``(1, 1, D, H, W)`` volume as NIfTI, the inverse of :func:`read_volume`.

    Args:
        path: destination ``.nii`` or ``.nii.gz``.
        x: ``(1, 1, D, H, W)`` real volume (a complex ``C = 2`` volume must be reduced first, e.g. to
            its magnitude with :func:`diffinverse.imaging.magnitude`).
        affine: ``(4, 4)`` voxel-to-world matrix for the file's ``(X, Y, Z)`` order (as returned by
            :func:`read_volume`).
        axis: the file axis ``D`` goes back to.
        overwrite: replace an existing file.

    Returns:
        the path written (atomically, float32, affine as sform and qform).

    Raises:
        ValueError: ``x`` not ``(1, 1, D, H, W)``, a bad affine or file name.
    """
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 5 or x.shape[:2] != (1, 1):
        hint = " (complex volumes: write the magnitude)" if x.ndim == 5 and x.shape[1] == 2 else ""
        raise ValueError(f"x must be one real volume (1, 1, D, H, W), got {tuple(x.shape)}{hint}")
    return write_nifti(path, x[0, 0].movedim(0, axis), affine, overwrite=overwrite)
