"""Categorical targets of the zoo: the ``targets`` option of every entry with a softmax cross entropy.

``"probabilities"`` (the default): ``Y`` of shape (n, K), rows on the simplex, ``C = -y^T log yhat``;
``"one_hot"``: the same ``Y``, drawn one-hot (domain ``one_hot``); ``"labels"``: integer class indices ``y`` of
shape (n,) (``(T, n)`` for sequences), ``C = -log yhat_y`` (printed so).
"""

from __future__ import annotations

from typing import Any

from ..program import Builder, ModelError
from ..tensor import Node, Var

__all__ = ["TARGETS", "check_targets", "target_input", "cross_entropy"]

#: the choices of the ``targets`` option
TARGETS = ("probabilities", "one_hot", "labels")


def check_targets(name: str, targets: Any) -> str:
    if targets not in TARGETS:
        raise ModelError(f"{name}: targets {targets!r} is unknown; choose one of: {', '.join(TARGETS)}")
    return str(targets)


def target_input(b: Builder, targets: str, K: Any, tex: str = "y") -> Var:
    """The target input: ``Y`` (K,) per sample for probabilities and one-hot rows, ``y`` () labels."""
    if targets == "labels":
        return b.input("y", (), tex, batched=True, domain="labels")
    return b.input("Y", (K,), tex, batched=True, domain="simplex" if targets == "probabilities" else "one_hot")


def cross_entropy(y: Var, yhat: Node) -> Node:
    """``-y^T log yhat`` for probability (one-hot) rows, ``-log yhat_y`` for integer labels."""
    from ..nn import dot, gather, log

    if y.domain == "labels":
        return -log(gather(yhat, y))
    return -dot(y, log(yhat))
