"""Weight-phase solvers that use the convexity a fixed support gives (a core module).

Given the multi-layer support, the network is linear in each layer's weights (Huang, Kong, Lucey
2017, Sec. 3.2, Eq. 13-19), so each layer's loss is convex and its region does not move while the
weights do (Sec. 3.3). Three pieces, each usable in a plain PyTorch loop:

* :class:`KFAC` (:mod:`.kfac`): Kronecker-factored natural-gradient steps (Martens & Grosse 2015;
  Grosse & Martens 2016) with momentum and an Armijo line search whose passes hold the support;
* :func:`hold_supports` (:mod:`.hold`): keeps B-alternation's batch support fixed across the passes
  of one step (I-alternation's per-example supports are fixed already; free mode holds nothing);
* :func:`solve_head` (:mod:`.head`): solves the classifier layer exactly (multinomial logistic
  regression by Newton's method) on the features of the current network;
* :func:`newton_cg_layer` (:mod:`.newton`): Newton-CG on any one layer's weights with
  Gauss-Newton-vector products under the held support (a block of a block-coordinate sweep).

The same code on the free network (``free`` mode, the SGD schedule) is the control.
Imports only :mod:`supportnet.errors`, :mod:`supportnet.layers` and :mod:`supportnet.data`.
"""

from .head import HeadReport, head_features, last_linear, solve_head
from .hold import hold_supports, support_from_output
from .kfac import KFAC, LINE_SEARCHES, damped_inverse, layer_inputs, output_grads, supported
from .newton import LayerReport, newton_cg_layer

__all__ = [
    "KFAC",
    "LINE_SEARCHES",
    "HeadReport",
    "LayerReport",
    "damped_inverse",
    "head_features",
    "hold_supports",
    "last_linear",
    "layer_inputs",
    "newton_cg_layer",
    "output_grads",
    "solve_head",
    "supported",
    "support_from_output",
]
