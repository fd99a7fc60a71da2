r"""The book, side by side: each of the 55 cases of the book's reference table (``shared/BOOK.md``) with the
book's equation and what dlmath prints for it, or the reason dlmath does not cover it.

``case(k)`` returns the LaTeX lines dlmath prints for case ``k`` (forward program, backpropagation, batch
form, Hessian or the extra lines of :mod:`derive.latex`, as the case needs); ``CASES`` holds the book's
equations and where dlmath has them; ``covered()`` lists the cases whose zoo entry exists. The docs page
"The book, side by side" and ``tests/test_book.py`` (which checks each covered case's printed LaTeX beside
a numeric check of the same equation) are built from this table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Case", "CASES", "case", "show", "covered", "not_covered", "summary"]


@dataclass(frozen=True)
class Case:
    """One case of the book's table: its title, the book's equations, and where dlmath prints them."""

    number: int
    title: str
    book: tuple[str, ...]
    entry: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    #: what to print: forward, backward, batch (backward in batch form), hessian, newton, init, jacobian,
    #: tangents (forward mode in the first parameter)
    parts: tuple[str, ...] = ("backward",)
    #: keep only the printed lines whose left-hand side starts with one of these (all lines if empty)
    select: tuple[str, ...] = ()
    #: why dlmath does not cover the case (no entry)
    reason: str = ""


def _c(number: int, title: str, book: tuple[str, ...], entry: str | None = None, *parts: str,
       select: tuple[str, ...] = (), reason: str = "", **options: Any) -> Case:
    return Case(number, title, book, entry, dict(options), tuple(parts) or ("backward",), select, reason)


CASES: dict[int, Case] = {c.number: c for c in [
    _c(1, "Least squares, MSE gradient (§2.3)",
       (r"\nabla C = \frac{2}{n} X^\top (X\theta - y)", r"\nabla^2 C = \frac{2}{n} X^\top X"),
       "linear_regression", "batch", "hessian"),
    _c(2, "Normal equations and pseudo-inverse (§2.3)", (r"\hat\theta = (X^\top X)^{-1} X^\top y = X^\dagger y",),
       reason="a closed-form minimiser, not a derivation: the verifier checks the gradient vanishes there "
              "(tests/test_zoo.py), but dlmath prints no solve"),
    _c(3, "Ridge and weight decay (§2.5)", (r"\frac{1}{n}\|y - X\theta\|^2 + \lambda\|\theta\|^2",
                                            r"\nabla = \frac{2}{n} X^\top (X\theta - y) + 2\lambda\theta"),
       "ridge_regression", "forward", "batch"),
    _c(4, "Gradient descent (§2.4, §4.2)", (r"\theta^{(t+1)} = \theta^{(t)} - \alpha \nabla C(\theta^{(t)})",),
       "sgd", "forward"),
    _c(5, "Regression losses (Fig 2.6)", (r"u^2,\ |u|,\ \text{Huber: } \operatorname{clip}(u, -1, 1)",),
       reason="no zoo entry: a user's own model (the Builder, or an expression) derives it"),
    _c(6, "Train/test error, K-fold validation (§2.5)", (r"E_{\rm train} = \frac{1}{n_{\rm train}}\sum \mathcal{P}",),
       reason="a statistical procedure, not a differentiable model"),
    _c(7, "Logistic-regression gradient (§3.2)", (r"\nabla C = \frac{1}{n}\tilde X^\top(\sigma(\tilde X\theta) - y)",),
       "logistic_regression", "forward", "backward", "batch"),
    _c(8, "Logistic Hessian and Newton (§4.6)", (r"\nabla^2 C = \frac{1}{n}\tilde X^\top D \tilde X,\ D = "
                                                 r"\operatorname{diag}(\hat y_i(1-\hat y_i))",
                                                 r"\theta \leftarrow \theta - (\tilde X^\top D\tilde X)^{-1}"
                                                 r"\tilde X^\top(\hat y - y)"),
       "newton_logistic", "newton"),
    _c(9, "Cross entropy vs squared loss for a sigmoid (Fig 3.4)", (r"\partial_z \mathrm{CE}(y, \sigma(z)) = \sigma(z) - y",),
       "logistic_regression", select=(r"\delta",)),
    _c(10, "Softmax-regression gradient (§3.3)", (r"\partial C/\partial z = \hat y - y,\ \partial C/\partial W = "
                                                  r"(\hat y - y) x^\top",), "softmax_regression", "forward",
       "backward", "batch"),
    _c(11, "Softmax Jacobian (§3.3)", (r"\partial S(z)/\partial z = \operatorname{diag}(s) - s s^\top",), "softmax"),
    _c(12, "Decision boundaries (§3.2-3.4)", (r"b + w^\top x > \log\frac{\tau}{1-\tau}",),
       reason="a classification rule, not a derivative"),
    _c(13, "Shallow autoencoder (§3.5)", (r"\delta_d = 2(\hat x - x),\ g_{W_d} = \delta_d \tilde x^\top",
                                          r"\delta_e = (W_d^\top\delta_d)\odot(1 - \tilde x\odot\tilde x),\ "
                                          r"g_{W_e} = \delta_e x^\top"), "shallow_autoencoder"),
    _c(14, "Momentum (§4.3)", (r"v^{(t+1)} = \beta v^{(t)} + (1-\beta)\nabla C(\theta^{(t)})",
                               r"\theta^{(t+1)} = \theta^{(t)} - \alpha v^{(t+1)}"), "momentum", "forward"),
    _c(15, "SGD, mini-batch (§4.2)", (r"\theta^{(t+1)} = \theta^{(t)} - \alpha\frac{1}{n_b}\sum_{i\in\mathcal B_t}"
                                      r"\nabla C_i(\theta^{(t)})",), "sgd", "forward"),
    _c(16, "Adagrad (§4.5)", (r"s^{(t+1)} = s^{(t)} + g \odot g,\ \theta^{(t+1)} = \theta^{(t)} - "
                              r"\alpha g \oslash (\sqrt{s^{(t+1)}} + \varepsilon)",), "adagrad", "forward"),
    _c(17, "RMSprop", (r"s^{(t+1)} = \gamma s^{(t)} + (1-\gamma) g\odot g",), "rmsprop", "forward"),
    _c(18, "Adam with bias correction (§4.3)", (r"\hat v = v^{(t+1)}/(1 - \beta_1^{t+1}),\ "
                                                r"\theta^{(t+1)} = \theta^{(t)} - \alpha \hat v \oslash (\sqrt{\hat s} + \varepsilon)",),
       "adam", "forward"),
    _c(19, "Newton's method (§4.6)", (r"\theta^{(t+1)} = \theta^{(t)} - [\nabla^2 C]^{-1}\nabla C",),
       "newton_logistic", "newton", select=(r"\theta^{(t+1)}",)),
    _c(20, "Exact line search (§4.5)", (r"\phi(\alpha) = C(\theta + \alpha d)",),
       reason="an inner optimisation loop, not a derivation of a model"),
    _c(21, "Rosenbrock (Figs 4.2, 4.5)", (r"\nabla^2 C = \begin{pmatrix}2 - 400\theta_2 + 1200\theta_1^2 & "
                                          r"-400\theta_1 \\ -400\theta_1 & 200\end{pmatrix}",),
       "rosenbrock", "backward", "hessian"),
    _c(22, "Automatic differentiation on the graph of Fig 4.7 (§4.4)",
       (r"\bar a_j = \sum_{k: j\to k}\bar a_k\,\partial a_k/\partial a_j",
        r"\nabla C = (\theta_2\cos\theta_1\theta_2,\ \theta_1\cos\theta_1\theta_2 + e^{\theta_2+\theta_3},\ "
        r"e^{\theta_2+\theta_3} - 2)"), "autodiff_example", "tangents", "backward"),
    _c(23, "Forward vs reverse mode on logistic regression (§4.4)",
       (r"\text{forward: } d \text{ JVP sweeps, } O(nd^2);\ \text{reverse: one VJP sweep, } O(nd) "
        r"\text{, returning case 7}",), "logistic_regression", "tangents", "backward"),
    _c(24, "Forward pass (§5.1)", (r"a^{[\ell]} = S^{[\ell]}(W^{[\ell]}a^{[\ell-1]} + b^{[\ell]})",), "mlp", "forward"),
    _c(25, "Expressivity construction (§5.2)", (r"f(x) = W^{[2]}\mathrm{ReLU}(W^{[1]}x + b^{[1]}) + b^{[2]}",),
       reason="a construction of weights, not a derivation"),
    _c(26, "General backprop (§5.4)", (r"\zeta^{[\ell]} = \frac{\partial a^{[\ell+1]}}{\partial a^{[\ell]}}\zeta^{[\ell+1]}",),
       "mlp", select=(r"\zeta",)),
    _c(27, "Dense-layer backprop", (r"\delta^{[\ell]} = \dot\sigma(z^{[\ell]})\odot\zeta^{[\ell]},\ "
                                    r"g_W^{[\ell]} = \delta^{[\ell]}a^{[\ell-1]\top}",
                                    r"g_W = \frac{1}{n_b}\Delta^{[\ell]}A^{[\ell-1]\top}"), "mlp", "backward", "batch"),
    _c(28, "Vanishing and exploding gradients (§5.4)", (r"\zeta^{[\ell]} = (W^\top)^{L-\ell}\zeta^{[L]}",),
       reason="a property of products of Jacobians; the recursion itself is case 26"),
    _c(29, "Activation derivatives (§5.3)", (r"\mathrm{ReLU}'(u) = \mathbf 1\{u > 0\}",), "relu"),
    _c(30, "Weight initialisation (§5.5)", (r"\operatorname{Var}W_{ij} = \frac{2}{N_{\ell-1}+N_\ell}",
                                            r"\operatorname{Var}W_{ij} = \frac{2}{N_{\ell-1}} \text{ (He)}"),
       "mlp", "init"),
    _c(31, "Batch norm forward (§5.6)", (r"\hat\mu = \frac{1}{n_b}\sum_i z^{(i)},\ \bar z^{(i)} = "
                                         r"\frac{z^{(i)} - \hat\mu}{\sqrt{\hat\sigma^2 + \varepsilon}},\ \tilde z^{(i)} = "
                                         r"\gamma\bar z^{(i)} + \beta",), "batch_norm", "forward"),
    _c(32, "Batch norm backward", (r"\frac{\partial C}{\partial z^{(i)}} = \frac{\gamma}{n_b\sqrt{\hat\sigma^2+\varepsilon}}"
                                   r"\big[n_b g_i - \sum_j g_j - \bar z^{(i)}\sum_j g_j\bar z^{(j)}\big]",), "batch_norm"),
    _c(33, "Dropout (§5.7)", (r"\tilde a = m\odot a/p_{\rm keep},\ \bar a = m \odot \bar{\tilde a}/p_{\rm keep}",),
       "dropout", "forward", "backward"),
    _c(34, "Convolution forward (§6.2-6.3)", (r"z^{(o)} = \sum_c W^{(o,c)} \star x^{(c)} + b^{(o)}",), "conv2d", "forward"),
    _c(35, "Convolution backward", (r"\partial C/\partial w = x \star \delta,\ \partial C/\partial x = "
                                    r"\operatorname{pad}_{k-1}(\delta)\star\operatorname{rot180}(w)",), "conv2d"),
    _c(36, "Pooling (Fig 6.11)", (r"\partial z/\partial x_{ij} = \mathbf{1}\{(i,j) = \arg\max\},\ 1/|R|",),
       "max_pool2d", "forward", "backward"),
    _c(37, "Residual block (§6.5, Fig 6.14)", (r"a^{[\ell+2]} = S(z^{[\ell+2]} + a^{[\ell]})",),
       "residual_block", "forward", "backward"),
    _c(38, "RNN (7.2), (7.4)", (r"h^{\langle t\rangle} = S_h(W_{hh}h^{\langle t-1\rangle} + W_{hx}x^{\langle t\rangle} + b_h)",),
       "rnn", "forward"),
    _c(39, "Backpropagation through time (7.6)-(7.11)", (r"\zeta^{\langle t\rangle} = \frac{1}{T}W_{yh}^\top(\hat y^{\langle t\rangle}"
                                                         r" - y^{\langle t\rangle}) + W_{hh}^\top(\dot\sigma\odot\zeta^{\langle t+1\rangle})",
                                                         r"\frac{\partial h^{\langle t+1\rangle}}{\partial h^{\langle t\rangle}} = "
                                                         r"W_{hh}^\top\operatorname{diag}\dot\sigma(\cdot)"),
       "rnn", "backward", "jacobian"),
    _c(40, "LSTM (7.16)-(7.17)", (r"c^{\langle t\rangle} = g_f\odot c^{\langle t-1\rangle} + g_i\odot S_{\rm Tanh}(\cdots),\ "
                                  r"h^{\langle t\rangle} = g_o \odot S_{\rm Tanh}(c^{\langle t\rangle})",), "lstm", "forward", "backward"),
    _c(41, "GRU (7.18)-(7.19)", (r"h^{\langle t\rangle} = (1-g_u)\odot h^{\langle t-1\rangle} + g_u\odot S_{\rm Tanh}(W_{\tilde hh}"
                                 r"(g_r\odot h^{\langle t-1\rangle}) + \cdots)",), "gru", "forward"),
    _c(42, "Attention (7.20)-(7.22)", (r"u^{\langle t\rangle} = \sum_\tau \alpha_\tau^{\langle t\rangle} v^{\langle \tau\rangle}",),
       "attention", "forward"),
    _c(43, "Multi-head self-attention (7.24)-(7.27)", (r"u^{h,\langle t\rangle} = \sum_\tau\alpha^{h,\langle t\rangle}_\tau W_v^h x^{\langle\tau\rangle},\ "
                                                       r"u^{\langle t\rangle} = \sum_h W_c^h u^{h,\langle t\rangle}",),
       "multihead_attention", "forward"),
    _c(44, "Scaled dot-product attention gradient", (r"\bar S = A \odot (\bar A - \operatorname{rowsum}(\bar A \odot A)\mathbf 1^\top),\ "
                                                     r"\bar Q = K\bar S^\top/\sqrt m",), "attention"),
    _c(45, "Layer norm (7.31)", (r"\mathrm{LN}(z) = \gamma\odot\frac{z - \mu_z}{\sqrt{\sigma_z^2 + \varepsilon}} + \beta",),
       "layer_norm", "forward", "backward"),
    _c(46, "Transformer block (7.31)", (r"u_{[2]} = \mathrm{LN}(a_{\rm in} + u_{[1]}),\ u_{[3]} = W^{[2]}\mathrm{ReLU}"
                                        r"(W^{[1]}u_{[2]} + b^{[1]}) + b^{[2]},\ a_{\rm out} = \mathrm{LN}(u_{[2]} + u_{[3]})",),
       "transformer_block", "forward"),
    _c(47, "Positional embedding (7.29)-(7.30)", (r"r^{\langle t\rangle}_{2i} = \sin(t/M^{2i/p}),\ r^{\langle t\rangle}_{2i+1} = "
                                                  r"\cos(t/M^{2i/p}),\ \tilde x^{\langle t\rangle} = x^{\langle t\rangle} + r^{\langle t\rangle}",),
       "positional_encoding", "forward"),
    _c(48, "GAN minimax (§8.3)", (r"\min_\theta\max_\phi\ \mathbb E\log f^D_\phi(x) + \mathbb E\log(1 - f^D_\phi(f^G_\theta(z)))",),
       "gan", "forward", "backward"),
    _c(49, "Non-saturating generator loss", (r"C_G = -\mathbb E_z \log f^D_\phi(f^G_\theta(z))",), "gan", "forward",
       "backward", player="generator", generator_loss="non_saturating"),
    _c(50, "WGAN with gradient penalty (§8.3)", (r"\mathbb E f_\phi(f^G_\theta(z)) - \mathbb E f_\phi(x) + \lambda\mathbb E"
                                                 r"(\|\nabla_{\hat x} f_\phi(\hat x)\|_2 - 1)^2",), "wgan_gp", "forward"),
    _c(51, "Bellman equations (§8.4)", (r"V^*(s) = \max_a\sum_{s'}P(s'|s,a)[r + \gamma V^*(s')]",),
       reason="a fixed-point equation of a known MDP, not a differentiable model (its sampled form is case 52)"),
    _c(52, "Q-learning", (r"Q(s,a) \leftarrow Q(s,a) + \alpha[r + \gamma\max_{a'}Q(s',a') - Q(s,a)]",), "q_learning", "forward"),
    _c(53, "DQN loss and semi-gradient", (r"C(\theta) = \mathbb E(y - Q(s,a;\theta))^2,\ y = r + \gamma(1 - \mathrm{done})"
                                          r"\max_{a'}Q(s',a';\theta^-)",), "dqn", "forward", "backward"),
    _c(54, "VAE ELBO and Gaussian KL (§8.1, App. B.2)", (r"\mathrm{KL} = \frac12\sum_j(\sigma_j^2 + \mu_j^2 - 1 - \log\sigma_j^2)",),
       "vae", "forward"),
    _c(55, "Cross entropy and KL (App. B.1)", (r"H(p, q) = -\sum_k p_k\log q_k",), "softmax_regression", "forward",
       select=("C",)),
]}


class Lines(list):  # type: ignore[type-arg]
    """The LaTeX lines of one case (a list; its repr stays short in the docs' transcripts)."""

    def __repr__(self) -> str:
        return f"<{len(self)} equations>"


def _exists(c: Case) -> bool:
    from . import models

    return c.entry is not None and c.entry in models.names()


def covered() -> list[int]:
    """The cases whose zoo entry exists."""
    return [k for k, c in CASES.items() if _exists(c)]


def not_covered() -> dict[int, str]:
    """The cases dlmath does not print, with the reason."""
    return {k: (c.reason or f"its entry {c.entry!r} is not in the zoo yet") for k, c in CASES.items()
            if not _exists(c)}


def case(k: int) -> Lines:
    """The LaTeX lines dlmath prints for case ``k`` of the book's table."""
    from . import models
    from .autodiff import backprop, forward_mode, hessian
    from .latex import init_tex, jacobian_tex, newton_tex, program_tex

    c = CASES[k]
    if not _exists(c):
        raise KeyError(f"case {k} ({c.title}) is not covered: {not_covered()[k]}")
    assert c.entry is not None
    m = models.get(c.entry, **c.options)
    L = m.options.get("layers") if isinstance(m.options.get("layers"), int) else None
    parts: dict[str, Callable[[], list[str]]] = {
        "forward": lambda: program_tex(m.equations, layers=L, model=m),
        "backward": lambda: program_tex(backprop(m), layers=L, model=m),
        "batch": lambda: [t for t in program_tex(backprop(m), batch=True, layers=L, model=m) if r"\frac{1}{" in t
                          or r"\frac{2}{" in t],
        "hessian": lambda: [t for p in m.hessian_wrt for t in program_tex(hessian(m, p), batch=True, model=m)],
        "newton": lambda: newton_tex(m),
        "init": lambda: init_tex(m),
        "jacobian": lambda: jacobian_tex(m),
        # forward mode in the first parameter: each tangent carries d columns, one sweep per column
        "tangents": lambda: program_tex(forward_mode(m, next(iter(m.params))), model=m),
    }
    out: list[str] = []
    for part in c.parts:
        out += parts[part]()
    if c.select:
        out = [t for t in out if t.startswith(c.select)]
    return Lines(out)


class Summary(str):
    """A one-line summary that prints as itself."""

    def __repr__(self) -> str:
        return str(self)


def summary() -> Summary:
    """How many of the book's cases dlmath prints, and which it does not."""
    cov, no = covered(), not_covered()
    return Summary(f"{len(cov)} of {len(CASES)} cases covered; not covered: {', '.join(map(str, no))}")


def show(k: int) -> Lines:
    r"""What the docs show for case ``k``: dlmath's lines, or why the case is not covered (as ``\text``)."""
    if k in not_covered():
        why = "".join("\\" + c if c in "_#%&$" else c for c in not_covered()[k])
        return Lines([rf"\text{{not covered: {why}}}"])
    return case(k)
