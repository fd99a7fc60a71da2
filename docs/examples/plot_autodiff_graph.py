r"""
Automatic differentiation on the graph of Fig 4.7
=================================================

The book's running example of automatic differentiation (§4.4) is the function

.. math:: C(\theta) = \sin(\theta_1 \theta_2) + e^{\theta_2 + \theta_3} - 2 \theta_3 ,

written as a computational graph of elementary operations :math:`a_1, \dots, a_6`. dlmath has it as the
zoo entry ``autodiff_example``: its program is the graph, ``derive.forward_mode`` and
``derive.backprop`` give the forward-mode and reverse-mode equations, and ``numeric.trace`` evaluates
every one of them at :math:`\theta = (1, 2, 0.5)`. The equations below are printed as LaTeX source;
the entry's page, :doc:`/zoo/autodiff_example`, shows them typeset.
"""

import matplotlib.pyplot as plt
import numpy as np

import derive
import dlmath.plot
import numeric

m = derive.models.get("autodiff_example")
theta = np.array([1.0, 2.0, 0.5])

# %%
# The forward program, one elementary operation per line:

for eq in m.equations:
    print(derive.latex(eq))

# %%
# The reverse-mode (adjoint) program: :math:`\bar a_k = \partial C / \partial a_k`, from the output back
# to the inputs, and the gradient :math:`g_\theta` assembled from the adjoints:

for eq in derive.backprop(m):
    print(derive.latex(eq))

# %%
# Both traces evaluated, the forward values :math:`a_k` and the adjoints :math:`\bar a_k` of the reverse
# sweep; the forward-mode sweep computes the tangents :math:`\dot a_k = \partial a_k / \partial \theta`
# instead (one column per component of :math:`\theta`).

forward = numeric.trace(m, "forward", theta=theta)
reverse = numeric.trace(m, "reverse", theta=theta)
for k in range(1, 7):
    print(f"a{k} = {forward[f'a{k}']:9.6f}   a{k}_bar = {float(reverse[f'a{k}_bar']):9.6f}   "
          f"a{k}_dot = {np.array2string(forward[f'a{k}_dot'], precision=6)}")
print("gradient (reverse mode): ", reverse["g_theta"])
print("gradient (forward mode): ", forward["a6_dot"])
assert np.allclose(reverse["g_theta"], forward["a6_dot"])

# %%
# The graph of the program, each node annotated with its forward value and its adjoint (the inputs with
# their gradient entries):

values = {f"a{k}": rf"$a_{k}$ = {float(forward[f'a{k}']):.4g}" "\n" rf"$\bar a_{k}$ = {float(reverse[f'a{k}_bar']):.4g}"
          for k in range(1, 7)}
for i in range(3):
    values[f"theta[{i}]"] = rf"$\theta_{i + 1}$ = {theta[i]:g}" "\n" rf"$g_{i + 1}$ = {reverse['g_theta'][i]:.4g}"
fig = dlmath.plot.draw_program(m, values=values, title=r"Fig 4.7 at $\theta = (1, 2, 0.5)$: forward values and adjoints")
fig.set_size_inches(9, 4.6)
plt.show()
