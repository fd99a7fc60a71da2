r"""
Gradient descent and Newton's method on Rosenbrock's function
=============================================================

Rosenbrock's banana function (§4.1), :math:`C(\theta) = (1 - \theta_1)^2 + 100 (\theta_2 - \theta_1^2)^2`,
has its minimum at :math:`(1, 1)` at the bottom of a long curved valley. Gradient descent follows the
gradient, which points across the valley; Newton's method rescales it by the inverse Hessian. Both run
here on the kernels dlmath generates: the zoo entry ``rosenbrock`` compiled with its Hessian, and the
update program ``sgd`` (the book's gradient-descent step) for the descent. The entries' pages,
:doc:`/zoo/rosenbrock` and :doc:`/zoo/sgd`, show their equations typeset.
"""

import matplotlib.pyplot as plt
import numpy as np

import derive
import numeric

rosen = derive.models.get("rosenbrock")
f = numeric.compile(rosen, backend="numpy", hessian=["theta"])
sgd = numeric.compile(derive.models.get("sgd", lr=0.0015), backend="numpy")

for eq in [*rosen.equations, *derive.backprop(rosen)]:
    print(derive.latex(eq))

# %%
# Gradient descent, 3000 steps of :math:`\theta \leftarrow \theta - \alpha g` with :math:`\alpha = 0.0015`,
# and Newton, :math:`\theta \leftarrow \theta - H^{-1} g`, from :math:`(-1.2, 1)`:

start = np.array([-1.2, 1.0])
gd = [start]
for _ in range(3000):
    g = f(theta=gd[-1])["grad"]["theta"]
    gd.append(sgd(theta=gd[-1], g=g)["theta"])
newton = [start]
for _ in range(8):
    out = f(theta=newton[-1])
    newton.append(newton[-1] - np.linalg.solve(out["hessian"]["theta"], out["grad"]["theta"]))
gd, newton = np.array(gd), np.array(newton)
print("gradient descent after 3000 steps:", gd[-1], " loss", f(theta=gd[-1])["loss"])
print("Newton after 8 steps:            ", newton[-1], " loss", f(theta=newton[-1])["loss"])

# %%
# The loss surface (evaluated by the same kernel on a grid) with both paths:

loss_only = numeric.compile(rosen, backend="numpy", check=False)  # no per-call input checks: 18 000 calls
t1, t2 = np.meshgrid(np.linspace(-2, 2, 150), np.linspace(-3.5, 3.5, 120))
loss = np.array([[loss_only(theta=np.array([a, b]))["loss"] for a, b in zip(r1, r2)] for r1, r2 in zip(t1, t2)])


def height(path):
    return np.log1p([f(theta=t)["loss"] for t in path])


fig = plt.figure(figsize=(12, 5))
ax3 = fig.add_subplot(1, 2, 1, projection="3d", computed_zorder=False)
ax3.plot_surface(t1, t2, np.log1p(loss), cmap="viridis", linewidth=0, alpha=0.8, zorder=1)
ax3.plot(gd[:, 0], gd[:, 1], height(gd), color="#e76f51", linewidth=2, zorder=3)
ax3.plot(newton[:, 0], newton[:, 1], height(newton), "o-", color="#264653", markersize=3, zorder=4)
ax3.set_xlabel(r"$\theta_1$")
ax3.set_ylabel(r"$\theta_2$")
ax3.set_zlabel(r"$\log(1 + C)$")
ax3.view_init(elev=38, azim=-120)
ax = fig.add_subplot(1, 2, 2)
ax.contour(t1, t2, np.log1p(loss), levels=25, cmap="viridis", linewidths=0.7)
ax.plot(gd[:, 0], gd[:, 1], color="#e76f51", linewidth=1.5, label=f"gradient descent ({len(gd) - 1} steps)")
ax.plot(newton[:, 0], newton[:, 1], "o-", color="#264653", markersize=4, label=f"Newton ({len(newton) - 1} steps)")
ax.plot([1], [1], "*", color="gold", markersize=14, markeredgecolor="black", label="minimum (1, 1)")
ax.set_xlabel(r"$\theta_1$")
ax.set_ylabel(r"$\theta_2$")
ax.legend(fontsize=8, loc="upper left")
fig.tight_layout()
plt.show()
