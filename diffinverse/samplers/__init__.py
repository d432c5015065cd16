"""Posterior samplers: one file each, one shared loop, and the table that names them.

=====================  ========================================================================
``DPS``                Diffusion Posterior Sampling (Chung et al., ICLR 2023)
``REDDiff``            RED-Diff, variational (Mardani et al., ICLR 2024)
``DDS``                Decomposed Diffusion Sampling: CG on the Tweedie estimate (Chung et al., 2024)
``DiffusionMBIR``      3-D from a 2-D prior, ADMM-TV across slices (Chung et al., CVPR 2023)
``ActiveSubsampling``  Active Diffusion Subsampling: which measurement next (Nolan et al., TMLR 2025)
``STSL``               second-order Tweedie on a latent diffusion prior (Rout et al., CVPR 2024)
=====================  ========================================================================

How to add a sampler
--------------------
Subclass :class:`~diffinverse.samplers.base.DiffusionSampler` and write its ``step``; the paper's
update reads as one method::

    class TweedieGuided(DiffusionSampler):
        def step(self, x, sigma, sigma_next, noise, y, physics, state):
            x0_hat = self.denoise(x, sigma)                               # Tweedie mean
            grad, _ = data_fidelity_grad(x0_hat, y, physics)              # A^H (A x0_hat - y)
            x0_hat = x0_hat - self.step_size * grad                       # data consistency
            x_next = x0_hat + (sigma_next / sigma).to(x.dtype) * (x - x0_hat)   # DDIM, eta = 0
            return x_next, x0_hat

* ``sigma`` and ``sigma_next`` are 0-d float64 tensors on the state's device (float32 on devices
  without float64): compute the step's coefficients from them with torch operations, in the step,
  and cast them with ``.to(x.dtype)`` where they meet the state.
* ``noise`` is a standard normal draw shaped like ``x``, or ``None`` where ``draws_noise(sigma,
  sigma_next)`` says the step draws none (default: every step draws); a sampler that needs ``k``
  draws per step (a predictor and a corrector) sets ``noise_draws = k`` and gets them stacked,
  ``(k, *x.shape)``.
* The state may be anything ``init_x`` returns (an image shaped like ``A^H y`` by default; a
  latent, a volume), ``init_state`` may keep per-run tensors (optimiser moments, ADMM
  variables), and ``finalize`` maps the last state to what the call returns (decode a latent,
  or build the sampler's own frozen result type).
* Call the network only through ``self.denoise`` (it counts evaluations and keeps the layout);
  enable gradients only where the update differentiates through it (never around the loop).
* ``cuda_graph=True`` is offered only by samplers that set ``supports_cuda_graph = True``,
  promising a step without host synchronisation whose noise, when ``draws_noise`` says the step
  draws none, is weighted by zero (see :mod:`diffinverse.samplers.cuda_graph`).

Then give it an entry in :data:`SAMPLERS` (``samplers/table.py``) and settings in the tasks it
should solve (:mod:`diffinverse.tasks`). ``tests/test_sampler_contract.py`` holds a sampler written
this way; ``tests/test_sampler_base.py`` the checks every sampler passes (determinism, NFE count,
warm start, callback, bad input, layout).
"""
from .adaptation import Adaptation, AdaptationRecord
from .ads import ActiveResult, ActiveSubsampling
from .base import DiffusionSampler, Posterior
from .dds import DDS
from .dps import DPS
from .mbir import DiffusionMBIR
from .reddiff import REDDiff
from .stsl import STSL
from .table import SAMPLERS, SamplerSpec, sampler_spec

__all__ = ["ActiveResult", "ActiveSubsampling", "Adaptation", "AdaptationRecord", "DDS", "DPS", "DiffusionMBIR",
           "DiffusionSampler", "Posterior",
           "REDDiff", "SAMPLERS", "STSL", "SamplerSpec", "sampler_spec"]
