"""Chapter 5, feedforward deep networks: the activation layers of §5.3 (sigmoid, tanh, ReLU, leaky ReLU,
softplus), each as a layer entry with loss C = sum(G * S(Z))."""

from __future__ import annotations

from ..program import Model
from . import register
from .ch3 import _layer


@register("sigmoid")
def sigmoid_layer() -> Model:
    r"""Sigmoid layer a = sigma(z); delta = zeta * a (1 - a)."""
    return _layer("sigmoid", "sigmoid activation layer", "§5.3", "sigmoid")


@register("tanh")
def tanh_layer() -> Model:
    r"""Tanh layer a = tanh(z); delta = zeta * (1 - a^2)."""
    return _layer("tanh", "tanh activation layer", "§5.3", "tanh")


@register("relu")
def relu_layer() -> Model:
    r"""ReLU layer a = max(0, z); delta = zeta * 1{z > 0}."""
    return _layer("relu", "ReLU activation layer", "§5.3", "relu")


@register("leaky_relu")
def leaky_relu_layer(slope: float = 0.01) -> Model:
    r"""Leaky ReLU layer a = max(s z, z); delta = zeta * (1{z > 0} + s 1{z <= 0})."""
    return _layer("leaky_relu", "leaky ReLU activation layer", "§5.3", "leaky_relu", slope=slope)


@register("softplus")
def softplus_layer() -> Model:
    r"""Softplus layer a = log(1 + e^z); delta = zeta * sigma(z)."""
    return _layer("softplus", "softplus activation layer", "§5.3", "softplus")
