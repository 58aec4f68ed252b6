"""An ensemble reward surrogate (`AEPOConfig.active_surrogate='ensemble'`): several small heads, an ENN in spirit.

ActiveUltraFeedback (lasgroup) fits an ensemble of MLP heads on a frozen model's last hidden state and reads the
uncertainty from the spread of the heads' predictions; Dwaracherla et al. (2024) run double Thompson sampling over such
an ensemble. This module keeps the idea and the package's guarantees (closed form, deterministic by label set,
identical on every rank, saved in checkpoints through the labels it is refitted from):

* every head sees the same features: the surrogate's features x plus `hidden` random ReLU features
  relu(R z + b) / sqrt(hidden * F) of their standardised values z (mean / standard deviation over the labels), with
  R, b fixed by the seed — a one-hidden-layer MLP whose first layer is frozen, so each head's last layer has a
  closed-form fit;
* head m is a randomized-prior ridge regression (Osband et al. 2018): a prior weight draw g_m ~ N(0, alpha^-1 I) plus
  the ridge fit of the residual, with Bayesian-bootstrap weights c_p ~ Exp(1) per PROMPT (a prompt's labels move
  together), on the within-prompt centred targets and features like `BayesianLinearSurrogate`:
      w_m = (alpha I + beta Phi^T C_m Phi)^-1 beta Phi^T C_m (y - Phi g_m),   f_m(x) = phi(x) . (g_m + w_m);
* alpha and beta are the evidence-maximised precisions of the Bayesian linear model on the heads' own features (so
  the prior is on their scale);
* the posterior is the heads' empirical one: mean_i = mean_m f_m(x_i), and whitened coordinates
  u_i = (f_m(x_i) - mean_i)_m / sqrt(M - 1), so that u_i . u_j is the heads' covariance and a Thompson draw
  mean + u z is a Gaussian draw with that covariance — every acquisition works unchanged.

Every random number (R, b, g_m, c_p) comes from the counter-based hash of `search.py`, keyed by (seed, head, prompt key
or coordinate): the fit depends only on the set of labels, not on their order, batching, rank or device.
"""

from __future__ import annotations

import math

import torch

from .search import hash32
from .surrogate import BayesianLinearSurrogate, Posterior, SurrogateFit, pool_mean

__all__ = ["EnsembleSurrogate"]

STREAM_PROJECTION = 11  # R and b of the random ReLU features
STREAM_PRIOR = 12  # g_m
STREAM_BOOTSTRAP = 13  # c_p
_TWO_POW_32 = float(2**32)


def _uniform(seed: int, key: int, *counters) -> torch.Tensor:
    h = hash32(seed, torch.tensor([int(key)], dtype=torch.int64), *counters)[0]
    return (h.double() + 0.5) / _TWO_POW_32


