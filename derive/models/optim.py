"""Chapter 4, optimization algorithms: the update rules of §4.2-4.5 as update programs.

Each entry maps a state (``theta`` and the optimizer's moments ``v``, ``s``, the step count ``t``) and a
gradient ``g`` to the next state. Hyperparameters are symbols in the equations (``\\alpha``, ``\\beta``)
and numbers in the kernels. Each is verified over several steps against ``torch.optim``.
"""

from __future__ import annotations

import sympy as sp

from ..nn import sqrt
from ..program import Builder, Model, ModelError
from ..tensor import Node
from . import register


def _start(name: str, title: str, section: str, options: dict[str, object]) -> tuple[Builder, sp.Symbol]:
    b = Builder(name, title, section, options)
    p = b.dim("p", 4, 1, 6)
    return b, p


#: where epsilon goes in the adaptive methods: "outside" the square root (torch.optim and the book,
#: sqrt(s) + eps) or "inside" (sqrt(s + eps), common in from-scratch code and some frameworks)
EPS_PLACEMENTS = ("outside", "inside")


def _eps_check(name: str, eps_placement: str) -> None:
    if eps_placement not in EPS_PLACEMENTS:
        raise ModelError(f"{name}: eps_placement {eps_placement!r} is unknown; choose 'outside' (torch.optim, "
                         "sqrt(s) + eps) or 'inside' (sqrt(s + eps))")


def _denominator(s: Node, ep: sp.Symbol, eps_placement: str) -> Node:
    return sqrt(s + ep) if eps_placement == "inside" else sqrt(s) + ep


def _theta(b: Builder, p: sp.Symbol) -> tuple[Node, Node]:
    theta = b.state("theta", (p,), r"\theta^{(t)}")
    g = b.input("g", (p,), r"g^{(t)}")
    return theta, g


@register("sgd", "§4.2", "stochastic gradient descent")
def sgd(lr: float = 0.01, weight_decay: float = 0.0) -> Model:
    r"""Gradient descent theta^{(t+1)} = theta^{(t)} - alpha (g + lambda theta)."""
    b, p = _start("sgd", "stochastic gradient descent", "§4.2", {"lr": lr, "weight_decay": weight_decay})
    theta, g = _theta(b, p)
    alpha, wd = b.const("alpha", lr), b.const("lambda_wd", weight_decay)
    grad = g + wd * theta if weight_decay else g
    nxt = b.eq("theta_next", theta - alpha * grad, r"\theta^{(t+1)}")
    return b.update_model({"theta": nxt})


@register("momentum", "§4.3", "momentum (book form)")
def momentum(lr: float = 0.01, beta: float = 0.9, form: str = "book") -> Model:
    r"""Momentum. ``form="book"``: v = beta v + (1 - beta) g, theta = theta - alpha v (exponential smoothing);
    ``form="torch"``: v = beta v + g, theta = theta - alpha v (PyTorch's SGD momentum)."""
    if form not in ("book", "torch"):
        raise ModelError(f"momentum form {form!r} is unknown; choose 'book' or 'torch'")
    b, p = _start("momentum", f"momentum ({form} form)", "§4.3", {"lr": lr, "beta": beta, "form": form})
    theta, g = _theta(b, p)
    v = b.state("v", (p,), "v^{(t)}")
    alpha, be = b.const("alpha", lr), b.const("beta", beta)
    v1 = b.eq("v_next", be * v + (1 - be) * g if form == "book" else be * v + g, "v^{(t+1)}")
    th = b.eq("theta_next", theta - alpha * v1, r"\theta^{(t+1)}")
    return b.update_model({"theta": th, "v": v1})


@register("nesterov", "§4.3", "Nesterov accelerated gradient")
def nesterov(lr: float = 0.01, beta: float = 0.9) -> Model:
    r"""Nesterov momentum in PyTorch's form: v = beta v + g, theta = theta - alpha (g + beta v)."""
    b, p = _start("nesterov", "Nesterov accelerated gradient", "§4.3", {"lr": lr, "beta": beta})
    theta, g = _theta(b, p)
    v = b.state("v", (p,), "v^{(t)}")
    alpha, be = b.const("alpha", lr), b.const("beta", beta)
    v1 = b.eq("v_next", be * v + g, "v^{(t+1)}")
    th = b.eq("theta_next", theta - alpha * (g + be * v1), r"\theta^{(t+1)}")
    return b.update_model({"theta": th, "v": v1})


