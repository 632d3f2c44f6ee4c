"""The learned change's weight and the smoothing per lead time, chosen on the validation split.

A residual forecaster outputs its base (the extrapolation it corrects) plus a
learned change. Trained on a loss in normalised (log) space, the change can
add error in physical units at some leads: at +5 min the extrapolation is
hard to beat, and a change that smooths costs MAE there. And the scales a
forecast cannot predict grow with the lead time: S-PROG filters them out, and
so should the models. After training, :func:`calibrate` chooses for each
lead a factor for the change among ``SCALES`` and a box size among the
model's :class:`~nowcast.model.layers.LeadSmooth` sizes, the pair with the
lowest validation MAE in physical units, with the model's post-processing
applied per patch as scoring applies it to the grid (no smoothing for a
model whose base already fades each scale, ``lagrangian_ar``), and stores them in the
model's :class:`~nowcast.model.layers.LeadScale` and
:class:`~nowcast.model.layers.LeadSmooth` layers (saved with it). A factor
of 0 makes that lead the base itself; 1 keeps the change as trained; a box
of 1 pixel leaves the lead unsmoothed.

The choice is made on the validation split only: the test data never sees it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from nowcast.model.forecaster import compiled_predict, match_distribution, with_base
from nowcast.model.layers import box_mean

SCALES = (0.0, 0.25, 0.5, 0.75, 1.0)
SCALE_LAYER = "change_scale"
SMOOTHING_LAYER = "lead_smoothing"
# a base that already lets each scale fade as fast as it decorrelates (S-PROG's AR(2) per scale): box
# smoothing on top only blurs what it kept. Chosen on 64 px validation patches, boxes of 3-9 px cost the
# lagrangian_ar models .0014-.0077 mm/h of MAE at +20..+30 min on whole test frames (docs/model.md)
SCALE_DECAYING_BASE = "lagrangian_ar"


def _box_means(fields: np.ndarray, size: int) -> np.ndarray:
    """``fields`` ``(..., y, x)`` averaged over ``size`` boxes, exactly as the model's layer does it."""
    if size == 1:
        return fields
    from keras import ops

    flat = fields.reshape(-1, *fields.shape[-2:], 1)
    return ops.convert_to_numpy(box_mean(flat, size)).reshape(fields.shape).astype("float32")


def candidate_errors(outputs: np.ndarray, bases: np.ndarray, targets: np.ndarray, observed: np.ndarray,
                     covered: np.ndarray, normalizer: Any, references: np.ndarray | None,
                     scales: Sequence[float] = SCALES, sizes: Sequence[int] = (1,)) -> np.ndarray:
    """Absolute physical errors summed per factor, box size and lead: ``(len(scales), len(sizes), t_out)``.

    Args:
        outputs: the model's normalised forecasts with every factor at 1 and no smoothing,
            ``(b, t_out, y, x)``.
        bases: the base forecasts the change is added to, same shape.
        targets: the normalised observations, same shape.
        observed: where the targets are observed (the training weights), same shape.
        covered: where each sample's last input is observed, ``(b, y, x)``: the
            pixels probability matching works on.
        normalizer: the model's :class:`~nowcast.model.normalization.Normalizer`.
        references: the extrapolations whose value distribution each lead takes, as the
            model's scoring gives it (probability matching), same shape; None: no matching.
        scales: the candidate factors of the change.
        sizes: the candidate box sizes the result is smoothed over (1: none).

    >>> from types import SimpleNamespace
    >>> identity = SimpleNamespace(denormalize=lambda v: np.asarray(v))
    >>> base, target = np.zeros((1, 1, 1, 2)), np.full((1, 1, 1, 2), 1.0)
    >>> change_overshoots = base + 4.0
    >>> candidate_errors(change_overshoots, base, target, np.ones_like(base), np.ones((1, 1, 2), bool),
    ...                  identity, None, (0.0, 0.25, 1.0))[:, 0, 0].tolist()
    [2.0, 0.0, 6.0]
    """
    physical_targets = normalizer.denormalize(targets)
    errors = np.zeros((len(scales), len(sizes), outputs.shape[1]))
    for s, scale in enumerate(scales):
        scaled = (bases + np.float32(scale) * (outputs - bases)).astype("float32")
        for z, size in enumerate(sizes):
            fields = _box_means(scaled, size).copy()
            if references is not None:  # each lead of each sample takes its extrapolation's distribution
                for sample, sample_references, where in zip(fields, references, covered, strict=True):
                    for field, reference in zip(sample, sample_references, strict=True):
                        match_distribution(field, reference, where)
            error = np.abs(normalizer.denormalize(fields) - physical_targets) * observed
            errors[s, z] = error.sum(axis=(0, 2, 3))
    return errors


