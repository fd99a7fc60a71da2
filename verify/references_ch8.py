"""Independent PyTorch references for Chapter 8 and Appendix B (VAE, GANs, WGAN-GP, DQN, Q-learning, GCN, the
Gaussian KL), written from the book's definitions with the names of MODELS.md, never from the derivation.

Loss references register in :data:`verify.references.REFERENCES` (``f(**tensors, **options) -> loss``). The
WGAN-GP penalty differentiates the critic with ``torch.autograd.grad(..., create_graph=True)``, so that
autograd's gradient of the loss contains the second-order term; the DQN target is computed under
``torch.no_grad()``. Update programs (``q_learning``) register in :data:`UPDATES`: ``f(**state, **inputs,
**options) -> next state``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .references import _activation, _layer_loss, _register

__all__ = ["UPDATES", "critic", "generator"]

#: update programs: name -> f(**state, **inputs, **options) -> {state name: next value}
UPDATES: dict[str, Callable[..., dict[str, torch.Tensor]]] = {}


def _update(fn: Callable[..., dict[str, torch.Tensor]]) -> Callable[..., dict[str, torch.Tensor]]:
    UPDATES[fn.__name__] = fn
    return fn


@_register()
def kl_gaussian(*, M1: torch.Tensor, LV1: torch.Tensor, M2: torch.Tensor, LV2: torch.Tensor) -> torch.Tensor:
    """KL(N(M1, e^LV1) || N(M2, e^LV2)) = 1/2 sum(e^(LV1 - LV2) + (M1 - M2)^2 / e^LV2 - 1 + LV2 - LV1), batch mean.

    Written with torch.distributions (the closed form of ``kl_divergence`` for two Normals), summed over the
    k coordinates and averaged over the n samples.
    """
    p = torch.distributions.Normal(M1, torch.exp(LV1 / 2))
    q = torch.distributions.Normal(M2, torch.exp(LV2 / 2))
    return torch.distributions.kl_divergence(p, q).sum(dim=1).mean()


@_register()
def vae(*, W_e: torch.Tensor, b_e: torch.Tensor, W_mu: torch.Tensor, b_mu: torch.Tensor, W_lv: torch.Tensor,
        b_lv: torch.Tensor, W_h: torch.Tensor, b_h: torch.Tensor, W_d: torch.Tensor, b_d: torch.Tensor,
        X: torch.Tensor, E: torch.Tensor) -> torch.Tensor:
    """Negative ELBO: h = tanh(W_e x + b_e), mu, lv linear in h, z = mu + exp(lv/2) * e, xhat = W_d tanh(W_h z + b_h)
    + b_d; C = ||x - xhat||^2 + 1/2 sum(exp(lv) + mu^2 - 1 - lv), batch mean."""
    h = torch.tanh(F.linear(X, W_e, b_e))
    mu, lv = F.linear(h, W_mu, b_mu), F.linear(h, W_lv, b_lv)
    z = mu + torch.exp(0.5 * lv) * E
    xhat = F.linear(torch.tanh(F.linear(z, W_h, b_h)), W_d, b_d)
    rec = F.mse_loss(xhat, X, reduction="none").sum(dim=1)
    kl = 0.5 * (torch.exp(lv) + mu**2 - 1 - lv).sum(dim=1)
    return (rec + kl).mean()


def critic(x: torch.Tensor, W1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
    """D(x) = w2^T tanh(W1 x + b1) + b2, one value (a logit for the GAN) per row of x."""
    return F.linear(torch.tanh(F.linear(x, W1, b1)), w2[None, :], b2.reshape(1))[:, 0]


def generator(z: torch.Tensor, V1: torch.Tensor, c1: torch.Tensor, V2: torch.Tensor, c2: torch.Tensor) -> torch.Tensor:
    """G(z) = V2 tanh(V1 z + c1) + c2 per row of z."""
    return F.linear(torch.tanh(F.linear(z, V1, c1)), V2, c2)


@_register()
def gan(*, W1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor, V1: torch.Tensor,
        c1: torch.Tensor, V2: torch.Tensor, c2: torch.Tensor, X: torch.Tensor, Z: torch.Tensor,
        player: str = "discriminator", generator_loss: str = "minimax") -> torch.Tensor:
    """The discriminator's BCE with logits (real 1, generated 0), or the generator's minimax value
    E log D(x) + E log(1 - D(G(z))) or non-saturating loss -E log D(G(z)); F.binary_cross_entropy_with_logits."""
    u_real = critic(X, W1, b1, w2, b2)
    u_fake = critic(generator(Z, V1, c1, V2, c2), W1, b1, w2, b2)
    ones, zeros = torch.ones_like(u_real), torch.zeros_like(u_fake)
    bce_real = F.binary_cross_entropy_with_logits(u_real, ones)
    bce_fake = F.binary_cross_entropy_with_logits(u_fake, zeros)
    if player == "discriminator":
        return bce_real + bce_fake
    if generator_loss == "minimax":
        return -(bce_real + bce_fake)
    return F.binary_cross_entropy_with_logits(u_fake, torch.ones_like(u_fake))


@_register()
def wgan_gp(*, W1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor, V1: torch.Tensor,
            c1: torch.Tensor, V2: torch.Tensor, c2: torch.Tensor, X: torch.Tensor, Z: torch.Tensor,
            eps: torch.Tensor, lam: float = 10.0) -> torch.Tensor:
    """mean D(G(z)) - mean D(x) + lam mean(||grad_xt D(xt)||_2 - 1)^2, xt = eps x + (1 - eps) G(z); the inner
    gradient by torch.autograd.grad with create_graph=True (so the loss's gradient has the second-order term)."""
    fake = generator(Z, V1, c1, V2, c2)
    xt = eps[:, None] * X + (1 - eps[:, None]) * fake
    if not xt.requires_grad:  # xt is an input of the critic's gradient even where nothing upstream is a leaf
        xt = xt.requires_grad_(True)
    d_xt = critic(xt, W1, b1, w2, b2)
    (g,) = torch.autograd.grad(d_xt.sum(), xt, create_graph=True)
    penalty = ((torch.linalg.vector_norm(g, dim=1) - 1) ** 2).mean()
    return critic(fake, W1, b1, w2, b2).mean() - critic(X, W1, b1, w2, b2).mean() + lam * penalty


def _q(s: torch.Tensor, W1: torch.Tensor, b1: torch.Tensor, W2: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
    return F.linear(F.relu(F.linear(s, W1, b1)), W2, b2)


@_register()
def dqn(*, W1: torch.Tensor, b1: torch.Tensor, W2: torch.Tensor, b2: torch.Tensor, W1_t: torch.Tensor,
        b1_t: torch.Tensor, W2_t: torch.Tensor, b2_t: torch.Tensor, S: torch.Tensor, A: torch.Tensor,
        R: torch.Tensor, S_next: torch.Tensor, done: torch.Tensor, gamma: float = 0.99,
        huber: bool = False) -> torch.Tensor:
    """Semi-gradient TD loss: q(S) at the taken actions against R + gamma (1 - done) max_a q_target(S_next),
    the target computed under torch.no_grad(); F.mse_loss, or F.huber_loss (delta = 1) with huber=True."""
    q_sa = _q(S, W1, b1, W2, b2).gather(1, A.argmax(dim=1, keepdim=True))[:, 0]
    with torch.no_grad():
        target = R + gamma * (1 - done) * _q(S_next, W1_t, b1_t, W2_t, b2_t).max(dim=1).values
    return F.huber_loss(q_sa, target, delta=1.0) if huber else F.mse_loss(q_sa, target)


@_register()
def gcn(*, W: torch.Tensor, A_hat: torch.Tensor, H: torch.Tensor, G: torch.Tensor,
        activation: str = "relu") -> torch.Tensor:
    """C = sum(G * S(A_hat H W)): the graph convolution layer probed with the upstream gradient G."""
    return _layer_loss(_activation(activation, torch.linalg.multi_dot([A_hat, H, W])), G)


@_update
def q_learning(*, Q: torch.Tensor, s: torch.Tensor, a: torch.Tensor, r: torch.Tensor, s_next: torch.Tensor,
               done: torch.Tensor, alpha: float = 0.1, gamma: float = 0.9) -> dict[str, torch.Tensor]:
    """Q[s, a] += alpha (r + gamma (1 - done) max_a' Q[s', a'] - Q[s, a]) at the indices of the one-hot s, a, s'."""
    i, j, k = int(s.argmax()), int(a.argmax()), int(s_next.argmax())
    Q = Q.clone()
    Q[i, j] += alpha * (r + gamma * (1 - done) * Q[k].max() - Q[i, j])
    return {"Q": Q}


@_register()
def diffusion(*, W1: torch.Tensor, b1: torch.Tensor, W2: torch.Tensor, b2: torch.Tensor, X0: torch.Tensor,
              E: torch.Tensor, t: torch.Tensor, T_steps: int = 100, beta_1: float = 1e-4,
              beta_T: float = 0.02) -> torch.Tensor:
    """DDPM: betas = linspace(beta_1, beta_T, T), abar = cumprod(1 - betas) with abar_0 = 1, x_t = sqrt(abar_t) x0
    + sqrt(1 - abar_t) e, ehat = W2 relu(W1 [x_t; t/T] + b1) + b2, C = mean ||e - ehat||^2."""
    betas = torch.linspace(beta_1, beta_T, T_steps, dtype=X0.dtype, device=X0.device)
    abar = torch.cat([torch.ones(1, dtype=X0.dtype, device=X0.device), torch.cumprod(1 - betas, 0)])
    a = abar[t.long()][:, None]
    x_t = a.sqrt() * X0 + (1 - a).sqrt() * E
    inp = torch.cat([x_t, (t.to(X0.dtype) / T_steps)[:, None]], dim=1)
    ehat = F.linear(F.relu(F.linear(inp, W1, b1)), W2, b2)
    return ((E - ehat) ** 2).sum(dim=1).mean()
