"""Chapter 8 against references written here, straight from the book's definitions and the names of MODELS.md.

These references do not import :mod:`verify.references_ch8` (the zoo's own, which ``verify.check`` uses): each
is a second, independent reading of the book -- the graph convolution ``S(A_hat H W)`` (§8.5), the tabular
Q-learning update and the DQN semi-gradient TD loss with its target under ``torch.no_grad`` (§8.4), the VAE's
negative ELBO with the reparameterised sample (§8.1), the WGAN-GP critic loss whose penalty is differentiated
with ``create_graph=True`` (§8.3), the GAN's losses for both players and both generator losses, the DDPM loss
with its schedule written as a product (§8.2) and the Gaussian KL (App. B.2). The generated NumPy and torch
kernels of each entry are compared with torch autograd on them, in float64, on hypothesis-drawn sizes, values
and options (the ``ci`` profile draws a few). Every entry, with its options, also passes ``verify.check`` on
both backends.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import derive
import numeric
import verify
from verify.strategies import make_arrays

T = torch.Tensor
RTOL = 1e-10
# options are parametrized (each a model of its own, compiled once); hypothesis draws sizes, values and seeds
EXAMPLES = max(3, settings().max_examples // 4)
drawn = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))


# -- the references, from the book -----------------------------------------------------------------------------


def _tanh_mlp(x: T, W1: T, b1: T, W2: T, b2: T) -> T:
    """Rows x -> W2 tanh(W1 x + b1) + b2 (W2 a matrix or, for a scalar output, a vector)."""
    h = torch.tanh(x @ W1.T + b1)
    return h @ W2.T + b2


def ref_gcn(*, W: T, A_hat: T, H: T, G: T, activation: str) -> T:
    """§8.5: H^{[l+1]} = S(A_hat H^{[l]} W^{[l]}); the layer probed with G: C = sum(G * H^{[l+1]})."""
    S = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "identity": lambda z: z,
         # log(1 + e^z), stable, with the derivative sigma(0) = 1/2 at 0 (log1p(e^{-|z|}) + max(z, 0) has 1 there:
         # autograd takes |z|' = 0 and clamp's gradient passes at its bound)
         "softplus": lambda z: torch.logaddexp(z, torch.zeros_like(z)),
         "leaky_relu": lambda z: torch.where(z > 0, z, 0.01 * z)}[activation]
    return (G * S(A_hat @ (H @ W))).sum()


def ref_q_learning(*, Q: T, s: T, a: T, r: T, s_next: T, done: T, alpha: float, gamma: float) -> dict[str, T]:
    """§8.4: Q(s, a) <- Q(s, a) + alpha [r + gamma (1 - done) max_a' Q(s', a') - Q(s, a)], other entries kept."""
    i, j, k = (int(torch.nonzero(v)[0, 0]) for v in (s, a, s_next))
    new = Q.clone()
    target = r + gamma * (1 - done) * max(float(q) for q in Q[k])
    new[i, j] = Q[i, j] + alpha * (target - Q[i, j])
    return {"Q": new}


def ref_dqn(*, W1: T, b1: T, W2: T, b2: T, W1_t: T, b1_t: T, W2_t: T, b2_t: T, S: T, A: T, R: T, S_next: T,
            done: T, gamma: float, huber: bool) -> T:
    """§8.4: C(theta) = mean (y - Q(s, a; theta))^2 with y = r + gamma (1 - done) max_a' Q(s', a'; theta^-) from
    the target network, no gradient through y; Huber (delta 1) of y - Q with ``huber``."""
    def q(s: T, W1: T, b1: T, W2: T, b2: T) -> T:
        return torch.relu(s @ W1.T + b1) @ W2.T + b2

    with torch.no_grad():
        y = R + gamma * (1 - done) * q(S_next, W1_t, b1_t, W2_t, b2_t).amax(dim=1)
    u = (q(S, W1, b1, W2, b2) * A).sum(dim=1) - y
    per = torch.where(u.abs() <= 1, u**2 / 2, u.abs() - 0.5) if huber else u**2
    return per.mean()


def ref_vae(*, W_e: T, b_e: T, W_mu: T, b_mu: T, W_lv: T, b_lv: T, W_h: T, b_h: T, W_d: T, b_d: T, X: T,
            E: T) -> T:
    """§8.1: the negative ELBO, the encoder q(z|x) = N(mu, diag sigma^2) sampled as z = mu + sigma * eps."""
    h = torch.tanh(X @ W_e.T + b_e)
    mu, log_var = h @ W_mu.T + b_mu, h @ W_lv.T + b_lv
    sigma = torch.exp(log_var / 2)
    z = mu + sigma * E
    x_hat = torch.tanh(z @ W_h.T + b_h) @ W_d.T + b_d
    kl = 0.5 * (sigma**2 + mu**2 - 1 - log_var).sum(dim=1)
    return (((X - x_hat) ** 2).sum(dim=1) + kl).mean()


def _critic(x: T, W1: T, b1: T, w2: T, b2: T) -> T:
    return torch.tanh(x @ W1.T + b1) @ w2 + b2


def ref_wgan_gp(*, W1: T, b1: T, w2: T, b2: T, V1: T, c1: T, V2: T, c2: T, X: T, Z: T, eps: T, lam: float) -> T:
    """§8.3: E f(G(z)) - E f(x) + lam E (||grad_xhat f(xhat)||_2 - 1)^2, xhat = eps x + (1 - eps) G(z); the
    inner gradient with create_graph=True, so that the loss's gradient carries the second derivative."""
    fake = _tanh_mlp(Z, V1, c1, V2, c2)
    e = eps[:, None]
    x_hat = e * X + (1 - e) * fake
    if not x_hat.requires_grad:  # nothing upstream is differentiated (the critic's gradients only): a leaf
        x_hat.requires_grad_(True)
    (g,) = torch.autograd.grad(_critic(x_hat, W1, b1, w2, b2).sum(), x_hat, create_graph=True)
    penalty = (torch.sqrt((g**2).sum(dim=1)) - 1) ** 2
    return _critic(fake, W1, b1, w2, b2).mean() - _critic(X, W1, b1, w2, b2).mean() + lam * penalty.mean()


def ref_gan(*, W1: T, b1: T, w2: T, b2: T, V1: T, c1: T, V2: T, c2: T, X: T, Z: T, player: str,
            generator_loss: str) -> T:
    """§8.3: V(D, G) = E log D(x) + E log(1 - D(G(z))) with D = sigma(u) of the logit u; the discriminator
    minimises its BCE -V, the generator V itself (minimax) or -E log D(G(z)) (non-saturating)."""
    u_real = _critic(X, W1, b1, w2, b2)
    u_fake = _critic(_tanh_mlp(Z, V1, c1, V2, c2), W1, b1, w2, b2)
    log_d = torch.nn.functional.logsigmoid  # log sigma(u); log(1 - sigma(u)) = log sigma(-u)
    value = log_d(u_real).mean() + log_d(-u_fake).mean()
    if player == "discriminator":
        return -value
    return value if generator_loss == "minimax" else -log_d(u_fake).mean()


def ref_diffusion(*, W1: T, b1: T, W2: T, b2: T, X0: T, E: T, t: T, T_steps: int, beta_1: float,
                  beta_T: float) -> T:
    """§8.2: beta_s = beta_1 + (s - 1)(beta_T - beta_1)/(T - 1), abar_t = prod_{s=1}^t (1 - beta_s) (abar_0 = 1),
    x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, C = mean ||eps - eps_theta(x_t, t)||^2 with
    eps_theta = W2 relu(W1 [x_t; t/T] + b1) + b2."""
    abar = [1.0]
    for s in range(1, T_steps + 1):
        abar.append(abar[-1] * (1 - (beta_1 + (s - 1) * (beta_T - beta_1) / (T_steps - 1))))
    a = torch.tensor([abar[int(k)] for k in t], dtype=X0.dtype)[:, None]
    x_t = a.sqrt() * X0 + (1 - a).sqrt() * E
    u = torch.cat([x_t, t.to(X0.dtype)[:, None] / T_steps], dim=1)
    e_hat = torch.relu(u @ W1.T + b1) @ W2.T + b2
    return ((E - e_hat) ** 2).sum(dim=1).mean()


def ref_kl_gaussian(*, M1: T, LV1: T, M2: T, LV2: T) -> T:
    """App. B.2: KL(N(mu_1, sigma_1^2) || N(mu_2, sigma_2^2)) = log(sigma_2/sigma_1) + (sigma_1^2 + (mu_1 -
    mu_2)^2)/(2 sigma_2^2) - 1/2 per coordinate, summed, batch mean."""
    s1, s2 = torch.exp(LV1 / 2), torch.exp(LV2 / 2)
    kl = torch.log(s2 / s1) + (s1**2 + (M1 - M2) ** 2) / (2 * s2**2) - 0.5
    return kl.sum(dim=1).mean()


REFS = {"gcn": ref_gcn, "dqn": ref_dqn, "vae": ref_vae, "wgan_gp": ref_wgan_gp, "gan": ref_gan,
        "diffusion": ref_diffusion, "kl_gaussian": ref_kl_gaussian}


# -- the comparison ------------------------------------------------------------------------------------------


def _close(got: Any, want: T, what: str) -> None:
    g = got.detach().cpu().numpy() if isinstance(got, torch.Tensor) else np.asarray(got)
    w = want.detach().numpy()
    assert g.shape == w.shape, f"{what}: shape {g.shape}, the reference's {w.shape}"
    scale = max(1.0, float(np.max(np.abs(w), initial=0.0)))
    np.testing.assert_allclose(g, w, rtol=RTOL, atol=RTOL * scale, err_msg=what)


def _arrays(m: derive.Model, data: st.DataObject, modes: tuple[str, ...]) -> dict[str, np.ndarray]:
    sizes = {k: data.draw(st.integers(*m.ranges[k]), label=k) for k in m.dims}
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    return make_arrays(m, sizes, seed, data.draw(st.sampled_from(modes), label="mode"))


def _against_reference(name: str, options: dict[str, Any], data: st.DataObject,
                       modes: tuple[str, ...] = ("normal", "small")) -> None:
    """Loss and every gradient of both generated kernels against torch autograd on ``REFS[name]``."""
    m = derive.models.get(name, **options)
    arrays = _arrays(m, data, modes)
    tensors = {k: torch.tensor(v) for k, v in arrays.items()}
    leaves = {k: tensors[k].clone().requires_grad_(True) for k in m.grad_names}
    loss = REFS[name](**{**tensors, **leaves}, **options)
    grads = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)))
    assert sorted(grads) == sorted(m.grad_names)
    for backend in ("numpy", "torch"):
        f = numeric.compile(m, backend)
        out = f(**(arrays if backend == "numpy" else tensors))
        _close(out["loss"], loss, f"{name} {options} {backend}: the loss")
        assert sorted(out["grad"]) == sorted(m.grad_names), (backend, sorted(out["grad"]))
        for k, g in grads.items():
            _close(out["grad"][k], torch.zeros_like(tensors[k]) if g is None else g,
                   f"{name} {options} {backend}: the gradient in {k}")


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid", "leaky_relu", "softplus", "identity"])
@drawn
@given(data=st.data())
def test_gcn(activation: str, data: st.DataObject) -> None:
    _against_reference("gcn", {"activation": activation}, data, ("normal", "small", "kinks"))


