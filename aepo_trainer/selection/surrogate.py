"""A reward surrogate fitted online on the labels already paid for: closed-form Bayesian linear regression.

The active selection strategies (`selection/active.py`) need, for every candidate of a new pool, a predicted score and
an uncertainty of that prediction — and, for a pair, the uncertainty of the score *difference*, which is what a
preference label resolves. A Bayesian linear model on features the pipeline already has gives all of that in closed
form, in milliseconds, with no training loop:

    y_c = w^T x_c + noise,   w ~ N(0, alpha^-1 I),   noise ~ N(0, beta^-1)
    posterior: Sigma = (alpha I + beta X^T X)^-1,   m = beta Sigma X^T y
    mu_i = m^T x_i,   sigma^2_ij = (x_i - x_j)^T Sigma (x_i - x_j)

The model is a within-prompt ("fixed effects") regression: targets are the paid scores CENTRED PER PROMPT (the
mean of the prompt's valid labels subtracted) and so are the features, y_c - mean_p(y) = w^T (x_c - mean_p(x)).
Only the order inside a pool matters for selection and pairing, and scores of different prompts are not on one scale
(an easy prompt lifts every candidate); centring both sides makes a planted linear reward exactly recoverable, which
centring the targets alone does not. Predictions are likewise relative to the pool mean of the features, so mu_i is
"how much better than this pool's average" and sigma_i its uncertainty. A prompt with a single valid label carries
no within-prompt information and is left out (counted in `SurrogateFit.single_label_prompts`).

Features (`FEATURES`, a list of functions one can extend) are the candidate's normalised embedding and its log length.
`implicit_reward_feature` adds the policy's implicit reward β·(log π − log π_ref) of the candidate
(`AEPOConfig.active_implicit_reward_feature`): a *policy signal*, which no function of the rows and embeddings can
compute, so a feature declares the signals it reads (`signals = ("implicit_rewards",)`) and `pool_features` hands it
the per-candidate tensors the caller computed (the trainer, in the training step, where the model is). `pool_relative_feature` (embedding minus pool mean) is
provided for feature lists of models without within-prompt centring; under it, it equals `embedding_feature`, so the
default list leaves it out. Features are computed once per pool, when it is observed, and stored with the label.

Hyper-parameters: alpha (prior precision) and beta (noise precision) are set by evidence maximisation with MacKay's
fixed-point updates (Bishop, PRML §3.5.2) on the eigen-decomposition of X^T X, or fixed to the values given. The
noise update counts the centred residual's degrees of freedom, n - P for n labels of P prompts (beta = (n - P -
gamma) / |y - X m|^2): centring a prompt's m labels leaves its noise m - 1 dimensions, and with k = 2 the two rows
of a prompt are one observation written twice. Counting n instead (as before issue 27's fix) claimed twice the data
it had at k = 2: the evidence then let the noise shrink towards zero and the fit chase the labels with hundreds of
effective parameters. Measured on the AlpacaEval pools (MiniLM, random pairs, 400 prompts): out-of-sample pairwise
accuracy fell from 0.62 to 0.57 as labels accumulated, against 0.66-0.70 with the right count
(experiments/surrogate_noise_count.py).

Determinism: the fit depends only on the SET of labels. They are keyed by (prompt key, completion key), sorted by
that key before the design matrix is built, and solved in float64, so the surrogate is bitwise identical whatever
order the labels arrived in, after a resume that replays them from the annotation store, and on every rank of a
multi-process run that gathered the same labels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "FEATURES",
    "HIDDEN_STATE_FEATURES",
    "POLICY_FEATURES",
    "BayesianLinearSurrogate",
    "FeatureFn",
    "Posterior",
    "SurrogateFit",
    "embedding_feature",
    "features_for",
    "hidden_state_feature",
    "implicit_reward_feature",
    "log_length_feature",
    "policy_hidden_feature",
    "pool_features",
    "pool_relative_feature",
]

#: A feature function: (rows, embeddings [B, N, D] float, mask [B, N] bool, completions column) -> [B, N, F]. One that
#: reads policy signals names them in a `signals` attribute and receives them as keyword arguments ([B, N] tensors).
FeatureFn = Callable[[list, torch.Tensor, torch.Tensor, str], torch.Tensor]

MIN_PRECISION = 1e-8  # alpha and beta are kept in [MIN_PRECISION, MAX_PRECISION] by the evidence updates
MAX_PRECISION = 1e8


# ----------------------------------------------------------------------------------------------------- features
def _unit(embeddings: torch.Tensor) -> torch.Tensor:
    e = embeddings.double()
    return e / e.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def pool_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(x.dtype)[..., None]
    return (x * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp_min(1.0)


def embedding_feature(rows, embeddings, mask, completions_column):
    """The L2-normalised candidate embedding: what the candidate says, comparable across prompts."""
    return _unit(embeddings)


def pool_relative_feature(rows, embeddings, mask, completions_column):
    """The normalised embedding minus the mean of its pool's valid candidates: how it differs from its siblings."""
    e = _unit(embeddings)
    return e - pool_mean(e, mask)


