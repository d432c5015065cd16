"""Natural-image crops as a texture source for training priors on synthetic data.

Synthetic training data (template brains, ellipse phantoms) is smoother than real scans, and a
prior trained on it alone over-smooths real images at low noise levels (the shipped priors'
model cards compare them with BM3D on real scans). Mixing in crops of
real photographs — which carry edges, fine texture and sensor noise at every scale — is a cheap
way to teach the denoiser to keep such detail. The photographs are the greyscale-convertible
images that scikit-image ships in its wheel (``skimage/data``: camera, brick, grass, gravel, moon,
coins, text, ...): no download, no file that a test or CI run could lack once scikit-image is
installed.

Each crop is randomly rescaled (1x-2x downsampling), flipped and rotated by multiples of 90
degrees, gamma-adjusted and scaled in intensity; 2-channel (complex) crops get a smooth random
phase, like :class:`~diffinverse.datasets.brain.BrainSlices`.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["skimage_photographs", "NaturalImageCrops"]

# Synthetic drawings, binary masks and stereo pairs of the same scene add nothing as texture.
_SKIP = {"chessboard_GRAY", "chessboard_RGB", "color", "logo", "horse", "motorcycle_right", "phantom"}


def skimage_photographs() -> list[torch.Tensor]:
    """The photographs bundled with scikit-image as greyscale ``(1, H, W)`` float32 in [0, 1]."""
    try:
        import skimage
        from skimage import io
        from skimage.color import rgb2gray
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("natural-image crops need scikit-image (pip install scikit-image)") from e
    folder = Path(skimage.__file__).parent / "data"
    images = []
    for path in sorted(folder.iterdir()):
        if path.suffix not in (".png", ".jpg") or path.stem in _SKIP:
            continue
        a = io.imread(path)
        if a.ndim == 3:
            a = rgb2gray(a[..., :3])
        a = a.astype(np.float32)
        a = a / a.max() if a.max() > 1 else a
        if min(a.shape) >= 64:
            images.append(torch.from_numpy(np.ascontiguousarray(a))[None])
    if not images:
        raise FileNotFoundError(f"{folder}: no bundled photographs found")
    return images


class NaturalImageCrops:
    """Random ``crop x crop`` crops of :func:`skimage_photographs`, ``(n, channels, crop, crop)``.

    Args:
        crop: crop side in pixels.
        channels: 1 (real, intensities in [0, ``peak``]) or 2 (complex: real and imaginary parts of
            the intensity times a smooth random phase; magnitude peak ``peak``).
        peak: range of the per-crop intensity scale, drawn uniformly (the shipped priors' data
            put the bright tissue near 1).

    ``sample(n, *, generator)`` draws everything from ``generator``.
    """

    def __init__(self, crop: int, *, channels: int = 1, peak: tuple[float, float] = (0.5, 1.0)):
        if channels not in (1, 2):
            raise ValueError(f"channels must be 1 or 2, got {channels}")
        self.images = skimage_photographs()
        self.crop, self.channels, self.peak = crop, channels, peak

    def __len__(self) -> int:
        return len(self.images)

    def _one(self, generator: torch.Generator) -> torch.Tensor:
        im = self.images[int(torch.randint(len(self.images), (1,), generator=generator))]
        scale = 1.0 + float(torch.rand(1, generator=generator))  # 1x to 2x downsampling
        side = min(math.ceil(self.crop * scale), *im.shape[-2:])
        top = int(torch.randint(im.shape[-2] - side + 1, (1,), generator=generator))
        left = int(torch.randint(im.shape[-1] - side + 1, (1,), generator=generator))
        x = im[None, :, top:top + side, left:left + side]
        if side != self.crop:
            x = F.interpolate(x, size=(self.crop, self.crop), mode="area" if side > self.crop else "bilinear")
        x = torch.rot90(x, int(torch.randint(4, (1,), generator=generator)), dims=(-2, -1))
        if torch.rand(1, generator=generator) < 0.5:
            x = x.flip(-1)
        gamma = math.exp(0.4 * float(torch.randn(1, generator=generator)))
        x = x.clamp_min(0) ** gamma
        lo, hi = self.peak
        return x / x.amax().clamp_min(1e-6) * (lo + (hi - lo) * float(torch.rand(1, generator=generator)))

    def sample(self, n: int, *, generator: torch.Generator) -> torch.Tensor:
        """Draw ``n`` crops, ``(n, channels, crop, crop)`` float32."""
        x = torch.cat([self._one(generator) for _ in range(n)])
        if self.channels == 1:
            return x
        coarse = torch.randn(n, 1, 4, 4, generator=generator)
        phase = math.pi * F.interpolate(coarse, size=(self.crop, self.crop), mode="bicubic", align_corners=True)
        return torch.cat([x * phase.cos(), x * phase.sin()], dim=1)