def test_kink_values_make_zeros_exact_in_every_order_of_summation() -> None:
    """The kinks mode's values (zeros and multiples of 1/8) multiply and add exactly: gcn's Z = A_hat H W is the
    same in both associations and in NumPy's and PyTorch's products, so an exact zero of Z (ReLU's kink) is one
    for the kernels and the reference alike (at one decimal, torch.linalg.multi_dot's A_hat (H W) gave 2e-16
    where the kernels' (A_hat H) W gave 0, and verify.check called the right ReLU gradient wrong)."""
    m = derive.models.get("gcn", activation="relu")
    zeros = 0
    for seed in range(300):
        a = make_arrays(m, {"N": 2 + seed % 5, "p": 1 + seed % 7, "q": 1 + seed % 4}, seed, "kinks")
        A, H, W = (a[k] for k in ("A_hat", "H", "W"))
        left, right = (A @ H) @ W, A @ (H @ W)
        np.testing.assert_array_equal(left, right)
        np.testing.assert_array_equal(left, torch.linalg.multi_dot([torch.tensor(A), torch.tensor(H),
                                                                    torch.tensor(W)]).numpy())
        zeros += int(np.sum((left == 0) & (np.abs(A) @ np.abs(H) @ np.abs(W) > 0)))
    assert zeros > 0  # zeros by cancellation, not only by zero rows: the case that rounding decided


