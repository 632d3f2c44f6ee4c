"""Normalisation: physical values to the model's space and back (NumPy only).

For variables with ``valid_min >= 0`` (rain), ``log1p`` then standardise
with the stored ``log1p_mean``/``log1p_std``; others are standardised with
``mean``/``std``. ``log1p`` rather than dBR (``10 log10 R``): it is defined
at zero without a threshold or a fill value for dry pixels (dBR needs both,
e.g. -15 dBR below 0.1 mm/h), it compresses heavy rain about as much, and
its inverse ``expm1`` is exact and non-negative after clipping. With
``coverage`` (new models), NaN inputs (outside radar coverage, or missing)
become the normalised value of "nothing" (0 mm/h for rain, the mean
otherwise) and one more input channel marks which pixels of the target
variable were observed, so the model never mistakes the unobserved for
rain; without it (older models) NaN becomes 0, the training mean.

The statistics come from windows.zarr's train split (several stores merge
by count, :func:`merge_statistics`). This module imports no store and no
backend, so a forecaster and a training run on a machine without zarr (an
accelerator node fed arrays) share it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from nowcast.errors import InputError


class NormalizationError(InputError):
    """Normalisation statistics that are missing or cannot normalise."""


@dataclasses.dataclass(frozen=True)
class Normalizer:
    """Per-variable normalisation from the train-split statistics.

    Attributes:
        channels: input variable names, in channel order.
        target: the forecast variable.
        stats: ``normalization`` attribute of windows.zarr, per variable.
        coverage: fill unobserved inputs with "nothing" and add a channel that
            marks the observed pixels of the target (see the module docstring).
    """

    channels: tuple[str, ...]
    target: str
    stats: Mapping[str, Mapping[str, Any]]
    coverage: bool = False

    def __post_init__(self) -> None:
        for var in (*self.channels, self.target):
            if var not in self.stats:
                raise NormalizationError(f"no normalisation statistics for {var!r}; windows.zarr must store "
                                   "them under attrs['normalization'] (rerun the windows job)")
            kind, (_, std) = self.kind(var), self._mean_std(var)
            if not np.isfinite(std) or std <= 0:
                raise NormalizationError(
                    f"{var!r} does not vary over the train split (its {kind} standard deviation is {std}): "
                    "the archive is dry, or constant, over its training frames; ingest a period with rain "
                    "(a field that varies) into the archive and train again")

    def kind(self, var: str) -> str:
        """``log1p`` for non-negative variables with log statistics, else ``standard``."""
        return "log1p" if "log1p_mean" in self.stats[var] else "standard"

    def _mean_std(self, var: str) -> tuple[float, float]:
        s = self.stats[var]
        if s.get("mean") is None:
            raise NormalizationError(f"normalisation statistics of {var!r} are empty (the train split has no "
                               "finite values); widen the training range or relax the wet filter")
        if self.kind(var) == "log1p":
            return float(s["log1p_mean"]), float(s["log1p_std"])
        return float(s["mean"]), float(s["std"])

    def unit(self, var: str) -> float:
        """One model-space unit of ``var`` in its transformed units (``log1p`` or physical): the std."""
        return self._mean_std(var)[1]

    def nothing(self, var: str) -> float:
        """The model-space value unobserved inputs of ``var`` take: 0 mm/h for rain, else the mean (0)."""
        if not self.coverage or self.kind(var) != "log1p":
            return 0.0
        mean, std = self._mean_std(var)
        return -mean / std

    def normalize(self, values: np.ndarray, var: str) -> np.ndarray:
        """Physical values of ``var`` to model space; NaN becomes :meth:`nothing`."""
        mean, std = self._mean_std(var)
        values = np.asarray(values, dtype="float32")
        if self.kind(var) == "log1p":
            values = np.log1p(np.maximum(values, 0.0))
        out = (values - np.float32(mean)) / np.float32(std)
        fill = self.nothing(var)
        return np.nan_to_num(out, nan=fill, posinf=fill, neginf=fill).astype("float32", copy=False)

    def denormalize(self, values: np.ndarray, var: str | None = None) -> np.ndarray:
        """Model space back to physical units (rain clipped at 0)."""
        var = var or self.target
        mean, std = self._mean_std(var)
        out = np.multiply(np.asarray(values, dtype="float32"), np.float32(std))  # the one new array
        out += np.float32(mean)
        if self.kind(var) == "log1p":
            np.expm1(out, out=out)
            np.maximum(out, np.float32(0.0), out=out)
        return out

    @property
    def input_channels(self) -> int:
        """Channels of the model's input: the variables, plus the coverage mask."""
        return len(self.channels) + int(self.coverage)

    def normalize_inputs(self, inputs: np.ndarray) -> np.ndarray:
        """Physical ``(..., channel)`` inputs, each channel by its own variable, plus the coverage mask."""
        inputs = np.asarray(inputs)
        out = np.empty((*inputs.shape[:-1], self.input_channels), dtype="float32")
        for c, var in enumerate(self.channels):
            out[..., c] = self.normalize(inputs[..., c], var)
        if self.coverage:
            observed = inputs[..., self.channels.index(self.target)] if self.target in self.channels \
                else inputs[..., 0]
            out[..., -1] = np.isfinite(observed)
        return out

    def to_dict(self) -> dict[str, object]:
        return {"channels": list(self.channels), "target": self.target,
                "kinds": {v: self.kind(v) for v in {*self.channels, self.target}},
                "stats": {k: dict(v) for k, v in self.stats.items()}, "coverage": self.coverage}

    @classmethod
    def from_store(cls, store: Any, coverage: bool = False) -> Normalizer:
        """The normalisation from windows.zarr's train statistics."""
        return cls(store.channels, store.target, store.normalization, coverage)

    @classmethod
    def from_stores(cls, stores: Sequence[Any], coverage: bool = False) -> Normalizer:
        """One normalisation for several windows stores: their train statistics merged by count.

        Raises:
            NormalizationError: if the stores hold other variables.
        """
        first = stores[0]
        for store in stores[1:]:
            if (store.channels, store.target) != (first.channels, first.target):
                raise NormalizationError(f"{store.url} holds {store.channels} -> {store.target}, {first.url} "
                                   f"{first.channels} -> {first.target}: train on windows of the same "
                                   "variables")
        names = dict.fromkeys((*first.channels, first.target))
        stats = {name: merge_statistics([store.normalization.get(name) or {} for store in stores])
                 for name in names}
        return cls(first.channels, first.target, stats, coverage)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Normalizer:
        return cls(tuple(data["channels"]), str(data["target"]), data["stats"], bool(data.get("coverage")))


