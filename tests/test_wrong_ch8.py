"""Planted bugs in Chapter 8 and Appendix B, each rejected by ``verify.check``.

Every bug is planted twice where it can be: as a user's implementation (torch code, checked against the zoo's
reference) and as a model of one's own written with the Builder (the derive -> numeric path, checked against
the zoo's independent reference). Each wrong model and implementation has a right twin, built by the same
helper with the bug switched off, that passes: the rejection is the bug's, not the helper's. The reports must
name exactly the quantities the bug touches (e.g. the critic's W1, b1, w2 but never b2 or the loss for the
penalty's missing second-order term).

- a WGAN-GP penalty without its second-order term (the critic's gradient treated as a constant);
- a DQN that differentiates through its target (no stop-gradient / ``torch.no_grad``);
- a Gaussian KL with the sign of its log-variance term flipped;
- a VAE without the reparameterisation path (the latent sample detached from the encoder).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

import derive
import verify
from derive import nn
from verify.references_ch8 import critic, generator

EXAMPLES = 4


def autograd_impl(model: derive.Model, loss: Callable[..., torch.Tensor]) -> Callable[..., dict[str, Any]]:
    """A user's implementation: ``loss(**tensors)`` and torch autograd's gradients in ``model.grad_names``."""

    def impl(**t: torch.Tensor) -> dict[str, Any]:
        leaves = {k: t[k].clone().requires_grad_(True) for k in model.grad_names}
        value = loss(**{**t, **leaves}, **model.options)
        grads = torch.autograd.grad(value, list(leaves.values()), allow_unused=True)
        return {"loss": value.detach(), "grad": {k: (g if g is not None else torch.zeros_like(t[k]))
                                                 for k, g in zip(leaves, grads)}}

    return impl


def rejected(model: derive.Model, **kw: Any) -> verify.Mismatch:
    with pytest.raises(verify.Mismatch) as ei:
        verify.check(model, examples=EXAMPLES, derandomize=True, **kw)
    return ei.value


def accepted(model: derive.Model, **kw: Any) -> None:
    assert verify.check(model, examples=EXAMPLES, derandomize=True, **kw).examples == EXAMPLES


def failing(err: verify.Mismatch) -> set[str]:
    """The quantities the report names as wrong (``the loss``, ``gradient W1``, ...)."""
    assert err.failures, str(err)
    return {f.quantity for f in err.failures}


#: the critic's gradients that the penalty's second-order term reaches (b2 is not in grad_x D)
PENALISED = {"gradient W1", "gradient b1", "gradient w2"}
ENCODER = {f"gradient {k}" for k in ("W_e", "b_e", "W_mu", "b_mu", "W_lv", "b_lv")}


# -- WGAN-GP: the penalty's second-order term ----------------------------------------------------------------


def _wgan_gp_loss(second_order: bool) -> Callable[..., torch.Tensor]:
    """A user's WGAN-GP critic loss in torch; without ``second_order`` the critic's gradient is taken without
    ``create_graph=True`` (its value is right, the loss's gradient misses the second derivative)."""

    def loss(*, W1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor, V1: torch.Tensor,
             c1: torch.Tensor, V2: torch.Tensor, c2: torch.Tensor, X: torch.Tensor, Z: torch.Tensor,
             eps: torch.Tensor, lam: float) -> torch.Tensor:
        fake = generator(Z, V1, c1, V2, c2)
        xt = (eps[:, None] * X + (1 - eps[:, None]) * fake).requires_grad_(True)
        (g,) = torch.autograd.grad(critic(xt, W1, b1, w2, b2).sum(), xt, create_graph=second_order)
        penalty = ((torch.linalg.vector_norm(g, dim=1) - 1) ** 2).mean()
        return critic(fake, W1, b1, w2, b2).mean() - critic(X, W1, b1, w2, b2).mean() + lam * penalty

    return loss


def test_wgan_gp_penalty_without_second_order_term_is_rejected() -> None:
    m = derive.models.get("wgan_gp")
    accepted(m, implementation=autograd_impl(m, _wgan_gp_loss(second_order=True)))
    err = rejected(m, implementation=autograd_impl(m, _wgan_gp_loss(second_order=False)))
    assert "the implementation" in str(err)
    assert failing(err) <= PENALISED and failing(err) & {"gradient W1", "gradient w2"}, failing(err)


def _wgan_gp(second_order: bool) -> derive.Model:
    """The zoo's WGAN-GP critic loss written with the Builder; without ``second_order`` the critic's gradient
    enters the penalty behind a stop-gradient (its value is right, its derivative is dropped)."""
    b = derive.Builder("my_wgan_gp", "WGAN-GP, own", "test", {"lam": 10.0})
    b.samples("n", 3, 1, 4)
    p, k, h, h2 = b.dim("p", 2, 1, 3), b.dim("k", 2, 1, 3), b.dim("h", 3, 1, 4), b.dim("h2", 2, 1, 3)
    W1, b1, w2, b2 = b.param("W1", (h, p)), b.param("b1", (h,)), b.param("w2", (h,)), b.param("b2", ())
    V1, c1, V2, c2 = b.input("V1", (h2, k)), b.input("c1", (h2,)), b.input("V2", (p, h2)), b.input("c2", (p,))
    x, z = b.input("X", (p,), batched=True), b.input("Z", (k,), batched=True)
    eps = b.input("eps", (), batched=True, domain="unit")

    def D(u: Any) -> Any:
        return nn.dot(w2, nn.tanh(W1 @ u + b1)) + b2

    xg = b.eq("xg", V2 @ nn.tanh(V1 @ z + c1) + c2)
    xh = b.eq("xh", eps * x + (1 - eps) * xg)
    dh = b.eq("dh", D(xh))
    g = b.gradient(dh, xh, "g")
    g = g if second_order else nn.stop_gradient(g)
    b.eq("C", D(xg) - D(x) + 10.0 * (nn.norm(g) - 1) ** 2)
    return b.model(hard=())


def test_wgan_gp_model_without_second_order_term_is_rejected() -> None:
    ref = verify.REFERENCES["wgan_gp"]
    accepted(_wgan_gp(second_order=True), reference=ref)
    err = rejected(_wgan_gp(second_order=False), reference=ref)
    assert failing(err) <= PENALISED and failing(err) & {"gradient W1", "gradient w2"}, failing(err)


# -- DQN: no gradient through the target ---------------------------------------------------------------------


def _dqn_online_target(stop: bool) -> derive.Model:
    """A DQN whose target uses the online network itself (no target network); without ``stop`` the loss is
    differentiated through the target too (the full gradient instead of the semi-gradient)."""
    b = derive.Builder("dqn_online", "DQN, target from the online network", "test", {"gamma": 0.9})
    b.samples("n", 4, 1, 5)
    d, hdim, K = b.dim("d", 3, 1, 4), b.dim("h", 3, 1, 4), b.dim("K", 3, 2, 4)
    W1, b1, W2, b2 = b.param("W1", (hdim, d)), b.param("b1", (hdim,)), b.param("W2", (K, hdim)), b.param("b2", (K,))
    s, s1 = b.input("S", (d,), batched=True), b.input("S_next", (d,), batched=True)
    a = b.input("A", (K,), batched=True, domain="one_hot")
    r, done = b.input("R", (), batched=True), b.input("done", (), batched=True, domain="mask")

    def q(u: Any) -> Any:
        return W2 @ nn.relu(W1 @ u + b1) + b2

    y = r + 0.9 * (1 - done) * nn.max_(q(s1))
    b.eq("C", (nn.dot(a, q(s)) - (nn.stop_gradient(y) if stop else y)) ** 2)
    return b.model(kinks=True)


def _dqn_online_reference(*, W1: torch.Tensor, b1: torch.Tensor, W2: torch.Tensor, b2: torch.Tensor, S: torch.Tensor,
                          A: torch.Tensor, R: torch.Tensor, S_next: torch.Tensor, done: torch.Tensor,
                          gamma: float) -> torch.Tensor:
    """The semi-gradient: the zoo's reference with the online weights as the target network (torch.no_grad)."""
    return verify.REFERENCES["dqn"](W1=W1, b1=b1, W2=W2, b2=b2, W1_t=W1, b1_t=b1, W2_t=W2, b2_t=b2, S=S, A=A, R=R,
                                    S_next=S_next, done=done, gamma=gamma)


def test_dqn_differentiating_through_the_target_is_rejected() -> None:
    accepted(_dqn_online_target(stop=True), reference=_dqn_online_reference)
    err = rejected(_dqn_online_target(stop=False), reference=_dqn_online_reference)
    # the value is the same either way: only gradients of the online network are named
    assert failing(err) <= {"gradient W1", "gradient b1", "gradient W2", "gradient b2"}, failing(err)


def _dqn_loss(through_target: bool) -> Callable[..., torch.Tensor]:
    """A user's DQN loss for the zoo's dqn; with ``through_target`` the target keeps the graph of the online
    network: its value is the target network's (straight through), its gradient flows into the online weights
    at s'. The right twin computes the target under torch.no_grad()."""

    def loss(**t: Any) -> torch.Tensor:
        gamma = t.pop("gamma")
        t.pop("huber")

        def q(s: torch.Tensor, W1: Any, b1: Any, W2: Any, b2: Any) -> torch.Tensor:
            return torch.nn.functional.linear(torch.relu(torch.nn.functional.linear(s, W1, b1)), W2, b2)

        if through_target:
            online = q(t["S_next"], t["W1"], t["b1"], t["W2"], t["b2"])
            frozen = q(t["S_next"], t["W1_t"], t["b1_t"], t["W2_t"], t["b2_t"])
            best = (online - online.detach() + frozen).max(dim=1).values  # the bug: no torch.no_grad()
        else:
            with torch.no_grad():
                best = q(t["S_next"], t["W1_t"], t["b1_t"], t["W2_t"], t["b2_t"]).max(dim=1).values
        target = t["R"] + gamma * (1 - t["done"]) * best
        q_sa = (q(t["S"], t["W1"], t["b1"], t["W2"], t["b2"]) * t["A"]).sum(dim=1)
        return ((q_sa - target) ** 2).mean()

    return loss


def test_dqn_implementation_through_the_target_is_rejected() -> None:
    m = derive.models.get("dqn")
    accepted(m, implementation=autograd_impl(m, _dqn_loss(through_target=False)))
    err = rejected(m, implementation=autograd_impl(m, _dqn_loss(through_target=True)))
    assert "the implementation" in str(err)
    assert failing(err) <= {"gradient W1", "gradient b1", "gradient W2", "gradient b2"}, failing(err)


# -- the Gaussian KL: the sign of the log-variance term ------------------------------------------------------


def _kl(sign: int) -> derive.Model:
    b = derive.Builder("my_kl", "Gaussian KL, own", "test")
    b.samples("n", 3, 1, 4)
    k = b.dim("k", 2, 1, 4)
    m1, lv1, m2, lv2 = (b.input(nm, (k,), batched=True) for nm in ("M1", "LV1", "M2", "LV2"))
    b.eq("C", nn.sum_(nn.exp(lv1 - lv2) + (m1 - m2) ** 2 / nn.exp(lv2) - 1 + sign * (lv2 - lv1)) / 2)
    return b.model(diff_inputs=("M1", "LV1", "M2", "LV2"), hard=())


def _kl_loss(sign: int) -> Callable[..., torch.Tensor]:
    def loss(*, M1: torch.Tensor, LV1: torch.Tensor, M2: torch.Tensor, LV2: torch.Tensor) -> torch.Tensor:
        return (0.5 * (torch.exp(LV1 - LV2) + (M1 - M2) ** 2 / torch.exp(LV2) - 1 + sign * (LV2 - LV1)).sum(1)).mean()

    return loss


def test_kl_with_the_wrong_sign_is_rejected() -> None:
    ref = verify.REFERENCES["kl_gaussian"]
    accepted(_kl(+1), reference=ref)
    err = rejected(_kl(-1), reference=ref)
    # the value and the log-variances' gradients are wrong; the means' are not (the term has no mean in it)
    assert "the loss" in failing(err) and failing(err) <= {"the loss", "gradient LV1", "gradient LV2"}
    m = derive.models.get("kl_gaussian")
    accepted(m, implementation=autograd_impl(m, _kl_loss(+1)))
    err = rejected(m, implementation=autograd_impl(m, _kl_loss(-1)))
    assert "the implementation" in str(err) and "the loss" in failing(err)


# -- the VAE: the reparameterisation path --------------------------------------------------------------------


def _vae_loss(reparameterised: bool) -> Callable[..., torch.Tensor]:
    """A user's VAE loss; without ``reparameterised`` the sample z is cut off from the encoder (detached), so
    the reconstruction term sends no gradient to the encoder's weights."""
    F = torch.nn.functional

    def loss(*, X: torch.Tensor, E: torch.Tensor, **P: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(F.linear(X, P["W_e"], P["b_e"]))
        mu, lv = F.linear(h, P["W_mu"], P["b_mu"]), F.linear(h, P["W_lv"], P["b_lv"])
        z = mu + torch.exp(lv / 2) * E
        z = z if reparameterised else z.detach()
        xhat = F.linear(torch.tanh(F.linear(z, P["W_h"], P["b_h"])), P["W_d"], P["b_d"])
        return (((X - xhat) ** 2).sum(1) + 0.5 * (torch.exp(lv) + mu**2 - 1 - lv).sum(1)).mean()

    return loss


def _vae_model(reparameterised: bool) -> derive.Model:
    """The zoo's VAE program rebuilt equation by equation; without ``reparameterised`` the sample z is behind
    a stop-gradient."""
    m = derive.models.get("vae")
    b = derive.Builder("my_vae", "VAE, own", "test")
    for name, sym in m.dims.items():
        b.dims[name], b.defaults[name], b.ranges[name] = sym, m.defaults[name], m.ranges[name]
    b.sample = m.sample
    b.params, b.inputs = dict(m.params), dict(m.inputs)
    for eq in m.equations:
        cut = eq.lhs.name == "z" and not reparameterised
        b.equations.append(derive.Equation(eq.lhs, nn.stop_gradient(eq.rhs) if cut else eq.rhs))
    return b.model(hard=())


def test_vae_without_the_reparameterisation_path_is_rejected() -> None:
    m = derive.models.get("vae")
    accepted(m, implementation=autograd_impl(m, _vae_loss(reparameterised=True)))
    err = rejected(m, implementation=autograd_impl(m, _vae_loss(reparameterised=False)))
    # the encoder's gradients are wrong; the decoder's and the loss are right
    assert "the implementation" in str(err) and failing(err) <= ENCODER and failing(err), failing(err)
    ref = verify.REFERENCES["vae"]
    accepted(_vae_model(reparameterised=True), reference=ref)
    err = rejected(_vae_model(reparameterised=False), reference=ref)
    assert failing(err) <= ENCODER and failing(err), failing(err)