def log_length_feature(rows, embeddings, mask, completions_column):
    """log(1 + characters): judges (and people) reward length, and a truncating embedder hides it."""
    B, N = mask.shape
    lengths = torch.zeros(B, N, dtype=torch.float64)
    for b, row in enumerate(rows):
        pool = row[completions_column]
        n = min(N, len(pool))
        lengths[b, :n] = torch.tensor([math.log1p(len(str(text))) for text in pool[:n]], dtype=torch.float64)
    return lengths.to(mask.device)[..., None]


def implicit_reward_feature(rows, embeddings, mask, completions_column, *, implicit_rewards):
    """The policy's implicit reward β·(log π(y|x) − log π_ref(y|x)) of the candidate: what the policy being trained
    already prefers (ActiveDPO, arXiv 2505.19241). Computed by `AEPOTrainer` in the training step; the value stored
    with a label is the one at the step the label was paid for."""
    B, N = mask.shape
    if tuple(implicit_rewards.shape) != (B, N):
        raise ValueError(f"implicit_rewards has shape {list(implicit_rewards.shape)}, the pools are {[B, N]}")
    return implicit_rewards.to(device=mask.device, dtype=torch.float64)[..., None]


implicit_reward_feature.signals = ("implicit_rewards",)


def hidden_state_feature(rows, embeddings, mask, completions_column, *, hidden_states):
    """A model's hidden state of each candidate ([B, N, H], L2-normalised): the features of a feature model
    (`active_feature_model`, `selection/feature_model.py`) or any per-candidate feature matrix a caller computes
    (e.g. the policy's own final hidden states in the trainer). Non-finite rows stay non-finite: the selector counts
    them and keeps them out of the surrogate."""
    B, N = mask.shape
    if hidden_states.dim() != 3 or tuple(hidden_states.shape[:2]) != (B, N):
        raise ValueError(f"hidden_states has shape {list(hidden_states.shape)}, the pools are {[B, N]} x features")
    return _unit(hidden_states.to(device=mask.device))


hidden_state_feature.signals = ("hidden_states",)


def policy_hidden_feature(rows, embeddings, mask, completions_column, *, policy_features):
    """The policy's own representation of the candidate: its last hidden layer averaged over the completion's tokens,
    L2-normalised (`AEPOConfig.active_policy_features`; ActiveDPO and Kveton et al. use the policy's last layer).
    Computed by `AEPOTrainer` in the same pass as the implicit reward (`aepo_trainer.trainer.policy_signals`)."""
    B, N = mask.shape
    if tuple(policy_features.shape[:2]) != (B, N) or policy_features.dim() != 3:
        raise ValueError(f"policy_features has shape {list(policy_features.shape)}, the pools are {[B, N]} x H")
    return _unit(policy_features.to(device=mask.device))


policy_hidden_feature.signals = ("policy_features",)

#: The default feature functions, concatenated in this order.
FEATURES: tuple[FeatureFn, ...] = (embedding_feature, log_length_feature)
#: The defaults plus the policy's implicit reward (the trainer's `active_implicit_reward_feature=True`).
POLICY_FEATURES: tuple[FeatureFn, ...] = (*FEATURES, implicit_reward_feature)
#: The defaults plus a model's hidden state of each candidate (`active_feature_model`, or a caller's feature matrix).
HIDDEN_STATE_FEATURES: tuple[FeatureFn, ...] = (*FEATURES, hidden_state_feature)


