"""The learned change's weight per lead time, chosen on the validation split.

A residual forecaster outputs its base (the extrapolation it corrects) plus a
learned change. Trained on a loss in normalised (log) space, the change can
add error in physical units at some leads: at +5 min the extrapolation is
hard to beat, and a change that smooths costs MAE there. After training,
:func:`calibrate` scales the change of each lead by the factor among
``SCALES`` that gives the lowest validation MAE in physical units, with the
model's post-processing applied per patch as scoring applies it to the
grid, and stores the factors in the model's
:class:`~nowcast.model.layers.LeadScale` layer (saved with it). A factor of
0 makes that lead the base itself; 1 keeps the change as trained.

The choice is made on the validation split only: the test data never sees it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from nowcast.model.forecaster import compiled_predict, match_distribution, with_base

SCALES = (0.0, 0.25, 0.5, 0.75, 1.0)
SCALE_LAYER = "change_scale"


def scaled_errors(outputs: np.ndarray, bases: np.ndarray, targets: np.ndarray, observed: np.ndarray,
                  covered: np.ndarray, normalizer: Any, matching: bool,
                  scales: Sequence[float] = SCALES) -> np.ndarray:
    """Absolute physical errors summed per scale and lead over a batch: ``(len(scales), t_out)``.

    Args:
        outputs: the model's normalised forecasts with every factor at 1, ``(b, t_out, y, x)``.
        bases: the base forecasts the change is added to, same shape.
        targets: the normalised observations, same shape.
        observed: where the targets are observed (the training weights), same shape.
        covered: where each sample's last input is observed, ``(b, y, x)``: the
            pixels probability matching works on.
        normalizer: the model's :class:`~nowcast.model.data.Normalizer`.
        matching: apply probability matching to the base, as the model's scoring does.
        scales: the candidate factors.

    >>> from types import SimpleNamespace
    >>> identity = SimpleNamespace(denormalize=lambda v: np.asarray(v))
    >>> base, target = np.zeros((1, 1, 1, 2)), np.full((1, 1, 1, 2), 1.0)
    >>> change_overshoots = base + 4.0
    >>> scaled_errors(change_overshoots, base, target, np.ones_like(base), np.ones((1, 1, 2), bool),
    ...               identity, False, (0.0, 0.25, 1.0))[:, 0].tolist()
    [2.0, 0.0, 6.0]
    """
    physical_targets = normalizer.denormalize(targets)
    errors = np.zeros((len(scales), outputs.shape[1]))
    for s, scale in enumerate(scales):
        fields = (bases + np.float32(scale) * (outputs - bases)).astype("float32")
        if matching:  # each lead of each sample takes its base's distribution, as in scoring
            for sample, sample_bases, where in zip(fields, bases, covered, strict=True):
                for field, reference in zip(sample, sample_bases, strict=True):
                    match_distribution(field, reference, where)
        error = np.abs(normalizer.denormalize(fields) - physical_targets) * observed
        errors[s] = error.sum(axis=(0, 2, 3))
    return errors


def choose(errors: np.ndarray, counts: np.ndarray, scales: Sequence[float] = SCALES) -> list[float]:
    """Per lead, the factor with the lowest mean error; ties go to the larger factor (the model as trained).

    >>> choose(np.array([[1.0, 5.0], [2.0, 3.0], [1.0, 4.0]]), np.array([1, 1]), (0.0, 0.5, 1.0))
    [1.0, 0.5]
    """
    mae = errors / np.maximum(counts, 1)
    best = [len(scales) - 1 - int(np.argmin(column[::-1])) for column in mae.T]
    return [float(scales[b]) for b in best]


def calibrate(net: Any, batches: Iterable[tuple[np.ndarray, ...]], normalizer: Any, matching: bool,
              scales: Sequence[float] = SCALES) -> dict[str, object] | None:
    """Chooses and sets the factors of ``net``'s change on ``batches`` of ``(inputs, targets, weights)``.

    Returns the factors per lead and the validation MAE (physical units) of
    every candidate per lead, for the model's metrics; None (and ``net``
    untouched) when the model has no scale layer or no base, or ``batches``
    is empty.
    """
    both = with_base(net)
    if both is None or SCALE_LAYER not in {layer.name for layer in net.layers}:
        return None
    layer = net.get_layer(SCALE_LAYER)
    layer.scale.assign(np.ones(layer.t_out, "float32"))
    predict = compiled_predict(both)
    errors, counts = np.zeros((len(scales), layer.t_out)), np.zeros(layer.t_out)
    for inputs, targets, weights in batches:
        inputs, targets, weights = (np.asarray(a) for a in (inputs, targets, weights))
        outputs, bases = (np.asarray(o, "float32")[..., 0] for o in predict(inputs))
        covered = (inputs[:, -1, ..., -1] > 0.5 if normalizer.coverage
                   else np.ones((len(weights), *weights.shape[2:]), bool))
        errors += scaled_errors(outputs, bases, targets[..., 0], weights, covered, normalizer, matching,
                                scales)
        counts += weights.sum(axis=(0, 2, 3))
    if not counts.any():
        return None
    chosen = choose(errors, counts, scales)
    layer.scale.assign(np.asarray(chosen, "float32"))
    mae = errors / np.maximum(counts, 1)
    return {"scales": chosen,
            "validation_mae": {str(scale): [float(v) for v in mae[s]] for s, scale in enumerate(scales)}}