def choose(errors: np.ndarray, counts: np.ndarray, scales: Sequence[float] = SCALES,
           sizes: Sequence[int] = (1,)) -> tuple[list[float], list[int]]:
    """Per lead, the factor and box size with the lowest mean error.

    Ties go to the larger factor (the model as trained), then to the smaller
    box (less smoothing).

    >>> errors = np.array([[[1.0, 5.0]], [[2.0, 3.0]], [[1.0, 4.0]]])  # 3 factors, 1 size, 2 leads
    >>> choose(errors, np.array([1, 1]), (0.0, 0.5, 1.0))
    ([1.0, 0.5], [1, 1])
    >>> choose(np.array([[[3.0], [1.0], [1.0]]]), np.array([1]), (1.0,), (1, 3, 5))
    ([1.0], [3])
    """
    mae = errors / np.maximum(counts, 1)
    order = [(s, z) for s in reversed(range(len(scales))) for z in range(len(sizes))]  # preferred first
    chosen = [order[int(np.argmin([mae[s, z, lead] for s, z in order]))] for lead in range(mae.shape[-1])]
    return [float(scales[s]) for s, _ in chosen], [int(sizes[z]) for _, z in chosen]


def calibrate(net: Any, batches: Iterable[tuple[np.ndarray, ...]], normalizer: Any, matching: bool,
              scales: Sequence[float] = SCALES) -> dict[str, object] | None:
    """Chooses and sets ``net``'s change factors and smoothing on ``(inputs, targets, weights)`` batches.

    Returns the factors and box sizes per lead and the validation MAE
    (physical units) of every candidate per lead, for the model's metrics;
    None (and ``net`` untouched) when the model has no scale layer or no
    base, or ``batches`` is empty. Models saved before the smoothing layer
    existed get factors only.
    """
    both = with_base(net)
    names = {layer.name for layer in net.layers}
    if both is None or SCALE_LAYER not in names:
        return None
    layer = net.get_layer(SCALE_LAYER)
    smoothing = net.get_layer(SMOOTHING_LAYER) if SMOOTHING_LAYER in names else None
    sizes = smoothing.sizes if smoothing is not None and SCALE_DECAYING_BASE not in names else (1,)
    layer.scale.assign(np.ones(layer.t_out, "float32"))
    if smoothing is not None:
        smoothing.mix.assign(_one_hot([0] * layer.t_out, len(smoothing.sizes)))
    predict = compiled_predict(both)
    errors, counts = np.zeros((len(scales), len(sizes), layer.t_out)), np.zeros(layer.t_out)
    for inputs, targets, weights in batches:
        inputs, targets, weights = (np.asarray(a) for a in (inputs, targets, weights))
        outputs, bases, extrapolations = (np.asarray(o, "float32")[..., 0] for o in predict(inputs))
        covered = (inputs[:, -1, ..., -1] > 0.5 if normalizer.coverage
                   else np.ones((len(weights), *weights.shape[2:]), bool))
        errors += candidate_errors(outputs, bases, targets[..., 0], weights, covered, normalizer,
                                   extrapolations if matching else None, scales, sizes)
        counts += weights.sum(axis=(0, 2, 3))
    if not counts.any():
        return None
    chosen, boxes = choose(errors, counts, scales, sizes)
    layer.scale.assign(np.asarray(chosen, "float32"))
    if smoothing is not None:
        smoothing.mix.assign(_one_hot([smoothing.sizes.index(b) for b in boxes], len(smoothing.sizes)))
    mae = errors / np.maximum(counts, 1)
    return {"scales": chosen, "smoothing": boxes,
            "validation_mae": {str(scale): {str(size): [float(v) for v in mae[s, z]]
                                            for z, size in enumerate(sizes)}
                               for s, scale in enumerate(scales)}}


def _one_hot(index: Sequence[int], width: int) -> np.ndarray:
    out = np.zeros((len(index), width), "float32")
    out[np.arange(len(index)), list(index)] = 1.0
    return out