@pytest.mark.parametrize("huber", [False, True])
@drawn
@given(gamma=st.sampled_from([0.0, 0.5, 0.99]), data=st.data())
def test_dqn(gamma: float, huber: bool, data: st.DataObject) -> None:
    _against_reference("dqn", {"gamma": gamma, "huber": huber}, data, ("normal", "small", "kinks"))


def test_dqn_huber_on_both_branches() -> None:
    """TD errors inside and outside [-1, 1] in one batch: both pieces of the Huber loss (and the kinks between)
    are exercised, not just the quadratic piece that small draws reach."""
    m = derive.models.get("dqn", huber=True)
    a = make_arrays(m, {"n": 6, "d": 3, "h": 3, "K": 3}, 7)
    a["R"] = np.array([-4.0, -1.5, -0.3, 0.2, 1.7, 5.0])
    a["done"] = np.ones(6)  # y = R exactly: u = q(s, a) - R spans both pieces
    t = {k: torch.tensor(v) for k, v in a.items()}
    leaves = {k: t[k].clone().requires_grad_(True) for k in m.grad_names}
    loss = ref_dqn(**{**t, **leaves}, gamma=0.99, huber=True)
    grads = torch.autograd.grad(loss, list(leaves.values()))
    q_sa = ((torch.relu(t["S"] @ t["W1"].T + t["b1"]) @ t["W2"].T + t["b2"]) * t["A"]).sum(1)
    assert ((q_sa - t["R"]).abs() > 1).any() and ((q_sa - t["R"]).abs() < 1).any()
    for backend in ("numpy", "torch"):
        out = numeric.compile(m, backend)(**(a if backend == "numpy" else t))
        _close(out["loss"], loss, f"dqn huber {backend}")
        for k, g in zip(leaves, grads):
            _close(out["grad"][k], g, f"dqn huber {backend}: {k}")