def _normal(seed: int, key: int, stream: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Standard normals of `shape` (Box-Muller on the hash), a pure function of (seed, key, stream, shape)."""
    count = math.prod(shape)
    index = torch.arange(count, dtype=torch.int64)
    u1 = _uniform(seed, key, stream, 0, index)
    u2 = _uniform(seed, key, stream, 1, index)
    return (torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)).reshape(shape)


class EnsembleSurrogate(BayesianLinearSurrogate):
    """`heads` randomized-prior, bootstrapped heads on the features plus `hidden` random ReLU features.

    Same interface as `BayesianLinearSurrogate` (add / export / merge / fit / posterior); `seed` fixes the heads.
    """

    def __init__(
        self,
        prior_precision: float | None = None,
        noise_precision: float | None = None,
        heads: int = 10,
        hidden: int = 32,
        seed: int = 0,
        **kwargs,
    ):
        super().__init__(prior_precision, noise_precision, **kwargs)
        if not isinstance(heads, int) or heads < 2:
            raise ValueError(f"heads must be an integer >= 2, got {heads!r}")
        if not isinstance(hidden, int) or hidden < 0:
            raise ValueError(f"hidden must be an integer >= 0, got {hidden!r}")
        self.heads, self.hidden, self.seed = heads, hidden, int(seed)
        self._scale: tuple[torch.Tensor, torch.Tensor] | None = None  # (mean, std) of the raw features
        self._projection: tuple[torch.Tensor, torch.Tensor] | None = None  # (R [F, H], b [H])
        self._head_weights: torch.Tensor | None = None  # [D, M] g_m + w_m of every head

    def blank(self) -> EnsembleSurrogate:
        return type(self)(
            self.prior_precision,
            self.noise_precision,
            heads=self.heads,
            hidden=self.hidden,
            seed=self.seed,
            max_iterations=self.max_iterations,
            tolerance=self.tolerance,
        )

    def _phi(self, x: torch.Tensor) -> torch.Tensor:
        """[..., F] raw features -> [..., F + hidden] head features (before within-prompt / within-pool centring): the
        raw features (the linear model's) and the random ReLU features of their standardised values, scaled by
        1 / sqrt(hidden * F) to the size of a unit-norm embedding's coordinates."""
        if not self.hidden:
            return x
        mean, std = (t.to(x.device) for t in self._scale)
        R, b = (t.to(x.device) for t in self._projection)
        z = (x - mean) / std
        return torch.cat([x, torch.relu(z @ R + b) / math.sqrt(self.hidden * x.shape[-1])], dim=-1)

    def fit(self) -> SurrogateFit:
        """Refit the heads from all labels; alpha and beta by evidence maximisation of the linear model on the heads'
        own (centred) features, so that the prior precision is on the scale of the features the heads read."""
        self._head_weights = None
        everything = self.grouped()
        groups = [(pk, x, y) for pk, x, y in everything if len(y) >= 2]
        single = len(everything) - len(groups)
        if not groups:
            self.fitted, self._mean_w, self._basis = None, None, None
            return SurrogateFit(0, 0, single, math.nan, math.nan, 0, 0.0)
        raw = torch.cat([x for _, x, _ in groups])
        F = raw.shape[1]
        self._scale = (raw.mean(0), raw.std(0, correction=0).clamp_min(1e-6))
        if self.hidden:
            R = _normal(self.seed, 0, STREAM_PROJECTION, (F + 1, self.hidden)) / math.sqrt(F)
            self._projection = (R[:F], R[F])
        phis, ys, prompt_of = [], [], []
        for p, (_, x, y) in enumerate(groups):
            phi = self._phi(x)
            phis.append(phi - phi.mean(0, keepdim=True))
            ys.append(y - y.mean())
            prompt_of += [p] * len(y)
        Phi, y = torch.cat(phis), torch.cat(ys)
        fitted = self._fit_design(Phi, y, len(groups), single)  # alpha, beta (and the linear posterior) on Phi
        D = Phi.shape[1]
        alpha, beta = fitted.alpha, fitted.beta
        prompt_keys = torch.tensor([pk for pk, _, _ in groups], dtype=torch.int64)
        rows = torch.tensor(prompt_of, dtype=torch.int64)
        eye = torch.eye(D, dtype=torch.float64)
        weights = []
        for m in range(self.heads):
            u = (hash32(self.seed, prompt_keys, STREAM_BOOTSTRAP, m).double() + 0.5) / _TWO_POW_32
            c = (-torch.log(u))[rows]  # Bayesian bootstrap: Exp(1) weight per prompt
            g = _normal(self.seed, m + 1, STREAM_PRIOR, (D,)) / math.sqrt(alpha)
            Pc = Phi * c[:, None]
            w = torch.linalg.solve(alpha * eye + beta * Pc.T @ Phi, beta * Pc.T @ (y - Phi @ g))
            weights.append(g + w)
        self._head_weights = torch.stack(weights, 1)
        return fitted

    def posterior(self, features: torch.Tensor, mask: torch.Tensor) -> Posterior:
        """The heads' posterior over `features` [B, N, F], relative to each pool's mean (the linear prior when
        unfitted)."""
        if self._head_weights is None:
            alpha = 1.0 if self.prior_precision is None else float(self.prior_precision)
            x = features.to(torch.float64)
            x = (x - pool_mean(x, mask.to(x.device))) * mask.to(device=x.device, dtype=torch.float64)[..., None]
            return Posterior(torch.zeros(x.shape[:2], dtype=torch.float64, device=x.device), x / math.sqrt(alpha), mask)
        mask = mask.to(features.device)
        valid = mask.to(torch.float64)[..., None]
        phi = self._phi(features.to(torch.float64))
        phi = (phi - pool_mean(phi, mask)) * valid
        f = phi @ self._head_weights.to(phi.device)  # [B, N, M]
        mean = f.mean(-1)
        return Posterior(mean, (f - mean[..., None]) / math.sqrt(self.heads - 1), mask)
