r"""
Activation functions and their derivatives
==========================================

The activation layers of §5.3, each a zoo entry whose loss is :math:`C = \sum G \odot \sigma(Z)`: its
gradient in :math:`Z` with :math:`G = 1` is the derivative :math:`\sigma'(Z)`. The curves below are the
generated NumPy kernels of those entries evaluated on a grid, and the legend is the backpropagation
equation ``derive`` prints for each.
"""

import matplotlib.pyplot as plt
import numpy as np

import derive
import numeric

names = ["sigmoid", "tanh", "relu", "leaky_relu", "softplus"]
z = np.linspace(-4, 4, 801)[:, None]  # 801 samples of one unit

fig, axes = plt.subplots(1, len(names), figsize=(15, 3.4), sharex=True)
for ax, name in zip(axes, names):
    m = derive.models.get(name)
    trace = numeric.trace(m, "reverse", Z=z, G=np.ones_like(z))  # every value of the program: a, C, g_Z
    out = numeric.compile(m, backend="numpy")(Z=z, G=np.ones_like(z))
    assert np.array_equal(out["grad"]["Z"], trace["g_Z"])
    ax.plot(z[:, 0], trace["a"][:, 0], label="activation $a$", color="#264653")
    ax.plot(z[:, 0], trace["g_Z"][:, 0], label=r"derivative $\partial a / \partial z$", color="#e76f51")
    forward = derive.latex(m.equations[0])
    backward = derive.latex(derive.backprop(m)[0])
    ax.set_title(f"${forward}$\n${backward}$", fontsize=8)
    ax.axhline(0, color="#adb5bd", linewidth=0.6)
    ax.grid(alpha=0.3)
axes[0].legend(fontsize=8)
fig.tight_layout()
plt.show()

# %%
# The equations, as ``derive.backprop`` writes them (per sample, with :math:`\zeta` the upstream
# gradient):

for name in names:
    m = derive.models.get(name)
    print(f"{name:11s}", derive.latex(m.equations[0]), "   ", derive.latex(derive.backprop(m)[0]))