@drawn
@given(data=st.data())
def test_vae(data: st.DataObject) -> None:
    _against_reference("vae", {}, data)


@drawn
@given(lam=st.sampled_from([0.0, 1.0, 10.0]), data=st.data())
def test_wgan_gp(lam: float, data: st.DataObject) -> None:
    _against_reference("wgan_gp", {"lam": lam}, data)


@pytest.mark.parametrize("generator_loss", ["minimax", "non_saturating"])
@pytest.mark.parametrize("player", ["discriminator", "generator"])
@drawn
@given(data=st.data())
def test_gan(player: str, generator_loss: str, data: st.DataObject) -> None:
    _against_reference("gan", {"player": player, "generator_loss": generator_loss}, data)


@pytest.mark.parametrize("schedule", [{}, {"T_steps": 2}, {"T_steps": 10, "beta_1": 0.01, "beta_T": 0.3},
                                      {"T_steps": 50, "beta_1": 1e-3, "beta_T": 1e-3}])
@drawn
@given(data=st.data())
def test_diffusion(schedule: dict[str, Any], data: st.DataObject) -> None:
    options = {"T_steps": 100, "beta_1": 1e-4, "beta_T": 0.02, **schedule}
    _against_reference("diffusion", options, data, ("normal", "small", "kinks"))


@drawn
@given(data=st.data())
def test_kl_gaussian(data: st.DataObject) -> None:
    _against_reference("kl_gaussian", {}, data)


@drawn
@given(alpha=st.sampled_from([0.1, 0.5, 1.0]), gamma=st.sampled_from([0.0, 0.9, 1.0]), data=st.data())
def test_q_learning(alpha: float, gamma: float, data: st.DataObject) -> None:
    """The update program's next Q against the book's update at the indices of s, a and s'."""
    m = derive.models.get("q_learning", alpha=alpha, gamma=gamma)
    a = _arrays(m, data, ("normal", "small"))
    want = ref_q_learning(**{k: torch.tensor(v) for k, v in a.items()}, alpha=alpha, gamma=gamma)
    for backend in ("numpy", "torch"):
        f = numeric.compile(m, backend)
        out = f(**(a if backend == "numpy" else {k: torch.tensor(v) for k, v in a.items()}))
        assert set(out) == {"Q"}, sorted(out)
        _close(out["Q"], want["Q"], f"q_learning {backend}")


def test_q_learning_terminal_and_self_loop() -> None:
    """done = 1 drops the bootstrap; s' = s with a = argmax Q(s, .) reads the entry it updates."""
    m = derive.models.get("q_learning", alpha=0.5, gamma=0.9)
    Q = np.array([[1.0, 3.0], [2.0, -1.0]])
    eye = np.eye(2)
    for done, want in ((1.0, 1.0 + 0.5 * (1.0 - 1.0)), (0.0, 1.0 + 0.5 * (1.0 + 0.9 * 3.0 - 1.0))):
        out = numeric.compile(m)(Q=Q, s=eye[0], a=eye[0], r=np.array(1.0), s_next=eye[0], done=np.array(done))
        np.testing.assert_allclose(out["Q"], [[want, 3.0], [2.0, -1.0]], rtol=1e-15)


