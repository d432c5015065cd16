"""A compact, fully convolutional UNet denoiser with EDM preconditioning.

The raw network ``F`` is wrapped as in Karras et al.'s ``EDMPrecond``::

    D(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma))

with ``c_skip = sigma_data^2 / (sigma^2 + sigma_data^2)``, ``c_out = sigma sigma_data /
sqrt(sigma^2 + sigma_data^2)``, ``c_in = 1 / sqrt(sigma^2 + sigma_data^2)`` and ``c_noise =
log(sigma) / 4``, so that ``D(x, 0) = x`` and the network's input and target have unit variance
at every noise level.

The network has no attention and no layer that depends on the image size: a prior trained on
64 x 64 crops runs on 320 x 320 images. Sizes that are not multiples of the total downsampling
factor are padded internally (replicate padding) and cropped back.

References:
    Karras, Aittala, Aila, Laine, "Elucidating the Design Space of Diffusion-Based Generative
    Models", NeurIPS 2022 (preconditioning: Table 1, "Ours" column).
    Ronneberger, Fischer, Brox, "U-Net", MICCAI 2015; Ho, Jain, Abbeel, "DDPM", NeurIPS 2020
    (residual blocks with a noise embedding).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from diffinverse.priors.base import Prior, sigma_like

__all__ = ["UNet", "UNetNet"]

# On the CPU a batch is denoised in parts whose widest activation (full resolution, the up path's
# first block: about 3 * base_channels channels) holds at most this many bytes. glibc's malloc
# serves blocks above 32 MiB with fresh mmap'd pages that the kernel zero-fills on first touch, at
# every call, so one large batch is slower than its parts (``benchmarks/README.md``; command:
# ``benchmarks/samplers/bench_network_call.py --batch-split``).
_CPU_ACTIVATION_BUDGET = 16 << 20


def _groups(ch: int) -> int:
    """Number of GroupNorm groups: 8 where it divides ``ch`` (else the largest divisor below)."""
    return math.gcd(ch, 8)


class _NoiseEmbedding(nn.Module):
    """Sinusoidal features of the scalar ``c_noise`` followed by a two-layer MLP."""

    def __init__(self, num_freqs: int, emb_channels: int):
        super().__init__()
        # Frequencies 1 ... 1000 (geometric): c_noise = log(sigma) / 4 lies in about [-1.6, 1.1].
        self.register_buffer("freqs", torch.logspace(0, 3, num_freqs), persistent=False)
        self.mlp = nn.Sequential(
            nn.Linear(2 * num_freqs, emb_channels), nn.SiLU(), nn.Linear(emb_channels, emb_channels), nn.SiLU())

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        arg = c_noise.float()[:, None] * self.freqs[None, :]
        return self.mlp(torch.cat([arg.cos(), arg.sin()], dim=1))


class _ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv3x3, plus the embedding (per-channel shift), twice; 1x1 skip."""

    def __init__(self, in_ch: int, out_ch: int, emb_channels: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(in_ch), in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_channels, out_ch)
        self.norm2 = nn.GroupNorm(_groups(out_ch), out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None].to(h.dtype)
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class UNetNet(nn.Module):
    """The raw network ``F(x_in, c_noise)``: ``(B, C, H, W), (B,) -> (B, C, H, W)``.

    ``len(channel_mult)`` resolution levels; level ``i`` has ``base_channels * channel_mult[i]``
    channels and ``num_res_blocks`` residual blocks; strided 3x3 convolutions go down, nearest
    upsampling + 3x3 convolutions go up, with skip connections concatenated as in the UNet.
    """

    def __init__(self, channels: int, base_channels: int, channel_mult: Sequence[int], num_res_blocks: int,
                 emb_channels: int):
        super().__init__()
        self.factor = 2 ** (len(channel_mult) - 1)
        self.embed = _NoiseEmbedding(emb_channels // 4, emb_channels)
        self.conv_in = nn.Conv2d(channels, base_channels, 3, padding=1)
        widths = [base_channels * m for m in channel_mult]

        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skip_widths = [base_channels]
        ch = base_channels
        for level, width in enumerate(widths):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(_ResBlock(ch, width, emb_channels))
                ch = width
                skip_widths.append(ch)
            self.down.append(blocks)
            if level < len(widths) - 1:
                self.downsample.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skip_widths.append(ch)

        self.mid = nn.ModuleList([_ResBlock(ch, ch, emb_channels), _ResBlock(ch, ch, emb_channels)])

        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for level, width in reversed(list(enumerate(widths))):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                blocks.append(_ResBlock(ch + skip_widths.pop(), width, emb_channels))
                ch = width
            self.up.append(blocks)
            if level > 0:
                self.upsample.append(nn.Conv2d(ch, ch, 3, padding=1))

        self.norm_out = nn.GroupNorm(_groups(ch), ch)
        self.conv_out = nn.Conv2d(ch, channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]
        pad_h, pad_w = (-H) % self.factor, (-W) % self.factor
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        emb = self.embed(c_noise)

        h = self.conv_in(x)
        skips = [h]
        for level, blocks in enumerate(self.down):
            for block in blocks:
                h = block(h, emb)
                skips.append(h)
            if level < len(self.downsample):
                h = self.downsample[level](h)
                skips.append(h)
        for block in self.mid:
            h = block(h, emb)
        for level, blocks in enumerate(self.up):
            for block in blocks:
                h = block(torch.cat([h, skips.pop()], dim=1), emb)
            if level < len(self.upsample):
                h = self.upsample[level](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        out = self.conv_out(F.silu(self.norm_out(h)))
        return out[..., :H, :W]


class UNet(Prior):
    """EDM-preconditioned UNet prior (VE form): ``prior(x, sigma) -> E[x0 | x]``.

    Args:
        channels: image channels, 1 (real) or 2 (complex as real/imag).
        base_channels: width of the first level.
        channel_mult: width multiplier of each resolution level (``len - 1`` downsamplings).
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        emb_channels: width of the noise embedding; default ``4 * base_channels``.
        sigma_data: standard deviation of the training data (data units), used by the
            preconditioning.
        sigma_min, sigma_max: noise range the prior is trained for (data units).
        data_range: ``(low, high)`` of the training images (metadata, see :class:`Prior`).

    Attributes:
        net: the raw :class:`UNetNet`.
        config: JSON-able dict of the constructor arguments, ``UNet(**prior.config)`` rebuilds it.

    Shapes:
        ``x: (B, channels, H, W)`` with any ``H, W >= 1``; ``sigma`` a float or ``(B,)``.

    References:
        Karras et al., "Elucidating the Design Space of Diffusion-Based Generative Models",
        NeurIPS 2022, Table 1.
    """

    def __init__(self, *, channels: int = 1, base_channels: int = 32, channel_mult: Sequence[int] = (1, 2, 2),
                 num_res_blocks: int = 2, emb_channels: int | None = None, sigma_data: float = 0.5,
                 sigma_min: float = 0.002, sigma_max: float = 80.0,
                 data_range: Sequence[float] = (-1.0, 1.0)):
        super().__init__()
        if channels not in (1, 2):
            raise ValueError(f"channels must be 1 or 2, got {channels}")
        if base_channels < 1 or num_res_blocks < 1 or len(channel_mult) < 1 or min(channel_mult) < 1:
            raise ValueError(
                f"base_channels, num_res_blocks and every channel_mult must be >= 1 (and channel_mult non-empty), "
                f"got {base_channels}, {num_res_blocks}, {tuple(channel_mult)}")
        if not 0 < sigma_min < sigma_max or sigma_data <= 0:
            raise ValueError(f"need 0 < sigma_min < sigma_max and sigma_data > 0, got {sigma_min}, {sigma_max}, "
                             f"{sigma_data}")
        if len(data_range) != 2:
            raise ValueError(f"data_range must be (low, high), got {data_range!r}")
        emb_channels = 4 * base_channels if emb_channels is None else emb_channels
        self.channels = int(channels)
        self.sigma_data = float(sigma_data)
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self.data_range = (float(data_range[0]), float(data_range[1]))
        self.config = {
            "channels": self.channels, "base_channels": int(base_channels),
            "channel_mult": [int(m) for m in channel_mult], "num_res_blocks": int(num_res_blocks),
            "emb_channels": int(emb_channels), "sigma_data": self.sigma_data, "sigma_min": self.sigma_min,
            "sigma_max": self.sigma_max, "data_range": list(self.data_range),
        }
        self.net = UNetNet(self.channels, int(base_channels), list(channel_mult), int(num_res_blocks),
                           int(emb_channels))

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` has the channel count, device and dtype of the weights.

        The dtype may differ under autocast (which casts both). A sampler hands the prior tensors
        shaped, typed and placed like ``physics.A_adjoint(y)``, so a float64 ``y`` (as NumPy gives)
        fails here with a float32 prior.
        """
        super().check_input(x)
        weight = self.net.conv_in.weight
        if x.device != weight.device:
            raise ValueError(f"UNet's weights are on {weight.device}, its input on {x.device}: move the prior "
                             f"(prior.to(device)) or the data")
        if x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type):
            raise ValueError(f"UNet's weights are {weight.dtype}, its input {x.dtype}: cast the data (measurements "
                             f"and x_init) to {weight.dtype}, or the prior with prior.to({x.dtype})")

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Tweedie mean ``D(x, sigma)`` for ``x: (B, C, H, W)`` and ``sigma: (B,)``.

        On the CPU a large batch runs as several network calls (see ``_CPU_ACTIVATION_BUDGET``):
        the same estimate per image, up to float rounding.
        """
        if x.ndim != 4:
            raise ValueError(f"UNet expects images (B, C, H, W), got shape {tuple(x.shape)}")
        per_call = x.shape[0]
        if x.device.type == "cpu":
            widest = (3 * self.config["base_channels"] * self.config["channel_mult"][0] * x.shape[-2] * x.shape[-1]
                      * x.element_size())
            per_call = max(1, _CPU_ACTIVATION_BUDGET // widest)
        if per_call < x.shape[0]:
            sigma = sigma.expand(x.shape[0])  # (a broadcastable sigma of a direct call: one level per part)
            return torch.cat([self._denoise(part, s) for part, s in zip(x.split(per_call), sigma.split(per_call))])
        return self._denoise(x, sigma)

    def _denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = sigma.to(torch.float32)
        sd = self.sigma_data
        s4 = sigma_like(s, x)
        c_skip = sd**2 / (s4**2 + sd**2)
        c_out = s4 * sd / (s4**2 + sd**2).sqrt()
        c_in = 1.0 / (s4**2 + sd**2).sqrt()
        # sigma = 0 is allowed (c_out = 0 then); clamp only inside the log so F stays finite.
        c_noise = s.clamp_min(1e-20).log() / 4
        f = self.net((c_in * x).to(x.dtype), c_noise)
        return (c_skip * x + c_out * f.to(torch.float32)).to(x.dtype)