def features_for(config) -> tuple[FeatureFn, ...]:
    """The feature list an `AEPOConfig` asks for: the defaults, plus the implicit reward
    (`active_implicit_reward_feature`), the policy's hidden state (`active_policy_features`) and a feature model's
    (`active_feature_model`)."""
    features = POLICY_FEATURES if getattr(config, "active_implicit_reward_feature", False) else FEATURES
    if getattr(config, "active_policy_features", False):
        features = (*features, policy_hidden_feature)
    if getattr(config, "active_feature_model", None):  # a feature model's hidden states (`aepo select`, issue 27)
        features = (*features, hidden_state_feature)
    return features


def pool_features(
    rows,
    embeddings,
    mask,
    completions_column="completions",
    features: Sequence[FeatureFn] = FEATURES,
    signals: dict | None = None,
):
    """[B, N, F] float64 features of every candidate (zeros on padding). `signals` holds the per-candidate policy
    signals (`{"implicit_rewards": [B, N]}`) the features that declare them read."""
    if mask is None:
        mask = torch.ones(embeddings.shape[:2], dtype=torch.bool, device=embeddings.device)
    parts = []
    for f in features:
        needs = tuple(getattr(f, "signals", ()))
        missing = [name for name in needs if (signals or {}).get(name) is None]
        if missing:
            raise ValueError(
                f"the surrogate feature {getattr(f, '__name__', f)!r} reads {', '.join(missing)}, a signal of the "
                "policy being trained: only AEPOTrainer computes it (in the training step); `aepo select` cannot"
            )
        kwargs = {name: signals[name] for name in needs}
        parts.append(f(rows, embeddings, mask, completions_column, **kwargs).to(torch.float64))
    x = torch.cat(parts, dim=-1)
    return x * mask.to(x.dtype)[..., None]


# ----------------------------------------------------------------------------------------------------- the model
@dataclass
class SurrogateFit:
    """What one fit used: counts (so that a user sees what the model learned from) and the hyper-parameters."""

    labels: int  # valid labels used (from prompts with >= 2 of them)
    prompts: int  # prompts contributing
    single_label_prompts: int  # prompts left out: one valid label carries no within-prompt order
    alpha: float  # prior precision
    beta: float  # noise precision
    iterations: int  # evidence-maximisation iterations (0 when both are fixed)
    effective_parameters: float  # gamma = sum_i beta s_i / (alpha + beta s_i): how many directions the data pin down


@dataclass
class Posterior:
    """The surrogate's posterior over the candidates of a batch of pools (float64, on the features' device).

    mean: [B, N] predicted score (only differences inside a pool are meaningful).
    whitened: [B, N, F] u_i = Sigma^{1/2} x_i in the posterior's eigenbasis, so that Cov(f_i, f_j) = u_i . u_j,
        sigma^2_ij = |u_i - u_j|^2, and a posterior draw is f = mean + u . z with z ~ N(0, I_F).
    mask: [B, N] valid candidates.
    """

    mean: torch.Tensor
    whitened: torch.Tensor
    mask: torch.Tensor

    @property
    def std(self) -> torch.Tensor:
        """[B, N] marginal posterior standard deviation sigma_i of each candidate's score."""
        return self.whitened.pow(2).sum(-1).sqrt()

    def pair_std(self) -> torch.Tensor:
        """[B, N, N] sigma_ij, the posterior standard deviation of f_i - f_j (0 on the diagonal)."""
        u = self.whitened
        sq = u.pow(2).sum(-1)
        var = sq[:, :, None] + sq[:, None, :] - 2.0 * torch.bmm(u, u.transpose(1, 2))
        return var.clamp_min_(0.0).sqrt_()


