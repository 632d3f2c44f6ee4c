"""Training losses in Keras 3 ops, registered so saved models load in safe mode.

Rain is rare and skewed: with plain MSE a model does best by blurring heavy
rain away. :class:`IntensityWeightedMSE` weighs each pixel's squared error by
``1 + weight * max(y_true, 0)`` in normalised space, i.e. more where the
observed rain is above the training mean of ``log1p(rain)``, in the spirit of
the balanced MSE of Shi et al. (2017) but continuous.
"""

from __future__ import annotations

import keras
from keras import ops

from nowcast.errors import InputError
from nowcast.model.layers import PACKAGE


@keras.saving.register_keras_serializable(package=PACKAGE)
class IntensityWeightedMSE(keras.losses.Loss):
    """Squared error weighted by ``1 + weight * relu(y_true)`` (normalised units)."""

    def __init__(self, weight: float = 1.0, name: str = "intensity_weighted_mse", **kwargs: object) -> None:
        super().__init__(name=name, **kwargs)
        self.weight = float(weight)

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, y_pred.dtype)
        weights = 1.0 + self.weight * ops.relu(y_true)
        return ops.mean(weights * ops.square(y_pred - y_true), axis=-1)

    def get_config(self) -> dict[str, object]:
        return {**super().get_config(), "weight": self.weight}


LOSSES = ("mse", "mae", "log_cosh", "intensity_weighted_mse")


def get_loss(name: str, intensity_weight: float = 1.0) -> keras.losses.Loss:
    """A training loss by name: ``mse``, ``mae``, ``log_cosh`` (RainNet's) or ``intensity_weighted_mse``.

    All compare in the normalised (log) space; the first three weigh every
    observed pixel alike, so adding rain where there is none costs as much
    as missing it.
    """
    if name == "mse":
        return keras.losses.MeanSquaredError()
    if name == "mae":
        return keras.losses.MeanAbsoluteError()
    if name == "log_cosh":
        return keras.losses.LogCosh()
    if name == "intensity_weighted_mse":
        return IntensityWeightedMSE(intensity_weight)
    raise InputError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
