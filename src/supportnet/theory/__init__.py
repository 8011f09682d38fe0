"""Section 3 of the paper as code: the lifting F(x) = U v (Eq. 14-20), recovery of the
weights given the support (P1-P3, Eq. 22-28), the Theorem 1 condition (Eq. 29) and
planted-teacher experiments. See ``docs/theory.md``."""

import importlib
import importlib.util

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


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:  # a submodule (supportnet.theory.planted, ...)
        if name.startswith("_") or importlib.util.find_spec(f"{__name__}.{name}") is None:
            raise AttributeError(f"module 'supportnet.theory' has no attribute {name!r}")
        return importlib.import_module(f".{name}", __name__)
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


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
