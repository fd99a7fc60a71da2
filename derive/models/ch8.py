"""Chapter 8, specialised architectures and paradigms, and Appendix B: the variational autoencoder (§8.1),
the diffusion (DDPM) loss (§8.2), GANs and the Wasserstein GAN with gradient penalty (§8.3), Q-learning
and DQN (§8.4), the graph convolution layer (§8.5), and the KL divergence of two diagonal Gaussians
(Appendix B.2).

The WGAN-GP critic loss contains the gradient of the critic with respect to its input: it is derived by the
engine inside the program (:meth:`derive.Builder.gradient`), and the loss's gradient comes from
differentiating the resulting program again. The DQN target is a stop-gradient; Q-learning is an update
program, like the optimizers of Chapter 4.
"""

from __future__ import annotations

import sympy as sp

from ..functions import between, step
from ..nn import activation as act
from ..nn import (
    clamp,
    dot,
    einsum,
    exp,
    log,
    max_,
    norm,
    norm2,
    outer,
    sigmoid,
    sqrt,
    stop_gradient,
    sum_,
    tanh,
)
from ..program import Builder, Model, ModelError
from ..tensor import ARG, IndexGrid, Node, Var, gather, map_
from . import register
from .specs import Bool, Choice, Int, Real

_GCN_ACTIVATIONS = ("relu", "tanh", "sigmoid", "leaky_relu", "softplus", "identity")