# -- names as MODELS.md gives them ---------------------------------------------------------------------------

MODELS_MD = {
    "vae": ({"W_e": "m,p", "b_e": "m", "W_mu": "k,m", "b_mu": "k", "W_lv": "k,m", "b_lv": "k", "W_h": "m,k",
             "b_h": "m", "W_d": "p,m", "b_d": "p"}, {"X": "n,p", "E": "n,k"}, {}),
    "diffusion": ({"W1": "h,p+1", "b1": "h", "W2": "p,h", "b2": "p"}, {"X0": "n,p", "E": "n,p", "t": "n"},
                  {"T_steps": 100, "beta_1": 1e-4, "beta_T": 0.02}),
    "gan": ({"W1": "h,p", "b1": "h", "w2": "h", "b2": ""},
            {"V1": "h2,k", "c1": "h2", "V2": "p,h2", "c2": "p", "X": "n,p", "Z": "n,k"},
            {"player": "discriminator", "generator_loss": "minimax"}),
    "wgan_gp": ({"W1": "h,p", "b1": "h", "w2": "h", "b2": ""},
                {"V1": "h2,k", "c1": "h2", "V2": "p,h2", "c2": "p", "X": "n,p", "Z": "n,k", "eps": "n"},
                {"lam": 10.0}),
    "q_learning": ({"Q": "S,A"}, {"s": "S", "a": "A", "r": "", "s_next": "S", "done": ""}, None),
    "dqn": ({"W1": "h,d", "b1": "h", "W2": "K,h", "b2": "K"},
            {"W1_t": "h,d", "b1_t": "h", "W2_t": "K,h", "b2_t": "K", "S": "n,d", "A": "n,K", "R": "n",
             "S_next": "n,d", "done": "n"}, {"gamma": 0.99, "huber": False}),
    "gcn": ({"W": "p,q"}, {"A_hat": "N,N", "H": "N,p", "G": "N,q"}, {"activation": "relu"}),
    "kl_gaussian": ({}, {"M1": "n,k", "LV1": "n,k", "M2": "n,k", "LV2": "n,k"}, {}),
}


@pytest.mark.parametrize("name", sorted(MODELS_MD))
def test_names_shapes_and_options_as_models_md(name: str) -> None:
    params, inputs, options = MODELS_MD[name]
    m = derive.models.get(name)
    sizes = {"n": 5, "p": 3, "m": 4, "k": 2, "h": 3, "h2": 4, "S": 4, "A": 3, "d": 3, "K": 2, "N": 4, "q": 2}
    sz = {k: v for k, v in sizes.items() if k in m.dims}
    shapes = m.shapes(**sz)
    env = dict(sz)

    def shape(spec: str) -> tuple[int, ...]:  # "h,p+1" -> (env[h], env[p] + 1)
        return tuple(env[s[:-2]] + 1 if s.endswith("+1") else env[s] for s in spec.split(",")) if spec else ()

    assert set(m.params) == set(params), (sorted(m.params), sorted(params))
    assert set(shapes) == set(params) | set(inputs), (sorted(shapes), sorted({**params, **inputs}))
    for k, spec in {**params, **inputs}.items():
        assert shapes[k] == shape(spec), (k, shapes[k], spec)
    if options is not None:
        assert m.options == options
    expected_grads = {"gcn": ["W", "H"], "kl_gaussian": ["M1", "LV1", "M2", "LV2"]}.get(name, list(params))
    assert sorted(m.grad_names) == sorted(expected_grads) or m.is_update


def test_gan_players_own_their_gradients() -> None:
    """MODELS.md: gradients in the player's parameters; the other player's weights are inputs."""
    assert sorted(derive.models.get("gan", player="generator").grad_names) == ["V1", "V2", "c1", "c2"]
    assert sorted(derive.models.get("gan", player="discriminator").grad_names) == ["W1", "b1", "b2", "w2"]
    assert sorted(derive.models.get("wgan_gp").grad_names) == ["W1", "b1", "b2", "w2"]


@pytest.mark.parametrize("name,options,fix", [
    ("gan", {"player": "critic"}, "discriminator"), ("gan", {"generator_loss": "wasserstein"}, "non_saturating"),
    ("wgan_gp", {"lam": -0.5}, "lam"), ("dqn", {"huber": "yes"}, "True or False"), ("dqn", {"gamma": 1.5}, "gamma"),
    ("q_learning", {"alpha": 0.0}, "alpha"), ("gcn", {"activation": "swish"}, "relu"),
    ("diffusion", {"T_steps": 1}, "T_steps"), ("diffusion", {"beta_T": 1.0}, "beta_T"),
])
def test_bad_options_are_refused_with_the_fix(name: str, options: dict[str, Any], fix: str) -> None:
    with pytest.raises(derive.ModelError, match=fix):
        derive.models.get(name, **options)