def merge_statistics(parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stored statistics (count, mean, std, min, max, log1p mean/std) of several stores as one.

    Means weighted by count; variances by the parallel formula on the
    population variances (exact).
    """
    parts = [p for p in parts if p.get("count")]
    if not parts:
        return {"count": 0, "mean": None, "std": None, "min": None, "max": None}
    counts = np.array([float(p["count"]) for p in parts])
    total = counts.sum()
    merged: dict[str, Any] = {"count": int(total), "min": min(float(p["min"]) for p in parts),
                              "max": max(float(p["max"]) for p in parts)}
    for prefix in ("", "log1p_") if all("log1p_mean" in p for p in parts) else ("",):
        means = np.array([float(p[f"{prefix}mean"]) for p in parts])
        stds = np.array([float(p[f"{prefix}std"]) for p in parts])
        mean = float((counts * means).sum() / total)
        variance = float((counts * (stds**2 + (means - mean) ** 2)).sum() / total)
        merged[f"{prefix}mean"], merged[f"{prefix}std"] = mean, variance**0.5
    return merged


def wet_samples(targets: np.ndarray, wet: tuple[float, float]) -> np.ndarray:
    """Which samples have at least ``wet[1]`` of their observed target pixels at or above ``wet[0]``."""
    observed = np.isfinite(targets).sum(axis=tuple(range(1, targets.ndim)))
    above = (np.nan_to_num(targets, nan=-np.inf) >= wet[0]).sum(axis=tuple(range(1, targets.ndim)))
    return above >= wet[1] * np.maximum(observed, 1)


def model_samples(inputs: np.ndarray, targets: np.ndarray, normalizer: Normalizer | None,
                  wet: tuple[float, float] | None = None) -> tuple[np.ndarray, ...]:
    """Physical ``(sample, time, y, x, channel)`` windows as Keras takes them: inputs, targets, weights.

    Targets keep their first channel (the target variable); weights are 0
    where it is NaN. With ``normalizer=None`` the values stay physical (NaN
    kept). ``wet = (threshold, fraction)`` keeps only the samples of
    :func:`wet_samples` (e.g. to skip dry patches that the windows job's
    whole-frame wet filter keeps).
    """
    targets = targets[..., :1]
    if wet is not None:
        keep = wet_samples(targets, wet)
        inputs, targets = inputs[keep], targets[keep]
    weights = np.isfinite(targets[..., 0]).astype("float32")
    if normalizer is not None:
        inputs = normalizer.normalize_inputs(inputs)
        targets = normalizer.normalize(targets, normalizer.target)
    return inputs, targets, weights
