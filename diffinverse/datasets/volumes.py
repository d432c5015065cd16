"""NIfTI volumes via nibabel: read, cut into 2D slices, and write back keeping the affine.

Volumes are handled in the file's voxel order ``(X, Y, Z)`` (no reorientation); the 4x4
``affine`` maps voxel indices to world millimetres and is carried through unchanged, so a volume
written by :func:`write_nifti` lies where the input lay in scanner space.

References:
    NIfTI-1 data format, https://nifti.nimh.nih.gov/nifti-1 ; nibabel documentation.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from diffinverse._io import atomic_output

__all__ = ["NIFTI_SUFFIXES", "read_nifti", "nifti_slices", "write_nifti"]

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def _is_nifti(p: Path) -> bool:
    return p.name.lower().endswith(NIFTI_SUFFIXES)


def read_nifti(path: str | os.PathLike) -> tuple[torch.Tensor, np.ndarray]:
    """Read a 3D (or 4D, then its first volume) NIfTI image.

    Args:
        path: a ``.nii`` or ``.nii.gz`` file.

    Returns:
        ``(volume, affine)``: float32 ``(X, Y, Z)`` tensor (scl_slope/inter applied) and the
        float64 ``(4, 4)`` voxel-to-world affine.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a NIfTI file name, or not 3D/4D data.
    """
    import nibabel as nib

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    if not _is_nifti(p):
        raise ValueError(f"{p}: expected a NIfTI file ({', '.join(NIFTI_SUFFIXES)})")
    img = nib.load(str(p))
    data = np.asarray(img.get_fdata(dtype=np.float32))
    if data.ndim == 4:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{p}: expected a 3D volume, got shape {data.shape}")
    return torch.from_numpy(np.ascontiguousarray(data)), np.asarray(img.affine, dtype=np.float64)


def nifti_slices(path: str | os.PathLike, *, axis: int = 2) -> torch.Tensor:
    """All 2D slices of a NIfTI volume along one voxel axis.

    Args:
        path: a ``.nii``/``.nii.gz`` file, or a folder whose NIfTI files are read in sorted order.
        axis: voxel axis to slice along (0, 1 or 2; 2 = axial for RAS-like volumes).

    Returns:
        float32 ``(S, 1, H, W)``, slice ``s`` being ``volume.select(axis, s)`` with the remaining
        axes in their order. With a folder, all volumes must give the same ``(H, W)``.

    Raises:
        ValueError: ``axis`` not in (0, 1, 2), a folder without NIfTI files, or differing slice sizes.
    """
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
    p = Path(path)
    files = sorted(f for f in p.iterdir() if _is_nifti(f)) if p.is_dir() else [p]
    if not files:
        raise ValueError(f"{p}: no NIfTI files ({', '.join(NIFTI_SUFFIXES)}) found")
    stacks = [read_nifti(f)[0].movedim(axis, 0)[:, None] for f in files]
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
        FileExistsError: ``path`` exists and ``overwrite`` is false.
    """
    import nibabel as nib

    p = Path(path)
    if not _is_nifti(p):
        raise ValueError(f"{p}: expected a NIfTI file name ending in {' or '.join(NIFTI_SUFFIXES)}")
    vol = volume.detach().cpu().numpy() if isinstance(volume, torch.Tensor) else np.asarray(volume)
    if np.iscomplexobj(vol) or vol.ndim != 3:
        raise ValueError(f"volume must be a real (X, Y, Z) array, got shape {vol.shape} dtype {vol.dtype}")
    aff = np.asarray(affine.cpu() if isinstance(affine, torch.Tensor) else affine, dtype=np.float64)
    if aff.shape != (4, 4):
        raise ValueError(f"affine must be (4, 4), got shape {aff.shape}")
    img = nib.Nifti1Image(vol.astype(np.float32), aff)
    img.set_qform(aff, code=1)
    img.set_sform(aff, code=1)
    img.header.set_xyzt_units("mm")
    with atomic_output(p, overwrite=overwrite) as tmp:
        nib.save(img, tmp)
    return p