# -- verify.check on both backends, every new entry and its options --------------------------------------------

NEW = [("kl_gaussian", {}), ("vae", {}), ("diffusion", {}), ("diffusion", {"T_steps": 5, "beta_1": 0.1, "beta_T": 0.5}),
       ("gan", {}), ("gan", {"player": "generator"}), ("gan", {"player": "generator", "generator_loss": "non_saturating"}),
       ("gan", {"generator_loss": "non_saturating"}), ("wgan_gp", {}), ("wgan_gp", {"lam": 0.5}), ("q_learning", {}),
       ("q_learning", {"alpha": 1.0, "gamma": 0.5}), ("dqn", {}), ("dqn", {"huber": True}), ("gcn", {}),
       ("gcn", {"activation": "tanh"}), ("stacked_rnn", {}), ("stacked_rnn", {"layers": 3}),
       ("stacked_rnn", {"layers": 1, "activation": "relu"}), ("birnn", {}), ("birnn", {"activation": "relu"}),
       ("seq2seq", {}), ("seq2seq", {"attention": True}), ("decoder_block", {}), ("decoder_block", {"heads": 1})]


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("name,options", NEW, ids=[f"{n}-{o}" if o else n for n, o in NEW])
def test_verify_check_passes(name: str, options: dict[str, Any], backend: str) -> None:
    report = verify.check(derive.models.get(name, **options), backend=backend, examples=3)
    assert report.examples == 3
    assert report.reference.startswith("the zoo's reference"), report.reference


def test_seq2seq_lengths_are_independent() -> None:
    """T_in and T_out are two symbolic lengths: one kernel runs any pair, and the loss is 1/T_out sum_t."""
    m = derive.models.get("seq2seq", attention=True)
    f = numeric.compile(m)
    for T_in, T_out in ((1, 4), (5, 2)):
        a = make_arrays(m, {"T_in": T_in, "T_out": T_out, "n": 2, "p": 2, "m": 3, "q": 3}, T_in)
        assert a["X"].shape[0] == T_in and a["Y"].shape[0] == T_out
        want = verify.REFERENCES["seq2seq"](**{k: torch.tensor(v) for k, v in a.items()}, attention=True)
        assert math.isclose(f(**a)["loss"], float(want), rel_tol=1e-12)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_a_gradient_that_is_identically_zero_is_an_array(backend: str) -> None:
    """The critic's b2 cancels from D(G(z)) - D(x) and the penalty does not see it: g_b2 = 0, returned as an
    array of b2's shape (), of the arrays' dtype, not a Python number."""
    m = derive.models.get("wgan_gp")
    a = make_arrays(m, {"n": 3, "p": 2, "k": 2, "h": 3, "h2": 2}, 1)
    out = numeric.compile(m, backend)(**(a if backend == "numpy" else {k: torch.tensor(v) for k, v in a.items()}))
    g = out["grad"]["b2"]
    assert isinstance(g, np.ndarray if backend == "numpy" else torch.Tensor), type(g)
    assert tuple(g.shape) == () and float(g) == 0.0
    assert str(g.dtype).endswith("float64")


def test_q_learning_examples_follow_the_reference_step_by_step() -> None:
    """``verify.example`` of an update program other than the optimizers (what a mismatch's reproduce line
    calls): step k + 1's state is the update of step k's arrays, and a step past the example's is refused."""
    import verify

    m = derive.models.get("q_learning", alpha=0.5, gamma=0.9)
    f = numeric.compile(m, "numpy")
    seed = 3  # (four steps: 1 + seed % 4)
    for k in range(1, 4):
        now, after = verify.example(m, seed, {}, step=k), verify.example(m, seed, {}, step=k + 1)
        np.testing.assert_allclose(after["Q"], f(**now)["Q"], rtol=1e-12, atol=1e-12)
        assert not np.array_equal(after["s"], now["s"])  # (each step draws its own inputs)
    assert verify.example(m, seed, {}).keys() == verify.example(m, seed, {}, step=1).keys()
    with pytest.raises(ValueError, match="1..4"):
        verify.example(m, seed, {}, step=5)