@register("adagrad", "§4.5", "Adagrad")
def adagrad(lr: float = 0.01, eps: float = 1e-10, eps_placement: str = "outside") -> Model:
    r"""Adagrad: s = s + g * g, theta = theta - alpha g / (sqrt(s) + epsilon).

    Args:
        eps_placement: "outside" (torch.optim and the book: sqrt(s) + eps) or "inside" (sqrt(s + eps)).
    """
    _eps_check("adagrad", eps_placement)
    b, p = _start("adagrad", "Adagrad", "§4.5", {"lr": lr, "eps": eps,
                                                   **({"eps_placement": eps_placement} if eps_placement != "outside" else {})})
    theta, g = _theta(b, p)
    s = b.state("s", (p,), "s^{(t)}")
    alpha, ep = b.const("alpha", lr), b.const("epsilon", eps)
    s1 = b.eq("s_next", s + g * g, "s^{(t+1)}")
    th = b.eq("theta_next", theta - alpha * g / _denominator(s1, ep, eps_placement), r"\theta^{(t+1)}")
    return b.update_model({"theta": th, "s": s1})


@register("rmsprop", "§4.5", "RMSprop")
def rmsprop(lr: float = 0.01, gamma: float = 0.99, eps: float = 1e-8, eps_placement: str = "outside") -> Model:
    r"""RMSprop: s = gamma s + (1 - gamma) g * g, theta = theta - alpha g / (sqrt(s) + epsilon).

    Args:
        eps_placement: "outside" (torch.optim and the book: sqrt(s) + eps) or "inside" (sqrt(s + eps)).
    """
    _eps_check("rmsprop", eps_placement)
    b, p = _start("rmsprop", "RMSprop", "§4.5", {"lr": lr, "gamma": gamma, "eps": eps,
                                                   **({"eps_placement": eps_placement} if eps_placement != "outside" else {})})
    theta, g = _theta(b, p)
    s = b.state("s", (p,), "s^{(t)}")
    alpha, ga, ep = b.const("alpha", lr), b.const("gamma", gamma), b.const("epsilon", eps)
    s1 = b.eq("s_next", ga * s + (1 - ga) * g * g, "s^{(t+1)}")
    th = b.eq("theta_next", theta - alpha * g / _denominator(s1, ep, eps_placement), r"\theta^{(t+1)}")
    return b.update_model({"theta": th, "s": s1})


def _adam(name: str, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float,
          decoupled: bool, eps_placement: str = "outside") -> Model:
    _eps_check(name, eps_placement)
    b, p = _start(name, "Adam with bias correction" + (" and decoupled weight decay" if decoupled else ""),
                  "§4.3", {"lr": lr, "beta1": beta1, "beta2": beta2, "eps": eps, "weight_decay": weight_decay,
                           **({"eps_placement": eps_placement} if eps_placement != "outside" else {})})
    theta, g = _theta(b, p)
    v = b.state("v", (p,), "v^{(t)}")
    s = b.state("s", (p,), "s^{(t)}")
    t = b.state("t", (), "t", domain="count")  # steps taken: 0, 1, 2, ... (checked by the kernels)
    alpha, b1, b2 = b.const("alpha", lr), b.const("beta1", beta1), b.const("beta2", beta2)
    ep, wd = b.const("epsilon", eps), b.const("lambda_wd", weight_decay)
    if weight_decay and not decoupled:
        g = b.eq("g_wd", g + wd * theta, r"\tilde{g}^{(t)}")
    # the step counter t + 1, named once (the kernels compute it once) and printed as itself: the exponent
    # reads beta_1^{t+1}, with no auxiliary symbol
    t1 = b.eq("t_next", t + 1, "t + 1")
    v1 = b.eq("v_next", b1 * v + (1 - b1) * g, "v^{(t+1)}")
    s1 = b.eq("s_next", b2 * s + (1 - b2) * g * g, "s^{(t+1)}")
    vh = b.eq("v_hat", v1 / (1 - b1**t1), r"\hat{v}")
    sh = b.eq("s_hat", s1 / (1 - b2**t1), r"\hat{s}")
    base = theta * (1 - alpha * wd) if (weight_decay and decoupled) else theta
    th = b.eq("theta_next", base - alpha * vh / _denominator(sh, ep, eps_placement), r"\theta^{(t+1)}")
    return b.update_model({"theta": th, "v": v1, "s": s1, "t": t1})


@register("adam", "§4.3", "Adam with bias correction")
def adam(lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
         weight_decay: float = 0.0, eps_placement: str = "outside") -> Model:
    r"""Adam: moments v, s with bias correction v / (1 - beta_1^{t+1}), s / (1 - beta_2^{t+1}).

    Args:
        eps_placement: "outside" (torch.optim and the book: sqrt(s_hat) + eps) or "inside" (sqrt(s_hat + eps)).
    """
    return _adam("adam", lr, beta1, beta2, eps, weight_decay, decoupled=False, eps_placement=eps_placement)


@register("adamw", "§4.3", "Adam with bias correction and decoupled weight decay")
def adamw(lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
          weight_decay: float = 1e-2, eps_placement: str = "outside") -> Model:
    r"""AdamW: Adam with decoupled weight decay theta (1 - alpha lambda).

    Args:
        eps_placement: "outside" (torch.optim and the book: sqrt(s_hat) + eps) or "inside" (sqrt(s_hat + eps)).
    """
    return _adam("adamw", lr, beta1, beta2, eps, weight_decay, decoupled=True, eps_placement=eps_placement)