def _choose(entry: str, option: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ModelError(f"{entry}: {option} {value!r} is unknown; choose one of: {', '.join(map(repr, choices))}")


def _number(entry: str, option: str, value: object, lo: float, hi: float | None = None,
            open_lo: bool = True) -> float:
    """``value`` as a float in (lo, hi] (``[lo, hi]`` with ``open_lo=False``; finite, unbounded for ``hi=None``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ModelError(f"{entry}: {option} must be a number, got {value!r}")
    v = float(value)
    above = v > lo if open_lo else v >= lo
    if not (above and (hi is None or v <= hi)) or v == float("inf"):  # NaN fails both comparisons
        where = ("(" if open_lo else "[") + f"{lo:g}, " + ("inf)" if hi is None else f"{hi:g}]")
        raise ModelError(f"{entry}: {option} must be in {where}, got {value!r}")
    return v


# -- Appendix B.2: the KL divergence of two diagonal Gaussians ----------------------------------------------


@register("kl_gaussian", "App. B.2", "KL divergence between two diagonal Gaussians")
def kl_gaussian() -> Model:
    r"""KL(N(mu_1, diag sigma_1^2) || N(mu_2, diag sigma_2^2)) = 1/2 sum (sigma_1^2/sigma_2^2 + (mu_1 - mu_2)^2 /
    sigma_2^2 - 1 + log sigma_2^2 - log sigma_1^2), from the means and log-variances, batch mean."""
    b = Builder("kl_gaussian", "KL divergence between two diagonal Gaussians", "App. B.2")
    b.samples("n", 4, 1, 6)
    k = b.dim("k", 3, 1, 5)
    m1 = b.input("M1", (k,), r"\mu_{1}", batched=True, adjoint=("g_M1", r"g_{\mu_{1}}"))
    lv1 = b.input("LV1", (k,), r"\ell_{1}", batched=True, adjoint=("g_LV1", r"g_{\ell_{1}}"))
    m2 = b.input("M2", (k,), r"\mu_{2}", batched=True, adjoint=("g_M2", r"g_{\mu_{2}}"))
    lv2 = b.input("LV2", (k,), r"\ell_{2}", batched=True, adjoint=("g_LV2", r"g_{\ell_{2}}"))
    # the variance ratio sigma_1^2 / sigma_2^2, the precision 1 / sigma_2^2 and the difference of the means, named
    # once: the loss and its gradients share them
    rho = b.eq("rho", exp(lv1 - lv2), r"\rho")
    prec = b.eq("prec", exp(-lv2), r"\sigma_{2}^{-2}")
    dmu = b.eq("dmu", m1 - m2, r"\Delta\mu")
    kappa = b.eq("kappa", dmu**2 * prec, r"\kappa")  # (mu_1 - mu_2)^2 / sigma_2^2
    b.eq("C", sum_(rho + kappa - 1 + lv2 - lv1) / 2, "C")
    # no "large" mode: log-variances of a few hundred make e^{l_1 - l_2} overflow (a KL of 1e260 has no
    # digits to compare); normal and small values cover the formula
    return b.model(diff_inputs=("M1", "LV1", "M2", "LV2"), hard=())


# -- §8.1: the variational autoencoder ----------------------------------------------------------------------


@register("vae", "§8.1", "variational autoencoder (negative ELBO, reparameterised)")
def vae() -> Model:
    r"""VAE with a one-hidden-layer tanh encoder to mu and log sigma^2, z = mu + sigma * eps (the noise an input),
    a one-hidden-layer tanh decoder, and C = ||x - xhat||^2 + 1/2 sum(sigma^2 + mu^2 - 1 - log sigma^2)."""
    b = Builder("vae", "variational autoencoder (negative ELBO, reparameterised)", "§8.1")
    b.samples("n", 4, 1, 6)
    p = b.dim("p", 3, 1, 5)
    m = b.dim("m", 3, 1, 4)
    k = b.dim("k", 2, 1, 3)
    W_e = b.param("W_e", (m, p), "W_e")
    b_e = b.param("b_e", (m,), "b_e")
    W_mu = b.param("W_mu", (k, m), r"W_{\mu}")
    b_mu = b.param("b_mu", (k,), r"b_{\mu}")
    W_lv = b.param("W_lv", (k, m), r"W_{\ell}")
    b_lv = b.param("b_lv", (k,), r"b_{\ell}")
    W_h = b.param("W_h", (m, k), "W_h")
    b_h = b.param("b_h", (m,), "b_h")
    W_d = b.param("W_d", (p, m), "W_d")
    b_d = b.param("b_d", (p,), "b_d")
    x = b.input("X", (p,), "x", batched=True)
    eps = b.input("E", (k,), r"\epsilon", batched=True)
    h = b.eq("h", tanh(W_e @ x + b_e), "h_e")
    mu = b.eq("mu", W_mu @ h + b_mu, r"\mu")
    # the log-variance, ell = log sigma^2 (as kl_gaussian writes it), with its weights W_ell, b_ell
    lv = b.eq("lv", W_lv @ h + b_lv, r"\ell", adjoint=("lv_bar", r"\zeta_{\ell}"), note=r"\ell = \log\sigma^{2}")
    sigma = b.eq("sigma", exp(lv / 2), r"\sigma")
    z = b.eq("z", mu + sigma * eps, "z", adjoint=("zeta_z", r"\zeta_{z}"))  # the reparameterisation
    hd = b.eq("h_dec", tanh(W_h @ z + b_h), "h_d")
    xh = b.eq("xhat", W_d @ hd + b_d, r"\hat{x}", adjoint=("delta_d", r"\delta_d"))
    kl = b.eq("KL", sum_(sigma**2 + mu**2 - 1 - lv) / 2, r"\mathrm{KL}")
    b.eq("C", norm2(x - xh) + kl, "C")
    # no "large" mode: inputs of a few hundred saturate both tanh layers, where 1 - tanh^2 is decided by the
    # rounding of tanh itself (the reconstruction loss has no logits for that mode to stress)
    return b.model(hard=())


# -- §8.2: the diffusion (DDPM) loss --------------------------------------------------------------------------


@register("diffusion", "§8.2", "DDPM epsilon-prediction loss (linear noise schedule)",
          options={"T_steps": Int(lo=2), "beta_1": Real(lo=0, hi=1, open_lo=True, open_hi=True),
                   "beta_T": Real(lo=0, hi=1, open_lo=True, open_hi=True)})
def diffusion(T_steps: int = 100, beta_1: float = 1e-4, beta_T: float = 0.02) -> Model:
    r"""DDPM loss: x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, ehat = W_2 ReLU(W_1 [x_t; t/T] + b_1) + b_2,
    C = ||eps - ehat||^2, batch mean; beta_s linear from beta_1 to beta_T over s = 1, ..., T and
    abar_t = prod_{s <= t} (1 - beta_s), for the integer steps t = 0, ..., T (abar_0 = 1: step 0 is the data)."""
    if isinstance(T_steps, bool) or not isinstance(T_steps, int) or T_steps < 2:
        raise ModelError(f"diffusion: T_steps must be an integer >= 2, got {T_steps!r}")
    for option, v in (("beta_1", beta_1), ("beta_T", beta_T)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
            raise ModelError(f"diffusion: {option} must be a number in (0, 1) (a noise variance), got {v!r}")
    b = Builder("diffusion", "DDPM epsilon-prediction loss (linear noise schedule)", "§8.2",
                {"T_steps": T_steps, "beta_1": beta_1, "beta_T": beta_T})
    b.samples("n", 4, 1, 6)
    p = b.dim("p", 2, 1, 4)
    hdim = b.dim("h", 3, 1, 4)
    T = b.const("T_steps", T_steps, "T")
    be1 = b.const("beta_1", beta_1, r"\beta_{1}")
    beT = b.const("beta_T", beta_T, r"\beta_{T}")
    W1 = b.param("W1", (hdim, p + 1), "W^{[1]}")
    b1 = b.param("b1", (hdim,), "b^{[1]}")
    W2 = b.param("W2", (p, hdim), "W^{[2]}")
    b2 = b.param("b2", (p,), "b^{[2]}")
    x0 = b.input("X0", (p,), "x_{0}", batched=True)
    e = b.input("E", (p,), r"\epsilon", batched=True)
    t = b.input("t", (), "t", batched=True, domain="labels")
    # the schedule, a table over the steps: beta_s for s = 1..T, and log abar_j = sum_s 1{s <= j} log(1 - beta_s)
    # for j = 0..T, a product with the lower-triangular table L_{js} = 1{1 <= s <= j}
    s = IndexGrid((T_steps,), 0, "s", start=1)
    beta = b.eq("beta", be1 + (s - 1) * (beT - be1) / (T - 1), r"\beta_{s}")
    grid = (T_steps + 1, T_steps)
    upto = b.eq("L", map_(between(ARG[1], 1, ARG[0]), [IndexGrid(grid, 0, "j"), IndexGrid(grid, 1, "s", start=1)]),
                "L")
    labar = b.eq("log_abar", upto @ log(1 - beta), r"\log\bar{\alpha}",
                 note=r"\log\bar{\alpha}_{j} = \sum_{s \leq j} \log(1 - \beta_{s})")
    abar_t = b.eq("abar_t", exp(gather(labar, t)), r"\bar{\alpha}_{t}")
    xt = b.eq("x_t", sqrt(abar_t) * x0 + sqrt(1 - abar_t) * e, "x_{t}")
    # [x_t; t/T] = P x_t + (t/T) e_{p+1}: P the identity with a zero row below, e_{p+1} the last unit vector
    cells = (p + 1, p)
    pad = b.eq("P", map_(step(ARG[0] - ARG[1] + sp.Rational(1, 2)) * step(ARG[1] - ARG[0] + sp.Rational(1, 2)),
                         [IndexGrid(cells, 0, "i"), IndexGrid(cells, 1, "j")]), "P",
               note=r"P = [I_{p}; 0^\top]")
    last = b.eq("e_last", map_(step(ARG[0] - p + sp.Rational(1, 2)), [IndexGrid((p + 1,), 0, "i")]), "e_{p+1}")
    u = b.eq("u", pad @ xt + last * (t / T), r"\tilde{x}_{t}", note=r"\tilde{x}_{t} = [x_{t}; t/T]")
    z1 = b.eq("z1", W1 @ u + b1, "z^{[1]}", adjoint=("delta1", r"\delta^{[1]}"))
    a1 = b.eq("a1", act("relu", z1), "a^{[1]}")
    eh = b.eq("ehat", W2 @ a1 + b2, r"\hat{\epsilon}", adjoint=("delta2", r"\delta^{[2]}"))
    b.eq("C", norm2(e - eh), "C")
    return b.model(kinks=True, hard=())


# -- §8.3: GANs -----------------------------------------------------------------------------------------------


def _mlp(b: Builder, x: Node, W1: Var, b1: Var, w2: Node, b2: Node, tag: str, sub: str, oname: str,
         otex: str) -> Var:
    """z = W_1 x + b_1 (its adjoint named delta), h = tanh(z), then the affine output w_2^T h + b_2 (a vector
    output when w_2 is a matrix); ``sub`` is the LaTeX subscript of z, h and delta."""
    z = b.eq(f"z_{tag}", W1 @ x + b1, f"z_{{{sub}}}", adjoint=(f"delta_{tag}", rf"\delta_{{{sub}}}"))
    h = b.eq(f"h_{tag}", tanh(z), f"h_{{{sub}}}")
    return b.eq(oname, (dot(w2, h) if w2.ndim == 1 else w2 @ h) + b2, otex)


def _gan_players(b: Builder, player: str, h: sp.Symbol, h2: sp.Symbol, p: sp.Symbol, k: sp.Symbol,
                 critic: str = "discriminator") -> tuple[Var, ...]:
    """The discriminator (critic) W1, b1, w2, b2 and the generator V1, c1, V2, c2: the player's are parameters
    (they get gradients), the other player's are inputs of the loss."""
    d = b.param if player == critic else b.input
    g = b.param if player == "generator" else b.input
    W1 = d("W1", (h, p), "W_{1}")
    b1 = d("b1", (h,), "b_{1}")
    w2 = d("w2", (h,), "w_{2}")
    b2 = d("b2", (), "b_{2}")
    V1 = g("V1", (h2, k), "V_{1}")
    c1 = g("c1", (h2,), "c_{1}")
    V2 = g("V2", (p, h2), "V_{2}")
    c2 = g("c2", (p,), "c_{2}")
    return W1, b1, w2, b2, V1, c1, V2, c2


@register("gan", "§8.3", "GAN: the discriminator's binary cross entropy, or the generator's loss",
          options={"player": Choice("discriminator", "generator"),
                   "generator_loss": Choice("minimax", "non_saturating")})
def gan(player: str = "discriminator", generator_loss: str = "minimax") -> Model:
    r"""GAN with logit D(x) = w_2^T tanh(W_1 x + b_1) + b_2 and generator G(z) = V_2 tanh(V_1 z + c_1) + c_2.

    ``player="discriminator"``: C = -log sigma(u(x)) - log(1 - sigma(u(G(z)))) (binary cross entropy, real
    samples labelled 1, generated 0), gradients in W_1, b_1, w_2, b_2. ``player="generator"``: the minimax
    value log sigma(u(x)) + log(1 - sigma(u(G(z)))) (``generator_loss="minimax"``) or the non-saturating
    -log sigma(u(G(z))), gradients in V_1, c_1, V_2, c_2. The logarithms of sigmoids are computed stably
    (softplus).
    """
    _choose("gan", "player", player, ("discriminator", "generator"))
    _choose("gan", "generator_loss", generator_loss, ("minimax", "non_saturating"))
    title = ("GAN discriminator (binary cross entropy with logits)" if player == "discriminator" else
             f"GAN generator ({generator_loss.replace('_', '-')} loss)")
    b = Builder("gan", title, "§8.3", {"player": player, "generator_loss": generator_loss})
    b.samples("n", 4, 1, 6)
    p = b.dim("p", 2, 1, 4)
    k = b.dim("k", 2, 1, 3)
    h = b.dim("h", 3, 1, 4)
    h2 = b.dim("h2", 3, 1, 4)
    W1, b1, w2, b2, V1, c1, V2, c2 = _gan_players(b, player, h, h2, p, k)
    x = b.input("X", (p,), "x", batched=True)
    zz = b.input("Z", (k,), "z", batched=True)
    xg = _mlp(b, zz, V1, c1, V2, c2, "G", "G", "x_G", r"\tilde{x}")
    uses_real = player == "discriminator" or generator_loss == "minimax"
    if uses_real:
        ur = _mlp(b, x, W1, b1, w2, b2, "real", "x", "u_real", "u")
    uf = _mlp(b, xg, W1, b1, w2, b2, "fake", r"\tilde{x}", "u_fake", r"\tilde{u}")
    if player == "discriminator":
        loss = -(log(sigmoid(ur)) + log(1 - sigmoid(uf)))
    elif generator_loss == "minimax":
        loss = log(sigmoid(ur)) + log(1 - sigmoid(uf))
    else:
        loss = -log(sigmoid(uf))
    b.eq("C", loss, "C")
    return b.model(hard=())


@register("wgan_gp", "§8.3", "WGAN-GP critic loss (gradient penalty, derived inside the program)",
          options={"lam": Real(lo=0)})
def wgan_gp(lam: float = 10.0) -> Model:
    r"""WGAN-GP critic loss D(G(z)) - D(x) + lambda (||grad_xhat D(xhat)||_2 - 1)^2, xhat = eps x + (1 - eps) G(z),
    batch mean, with D(x) = w_2^T tanh(W_1 x + b_1) + b_2 and G(z) = V_2 tanh(V_1 z + c_1) + c_2; gradients in the
    critic's parameters. The inner gradient is derived by the engine (Builder.gradient), its gradient by
    differentiating the program again."""
    _number("wgan_gp", "lam", lam, 0.0, open_lo=False)
    b = Builder("wgan_gp", "WGAN-GP critic loss (gradient penalty, derived inside the program)", "§8.3",
                {"lam": lam})
    b.samples("n", 3, 1, 5)
    p = b.dim("p", 2, 1, 4)
    k = b.dim("k", 2, 1, 3)
    h = b.dim("h", 3, 1, 4)
    h2 = b.dim("h2", 2, 1, 3)
    L = b.const("lam", lam, r"\lambda")
    W1, b1, w2, b2, V1, c1, V2, c2 = _gan_players(b, "critic", h, h2, p, k, critic="critic")
    x = b.input("X", (p,), "x", batched=True)
    zz = b.input("Z", (k,), "z", batched=True)
    eps = b.input("eps", (), r"\epsilon", batched=True, domain="unit")
    xg = _mlp(b, zz, V1, c1, V2, c2, "G", "G", "x_G", r"\tilde{x}")
    d_real = _mlp(b, x, W1, b1, w2, b2, "real", "x", "D_real", "D(x)")
    d_fake = _mlp(b, xg, W1, b1, w2, b2, "fake", r"\tilde{x}", "D_fake", r"D(\tilde{x})")
    xh = b.eq("x_hat", eps * x + (1 - eps) * xg, r"\hat{x}")
    d_hat = _mlp(b, xh, W1, b1, w2, b2, "hat", r"\hat{x}", "D_hat", r"D(\hat{x})")
    grad = b.gradient(d_hat, xh, "grad_D", r"\nabla_{\hat{x}} D(\hat{x})")
    pen = b.eq("penalty", (norm(grad) - 1) ** 2, "P")
    b.eq("C", d_fake - d_real + L * pen, "C")
    return b.model(hard=())


# -- §8.4: reinforcement learning -----------------------------------------------------------------------------


@register("q_learning", "§8.4", "tabular Q-learning update",
          options={"alpha": Real(lo=0, hi=1, open_lo=True), "gamma": Real(lo=0, hi=1)})
def q_learning(alpha: float = 0.1, gamma: float = 0.9) -> Model:
    r"""Q(s, a) <- Q(s, a) + alpha (r + gamma (1 - done) max_a' Q(s', a') - Q(s, a)), with the state s, the action a
    and the next state s' one-hot: Q <- Q + alpha delta s a^T."""
    _number("q_learning", "alpha", alpha, 0.0, 1.0)
    _number("q_learning", "gamma", gamma, 0.0, 1.0, open_lo=False)
    b = Builder("q_learning", "tabular Q-learning update", "§8.4", {"alpha": alpha, "gamma": gamma})
    S = b.dim("S", 4, 1, 5)
    A = b.dim("A", 3, 1, 4)
    Q = b.state("Q", (S, A), "Q^{(t)}")
    s = b.input("s", (S,), "s", domain="one_hot")
    a = b.input("a", (A,), "a", domain="one_hot")
    r = b.input("r", (), "r")
    s1 = b.input("s_next", (S,), "s'", domain="one_hot")
    done = b.input("done", (), r"\mathrm{done}", domain="mask")
    al, ga = b.const("alpha", alpha), b.const("gamma", gamma)
    q_sa = b.eq("q_sa", einsum([("i",), ("i", "j"), ("j",)], (), [s, Q, a]), "Q(s, a)")
    q_next = b.eq("q_next", max_(einsum([("i",), ("i", "j")], ("j",), [s1, Q])), r"\max_{a'} Q(s', a')")
    td = b.eq("td", r + ga * (1 - done) * q_next - q_sa, r"\delta")
    nxt = b.eq("Q_next", Q + al * td * outer(s, a), "Q^{(t+1)}")
    return b.update_model({"Q": nxt})


@register("dqn", "§8.4", "DQN semi-gradient TD loss with a target network",
          options={"gamma": Real(lo=0, hi=1), "huber": Bool()})
def dqn(gamma: float = 0.99, huber: bool = False) -> Model:
    r"""DQN: q(s) = W_2 ReLU(W_1 s + b_1) + b_2, target y = sg[r + gamma (1 - done) max q^-(s')] from the target
    network (no gradient flows into it), C = (a^T q(s) - y)^2, or the Huber loss of that difference
    (``huber=True``, delta = 1: its derivative is clamp(u, -1, 1)); batch mean."""
    _number("dqn", "gamma", gamma, 0.0, 1.0, open_lo=False)
    if not isinstance(huber, bool):
        raise ModelError(f"dqn: huber must be True or False, got {huber!r}")
    b = Builder("dqn", "DQN semi-gradient TD loss with a target network" + (" (Huber)" if huber else ""), "§8.4",
                {"gamma": gamma, "huber": huber})
    b.samples("n", 4, 1, 6)
    d = b.dim("d", 3, 1, 4)
    hdim = b.dim("h", 3, 1, 4)
    K = b.dim("K", 3, 2, 4)
    W1 = b.param("W1", (hdim, d), "W^{[1]}")
    b1 = b.param("b1", (hdim,), "b^{[1]}")
    W2 = b.param("W2", (K, hdim), "W^{[2]}")
    b2 = b.param("b2", (K,), "b^{[2]}")
    W1t = b.input("W1_t", (hdim, d), "W_{-}^{[1]}")
    b1t = b.input("b1_t", (hdim,), "b_{-}^{[1]}")
    W2t = b.input("W2_t", (K, hdim), "W_{-}^{[2]}")
    b2t = b.input("b2_t", (K,), "b_{-}^{[2]}")
    s = b.input("S", (d,), "s", batched=True)
    a = b.input("A", (K,), "a", batched=True, domain="one_hot")
    r = b.input("R", (), "r", batched=True)
    s1 = b.input("S_next", (d,), "s'", batched=True)
    done = b.input("done", (), r"\mathrm{done}", batched=True, domain="mask")
    ga = b.const("gamma", gamma)
    z1 = b.eq("z1", W1 @ s + b1, "z^{[1]}", adjoint=("delta1", r"\delta^{[1]}"))
    a1 = b.eq("a1", act("relu", z1), "a^{[1]}")
    q = b.eq("q", W2 @ a1 + b2, "q(s)", adjoint=("delta2", r"\delta^{[2]}"))
    a1t = b.eq("a1_t", act("relu", W1t @ s1 + b1t), "a_{-}^{[1]}")
    qt = b.eq("q_t", W2t @ a1t + b2t, "q_{-}(s')")
    y = b.eq("y", stop_gradient(r + ga * (1 - done) * max_(qt)), "y")
    u = b.eq("u", dot(a, q) - y, "u")
    if huber:
        uc = b.eq("u_c", clamp(u, -1, 1), r"\bar{u}")
        b.eq("C", uc * (u - uc / 2), "C")  # Huber: u^2/2 for |u| <= 1, |u| - 1/2 beyond
    else:
        b.eq("C", u**2, "C")
    return b.model(kinks=True)


# -- §8.5: graph networks ---------------------------------------------------------------------------------------


@register("gcn", "§8.5", "graph convolution layer S(A_hat H W)", options={"activation": Choice(*_GCN_ACTIVATIONS)})
def gcn(activation: str = "relu") -> Model:
    r"""Graph convolution layer H^{[l+1]} = S(A_hat H^{[l]} W^{[l]}) for a (normalised) adjacency A_hat; a layer
    entry with loss sum(G * H^{[l+1]}), gradients in W and H."""
    _choose("gcn", "activation", activation, _GCN_ACTIVATIONS)
    b = Builder("gcn", "graph convolution layer S(A_hat H W)", "§8.5", {"activation": activation})
    N = b.dim("N", 4, 1, 5)
    p = b.dim("p", 3, 1, 4)
    q = b.dim("q", 2, 1, 4)
    W = b.param("W", (p, q), r"W^{[\ell]}", grad_tex=r"g_{W}^{[\ell]}")
    A = b.input("A_hat", (N, N), r"\hat{A}")
    H = b.input("H", (N, p), r"H^{[\ell]}", adjoint=("g_H", r"\zeta^{[\ell]}"))
    G = b.input("G", (N, q), r"\zeta^{[\ell+1]}")
    Z = b.eq("Z", A @ H @ W, r"Z^{[\ell]}", adjoint=("Delta", r"\Delta^{[\ell]}"))
    out = b.eq("H_next", act(activation, Z), r"H^{[\ell+1]}")
    b.eq("C", sum_(G * out), "C")
    return b.model(reduction="sum", diff_inputs=("H",), kinks=activation in ("relu", "leaky_relu"))
