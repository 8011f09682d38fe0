"""What a config builds: its data and its model, seeded so that every method starts alike.

:func:`build` loads the data set ``cfg.data`` names and creates the model ``cfg.model`` names
from the same seed, so every method of a comparison starts from the same weights; a model that
cannot take the data's input is refused here, in one line, before any run folder is written.
"""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import torch
from torch import nn

from .config import Config
from .data import DataBundle, Split, load_data
from .errors import ConfigError
from .layers import threshold_layers
from .models import create_model

__all__ = ["build", "check_model_fits", "seed_everything", "to_device"]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def build(cfg: Config, data: DataBundle | None = None):
    """Data and model for ``cfg``, seeded so every method starts from the same weights."""
    d = cfg.data
    data = data or load_data(
        d.name,
        d.data_dir,
        subset=d.subset,
        val=d.val,
        seed=cfg.train.seed,
        pad=d.pad,
        do_normalize=d.normalize,
        preprocess=d.preprocess,
        image_size=d.image_size,
        extra=d.extra,
        stream=d.stream,
        workers=d.workers,
        test_subset=d.test_subset,
    )
    seed_everything(cfg.train.seed)
    model = create_model(cfg.model.name, in_shape=data.in_shape, num_classes=data.num_classes, **cfg.model.kwargs)
    check_model_fits(model, cfg, data)
    return data, model


def check_model_fits(model: nn.Module, cfg: Config, data: DataBundle) -> None:
    """A dry forward of one input: a model that cannot take the data's shape fails here, clearly."""
    shape = "x".join(map(str, data.in_shape))
    rng = torch.get_rng_state()
    try:
        with torch.no_grad():
            was = model.training
            model.eval()
            out = model(torch.zeros(1, *data.in_shape))
            model.train(was)
    except RuntimeError as e:
        raise ConfigError(
            f"model {cfg.model.name!r} cannot take {shape} inputs from {data.name} "
            f"({str(e).splitlines()[0][:90]}); pad the data (data.pad), set data.image_size, "
            f"or pick a model for this input size"
        ) from None
    finally:
        torch.set_rng_state(rng)
    if out.shape[-1] != data.num_classes:
        raise ConfigError(
            f"model {cfg.model.name!r} gives {out.shape[-1]} outputs but {data.name} has "
            f"{data.num_classes} classes; drop the num_classes override"
        )
    # the support config against the model, here and not when the schedule starts: before the run folder is written
    n, tau = len(threshold_layers(model)), cfg.support.tau
    if isinstance(tau, list) and len(tau) != n:
        raise ConfigError(
            f"support.tau has {len(tau)} values but the model has {n} threshold layers; give one value or one per layer"
        )


def to_device(data: DataBundle, device: torch.device) -> DataBundle:
    """The bundle's tensor splits moved to ``device`` (train.loader=device)."""
    move = lambda s: None if s is None else Split(s.x.to(device), s.y.to(device))
    return dataclasses.replace(data, train=move(data.train), test=move(data.test), val=move(data.val))


def build_on(cfg: Config, device: torch.device, data: DataBundle | None = None, model: nn.Module | None = None):
    """fit()'s data and model on ``device``: each built as ``cfg`` says where not given, the
    training RNG seeded, the model in ``train.channels_last`` memory format, and with
    ``train.loader=device`` the whole data set on the device (batches are gathers, no host copies)."""
    if model is None:
        data, model = build(cfg, data)
    elif data is None:
        data, _ = build(cfg)
    assert data is not None
    seed_everything(cfg.train.seed)
    model.to(device, memory_format=torch.channels_last if cfg.train.channels_last else torch.contiguous_format)
    if cfg.train.loader == "device":
        data = to_device(data, device)
    return data, model
