"""Image folders (PNG/JPEG via Pillow, or ``.npy`` arrays) as tensors, and random crops of them.

File layouts read by :func:`read_image`:

- ``.png``, ``.jpg``, ``.jpeg``, ``.tif``, ``.tiff``, ``.bmp`` (needs Pillow): greyscale images
  give 1 channel, anything else is converted to greyscale too; 8-bit values are scaled to
  ``[0, 1]`` (16-bit PNGs by 65535);
- ``.npy``: ``(H, W)`` is one 1-channel image, ``(C, H, W)`` one ``C``-channel image,
  ``(N, C, H, W)`` ``N`` images; complex arrays become ``(real, imag)`` channels (``C = 2``).

References:
    fastMRI and deepinv keep images as ``(B, C, H, W)`` float32 tensors; so does this package.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

__all__ = ["IMAGE_SUFFIXES", "read_image", "load_folder", "random_crop", "RandomCrops"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def _from_array(a: np.ndarray, path: Path) -> torch.Tensor:
    if np.iscomplexobj(a):
        if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[0] != 1):
            raise ValueError(f"{path}: a complex array must be (H, W), (1, H, W) or (N, H, W) with one image "
                             f"per entry; got shape {a.shape}")
        a = a.reshape(-1, *a.shape[-2:])
        a = np.stack([a.real, a.imag], axis=1)
    elif a.ndim == 2:
        a = a[None, None]
    elif a.ndim == 3:
        a = a[None]
    elif a.ndim != 4:
        raise ValueError(f"{path}: expected an array (H, W), (C, H, W) or (N, C, H, W), got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_:
        raise TypeError(f"{path}: expected a numeric array, got dtype {a.dtype}")
    out = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    if not torch.isfinite(out).all():
        raise ValueError(f"{path}: the array holds NaN or Inf values")
    return out


def read_image(path: str | os.PathLike) -> torch.Tensor:
    """Read one image file (see the module docstring for layouts).

    Args:
        path: a ``.npy`` file or an image file Pillow can open.

    Returns:
        float32 ``(N, C, H, W)`` (``N = 1`` except for 4-D ``.npy`` arrays).

    Raises:
        FileNotFoundError: no such file.
        ValueError: an unsupported suffix or array shape.
        ImportError: an image file but Pillow is not installed.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    suffix = p.suffix.lower()
    if suffix == ".npy":
        return _from_array(np.load(p, allow_pickle=False), p)
    if suffix not in IMAGE_SUFFIXES:
        raise ValueError(f"{p}: unsupported file type {suffix!r}; expected .npy or one of {IMAGE_SUFFIXES}")
    try:
        from PIL import Image
    except ImportError as err:
        raise ImportError(f"reading {p} needs Pillow (pip install pillow)") from err
    with Image.open(p) as im:
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            a = np.asarray(im, dtype=np.float64) / 65535.0
        else:
            a = np.asarray(im.convert("L"), dtype=np.float64) / 255.0
    return _from_array(a, p)


def load_folder(path: str | os.PathLike, *, recursive: bool = False) -> list[torch.Tensor]:
    """Read every ``.npy`` and image file in a folder, in sorted order.

    Args:
        path: the folder (or a single file).
        recursive: also descend into sub-folders.

    Returns:
        a list of float32 ``(C, H, W)`` tensors (sizes may differ between files; all share ``C``).

    Raises:
        FileNotFoundError: the folder does not exist or holds no readable file.
        ValueError: files with different channel counts.
    """
    root = Path(path)
    if root.is_file():
        files = [root]
    elif root.is_dir():
        pattern = "**/*" if recursive else "*"
        files = sorted(f for f in root.glob(pattern) if f.is_file() and f.suffix.lower() in (".npy", *IMAGE_SUFFIXES))
    else:
        raise FileNotFoundError(f"{root}: no such file or folder")
    if not files:
        raise FileNotFoundError(f"{root}: no .npy or image files ({', '.join(IMAGE_SUFFIXES)}) found")
    images = [img for f in files for img in read_image(f)]
    channels = {img.shape[0] for img in images}
    if len(channels) > 1:
        raise ValueError(f"{root}: files have different channel counts {sorted(channels)}")
    return images


def random_crop(x: torch.Tensor, size: int, *, generator: torch.Generator) -> torch.Tensor:
    """One random ``size x size`` crop per image (zero-padded where an image is smaller).

    Args:
        x: ``(N, C, H, W)``.
        size: crop side in pixels.
        generator: source of the crop offsets.

    Returns:
        ``(N, C, size, size)``.
    """
    x = _pad_to(x, size)
    H, W = x.shape[-2:]
    n = x.shape[0]
    top = torch.randint(0, H - size + 1, (n,), generator=generator).tolist()
    left = torch.randint(0, W - size + 1, (n,), generator=generator).tolist()
    return torch.stack([x[i, :, t:t + size, l:l + size] for i, (t, l) in enumerate(zip(top, left))])


def _pad_to(x: torch.Tensor, size: int) -> torch.Tensor:
    ph, pw = max(0, size - x.shape[-2]), max(0, size - x.shape[-1])
    if ph or pw:
        x = torch.nn.functional.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
    return x


class RandomCrops:
    """Training batches from a fixed set of images: random image, random crop, random flips.

    Args:
        images: a ``(N, C, H, W)`` tensor or a list of ``(C, H, W)`` tensors (sizes may differ).
        crop: crop side in pixels, or ``None`` for whole images (then all must share one size).
        flips: also flip left-right and up-down at random (for data without a fixed orientation).

    ``sample(n, *, generator) -> (n, C, crop, crop)``; the same generator state gives the same batch.
    """

    def __init__(self, images: torch.Tensor | list[torch.Tensor], *, crop: int | None = None, flips: bool = False):
        imgs = list(images)
        if not imgs:
            raise ValueError("RandomCrops needs at least one image")
        if any(im.ndim != 3 for im in imgs):
            raise ValueError(f"images must be (C, H, W) each, got shapes {sorted({tuple(im.shape) for im in imgs})}")
        if crop is None and len({tuple(im.shape) for im in imgs}) > 1:
            raise ValueError("images of different sizes need a crop size")
        self.images = [im.to(torch.float32) for im in imgs]
        self.crop = crop
        self.flips = flips
        self.channels = imgs[0].shape[0]

    def __len__(self) -> int:
        return len(self.images)

    def sample(self, n: int, *, generator: torch.Generator) -> torch.Tensor:
        """Draw ``n`` crops, ``(n, C, crop, crop)`` float32."""
        idx = torch.randint(0, len(self.images), (n,), generator=generator).tolist()
        if self.crop is None:
            x = torch.stack([self.images[i] for i in idx])
        else:
            x = torch.cat([random_crop(self.images[i][None], self.crop, generator=generator) for i in idx])
        if self.flips:
            f = torch.rand(n, 2, generator=generator) < 0.5
            x = torch.where(f[:, 0, None, None, None], x.flip(-1), x)
            x = torch.where(f[:, 1, None, None, None], x.flip(-2), x)
        return x
