"""Model registry (the timm habit): ``create_model(name, in_shape, num_classes)``.

Every model takes ``act_layer`` (default :class:`~supportnet.HardThreshold`) so the
non-linearity is swappable without editing the model.
"""

from __future__ import annotations

from . import allcnn, imagenet, nin, simple  # noqa: F401  (each registers its models)
from .registry import (
    count_params,
    create_model,
    default_input,
    list_models,
    model_note,
    on_meta,
    param_count,
    register_model,
)

__all__ = ["count_params", "create_model", "default_input", "list_models", "model_note", "on_meta", "param_count",
           "register_model"]  # fmt: skip
