"""Section 3 of the paper as code: the lifting F(x) = U v (Eq. 14-20), recovery of the
weights given the support (P1-P3, Eq. 22-28), the Theorem 1 condition (Eq. 29) and
planted-teacher experiments. See ``docs/theory.md``."""

from typing import TYPE_CHECKING

from .._lazy import lazy_names as _lazy_names

# name -> the submodule that defines it, imported on first use (PEP 562): building the
# command line imports supportnet.theory.cli, which must not import torch.
_EXPORTS = {
    **dict.fromkeys(("check_lifting", "conv_matrix", "lifted_U", "lifted_v"), "lifting"),
    **dict.fromkeys(("PlantedConfig", "make_teacher", "run_planted", "run_three_layer", "solver_times"), "planted"),
    **dict.fromkeys(
        (
            "TwoLayerProblem",
            "als",
            "lifted_operator",
            "lifted_svd",
            "local_descent",
            "rip2_estimate",
            "svp",
            "theorem1",
            "theorem1_two_layer",
        ),  # fmt: skip
        "recovery",
    ),
}


if TYPE_CHECKING:  # the same names, for type checkers and IDEs
    from .lifting import check_lifting, conv_matrix, lifted_U, lifted_v  # noqa: F401
    from .planted import PlantedConfig, make_teacher, run_planted, run_three_layer, solver_times  # noqa: F401
    from .recovery import (  # noqa: F401
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


__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = _lazy_names(__name__, _EXPORTS, ("lifting", "planted", "recovery"))
