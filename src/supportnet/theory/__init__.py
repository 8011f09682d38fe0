"""Section 3 of the paper as code: the lifting F(x) = U v (Eq. 14-20), recovery of the
weights given the support (P1-P3, Eq. 22-28), the Theorem 1 condition (Eq. 29) and
planted-teacher experiments. See ``docs/theory.md``."""

from .lifting import check_lifting, conv_matrix, lifted_U, lifted_v
from .planted import PlantedConfig, make_teacher, run_planted, run_three_layer, solver_times
from .recovery import (
    TwoLayerProblem,
    als,
    lifted_operator,
    lifted_svd,
    local_descent,
    rip2_estimate,
    svp,
    theorem1,
    theorem1_two_layer,
)

__all__ = [
    "check_lifting",
    "conv_matrix",
    "lifted_U",
    "lifted_v",
    "PlantedConfig",
    "make_teacher",
    "run_planted",
    "run_three_layer",
    "solver_times",
    "TwoLayerProblem",
    "als",
    "lifted_operator",
    "lifted_svd",
    "local_descent",
    "rip2_estimate",
    "svp",
    "theorem1",
    "theorem1_two_layer",
]