class BayesianLinearSurrogate:
    """Bayesian linear regression on per-prompt centred scores, refitted from its whole label set.

    Args:
        prior_precision: alpha; None sets it by evidence maximisation (starting from 1).
        noise_precision: beta; None sets it by evidence maximisation (starting from (n - P) / the centred targets'
            sum of squares: 1 / their variance per degree of freedom).
        max_iterations / tolerance: of the MacKay fixed-point iteration (relative change of alpha and beta). While
            the labels pin down fewer directions than there are features (the first batches at k = 2 with a
            384-dimensional embedding) the iteration converges slowly and may stop at the cap; `SurrogateFit.iterations`
            says so, and the fit is then that of the capped iteration (deterministic, like every fit).

    Labels are added with `add` (keyed, so a label seen twice counts once: the first one is kept) and the model is
    refitted with `fit`; `posterior(features, mask)` predicts for new pools.
    """

    def __init__(
        self,
        prior_precision: float | None = None,
        noise_precision: float | None = None,
        max_iterations: int = 100,
        tolerance: float = 1e-6,
    ):
        for name, value in (("prior_precision", prior_precision), ("noise_precision", noise_precision)):
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be None (evidence maximisation) or a finite number > 0, got {value!r}")
        self.prior_precision = prior_precision
        self.noise_precision = noise_precision
        self.max_iterations = int(max_iterations)
        self.tolerance = float(tolerance)
        self._labels: dict[tuple[int, int], tuple[torch.Tensor, float]] = {}
        self.fitted: SurrogateFit | None = None
        self._mean_w: torch.Tensor | None = None  # [F] posterior mean of w
        self._basis: torch.Tensor | None = None  # [F, F] V * (alpha + beta s)^-1/2: x -> whitened coordinates
        self.target_scale = 1.0  # std of the centred training targets (the unit of the `aepo_ucb` quality term)

    # ------------------------------------------------------------------------------------------------ data
    def __len__(self) -> int:
        return len(self._labels)

    def add(self, prompt_key: int, completion_key: int, features: torch.Tensor, score: float) -> bool:
        """Add one valid label; returns False (and keeps the first) when the key is already there."""
        key = (int(prompt_key), int(completion_key))
        if key in self._labels:
            return False
        self._labels[key] = (features.detach().to("cpu", torch.float64).clone(), float(score))
        return True

    def export(self, keys=None) -> list[tuple[int, int, list[float], float]]:
        """The labels (all, or those of `keys`) as plain tuples `(prompt key, completion key, features, score)`: what
        a checkpoint stores and what the ranks of a multi-process run exchange."""
        chosen = sorted(self._labels) if keys is None else sorted(keys)
        return [(pk, ck, self._labels[(pk, ck)][0].tolist(), self._labels[(pk, ck)][1]) for pk, ck in chosen]

    def merge(self, items) -> int:
        """Add exported labels (keys already present are kept as they are); returns how many were new."""
        return sum(self.add(pk, ck, torch.tensor(feats, dtype=torch.float64), score) for pk, ck, feats, score in items)

    def keys(self) -> set[tuple[int, int]]:
        return set(self._labels)

    def blank(self) -> BayesianLinearSurrogate:
        """An empty surrogate with the same settings (the safety rule's cross-validation fits one per fold)."""
        return type(self)(self.prior_precision, self.noise_precision, self.max_iterations, self.tolerance)

    def restricted(self, prompt_keys) -> BayesianLinearSurrogate:
        """An unfitted surrogate with the same settings holding only the labels of `prompt_keys` (shared tensors,
        never modified: labels are immutable once added)."""
        keep = set(prompt_keys)
        other = self.blank()
        other._labels = {key: value for key, value in self._labels.items() if key[0] in keep}
        return other

    def grouped(self):
        """[(prompt key, features [m, F], scores [m])] of every prompt, sorted by key (labels sorted by completion
        key): the raw, uncentred material of `training_set` (the ensemble surrogate builds its own features from it)."""
        groups: dict[int, list[tuple[int, int]]] = {}
        for key in sorted(self._labels):
            groups.setdefault(key[0], []).append(key)
        return [
            (
                pk,
                torch.stack([self._labels[k][0] for k in members]),
                torch.tensor([self._labels[k][1] for k in members], dtype=torch.float64),
            )
            for pk, members in sorted(groups.items())
        ]

    def training_set(self):
        """(X [n, F], y [n] centred per prompt, prompts, single-label prompts), sorted by key: order-independent."""
        xs, ys, prompts, single = [], [], 0, 0
        for _, feats, scores in self.grouped():
            if len(scores) < 2:
                single += 1
                continue
            prompts += 1
            ys.append(scores - scores.mean())
            xs.append(feats - feats.mean(0, keepdim=True))
        if not xs:
            return None, None, prompts, single
        return torch.cat(xs), torch.cat(ys), prompts, single

    # ------------------------------------------------------------------------------------------------ fit
    @property
    def ready(self) -> bool:
        return self.fitted is not None and self.fitted.labels > 0

    def fit(self) -> SurrogateFit:
        """Refit from all labels (float64, CPU: bitwise reproducible). A model with no usable labels stays unfitted."""
        X, y, prompts, single = self.training_set()
        if X is None:
            self.fitted, self._mean_w, self._basis = None, None, None
            return SurrogateFit(0, prompts, single, math.nan, math.nan, 0, 0.0)
        return self._fit_design(X, y, prompts, single)

    def _fit_design(self, X: torch.Tensor, y: torch.Tensor, prompts: int, single: int) -> SurrogateFit:
        """The posterior and the evidence-maximised alpha, beta for a centred design X [n, F] and targets y [n]
        (the ensemble calls it on its own features)."""
        n, F = X.shape
        # the residual's degrees of freedom: centring a prompt's m labels removes one (its centred noise lives in
        # m - 1 dimensions; with k = 2 the two rows of a prompt are mirror images, one observation)
        dof = max(n - prompts, 1)
        s, V = torch.linalg.eigh(X.T @ X)  # X^T X = V diag(s) V^T
        s = s.clamp_min(0.0)
        Xty_v = V.T @ (X.T @ y)  # X^T y in the eigenbasis
        yy = float(y @ y)
        alpha = 1.0 if self.prior_precision is None else float(self.prior_precision)
        var_y = yy / n
        noise_var = yy / dof
        beta = (
            (1.0 / noise_var if noise_var > 0 else 1.0) if self.noise_precision is None else float(self.noise_precision)
        )
        beta = min(max(beta, MIN_PRECISION), MAX_PRECISION)
        iterations = 0
        estimate = self.prior_precision is None or self.noise_precision is None
        while estimate and iterations < self.max_iterations:
            iterations += 1
            m_v = beta * Xty_v / (alpha + beta * s)  # posterior mean in the eigenbasis
            gamma = float((beta * s / (alpha + beta * s)).sum())
            new_alpha, new_beta = alpha, beta
            mm = float(m_v @ m_v)
            if self.prior_precision is None and mm > 0:
                new_alpha = min(max(gamma / mm, MIN_PRECISION), MAX_PRECISION)
            # ||y - X m||^2 = y.y - 2 m.X^T y + m^T X^T X m, in the eigenbasis
            residual = max(yy - 2.0 * float(m_v @ Xty_v) + float((s * m_v * m_v).sum()), 0.0)
            if self.noise_precision is None and dof - gamma > 0 and residual > 0:
                new_beta = min(max((dof - gamma) / residual, MIN_PRECISION), MAX_PRECISION)
            change = max(abs(new_alpha - alpha) / alpha, abs(new_beta - beta) / beta)
            alpha, beta = new_alpha, new_beta
            if change < self.tolerance:
                break
        denom = alpha + beta * s
        self._mean_w = V @ (beta * Xty_v / denom)
        self._basis = V * denom.rsqrt()[None, :]
        self.target_scale = math.sqrt(var_y) if var_y > 0 else 1.0
        self.fitted = SurrogateFit(
            labels=n,
            prompts=prompts,
            single_label_prompts=single,
            alpha=alpha,
            beta=beta,
            iterations=iterations,
            effective_parameters=float((beta * s / denom).sum()),
        )
        return self.fitted

    # ------------------------------------------------------------------------------------------------ predict
    def posterior(self, features: torch.Tensor, mask: torch.Tensor) -> Posterior:
        """The posterior over `features` [B, N, F], relative to each pool's mean over its valid candidates (the prior
        N(0, alpha^-1 I) when unfitted). Padding gets zeros."""
        valid = mask.to(device=features.device, dtype=torch.float64)[..., None]
        x = features.to(torch.float64)
        x = (x - pool_mean(x, mask.to(features.device))) * valid
        if self._mean_w is None:
            alpha = 1.0 if self.prior_precision is None else float(self.prior_precision)
            return Posterior(torch.zeros(x.shape[:2], dtype=torch.float64, device=x.device), x / math.sqrt(alpha), mask)
        w, basis = self._mean_w.to(x.device), self._basis.to(x.device)
        return Posterior(x @ w, x @ basis, mask)
