"""The window spec: what a training sequence is, validated once at the edge.

A window is ``t_in`` input frames followed by ``t_out`` target frames, cut
every ``stride`` frames, optionally as spatial patches, optionally kept only
when wet enough, and assigned to train/val/test by time blocks so the splits
never share a frame. :class:`WindowSpec` checks everything that can be checked
without the archive; :func:`nowcast.pipelines.plans.windows.plan_windows` checks the rest
(variables, grid size, stored thresholds) against the archive's metadata.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

from nowcast.errors import InputError
from nowcast.pipelines.stores.timeaxis import parse_time_step

SplitMethod = Literal["hash", "contiguous"]


class WindowSpecError(InputError):
    """A window spec (or its combination with an archive) that cannot work."""


@dataclasses.dataclass(frozen=True)
class SplitSpec:
    """How time blocks are assigned to train, val and test.

    Attributes:
        block: ISO 8601 duration of a block (``P1D``: calendar days in UTC).
            Blocks are aligned to 1970-01-01, so the same time always falls in
            the same block whatever the archive's start.
        fractions: shares of blocks for (train, val, test); they sum to 1.
        method: ``hash`` assigns each block by a seeded hash of its index (splits
            interleave over the seasons); ``contiguous`` gives the first
            blocks to train, the next to val and the last to test.
        seed: seed of the ``hash`` method.
    """

    block: str = "P1D"
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    method: SplitMethod = "hash"
    seed: int = 0

    def __post_init__(self) -> None:
        try:
            parse_time_step(self.block)
        except ValueError as error:
            raise WindowSpecError(f"split_block {self.block!r}: {error}") from None
        fractions = tuple(float(f) for f in self.fractions)
        if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
            raise WindowSpecError(
                f"split fractions {self.fractions} must be three non-negative shares for "
                "(train, val, test) that sum to 1, e.g. (0.8, 0.1, 0.1)"
            )
        object.__setattr__(self, "fractions", fractions)
        if self.method not in ("hash", "contiguous"):
            raise WindowSpecError(f"split method {self.method!r} is unknown; use 'hash' or 'contiguous'")

    @property
    def block_step(self) -> np.timedelta64:
        return parse_time_step(self.block)


@dataclasses.dataclass(frozen=True)
class WetFilter:
    """Keeps windows whose target frames are wet enough.

    A window is kept when, averaged over its ``t_out`` target frames, at least
    ``min_fraction`` of the observed pixels of ``variable`` (default: the
    target) are at or above ``threshold``. The test uses the archive's stored
    per-frame ``<variable>_fraction_above`` statistic, so ``threshold`` must be
    one of the thresholds stored there; with patches, a patch inherits the
    wetness of its whole frame.
    """

    threshold: float
    min_fraction: float
    variable: str | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.min_fraction) <= 1.0:
            raise WindowSpecError(
                f"wet filter min_fraction {self.min_fraction} must lie in [0, 1] (a pixel share)"
            )


@dataclasses.dataclass(frozen=True)
class WindowSpec:
    """One windowing of an archive into (inputs, targets) training sequences.

    Attributes:
        channels: input variables, in channel order.
        target: the variable the model forecasts.
        t_in: input frames per sample.
        t_out: target frames per sample (lead times 1..t_out).
        stride: frames between the starts of consecutive windows.
        patch_size: ``(py, px)`` tile size, or None for the whole grid.
        patch_stride: ``(sy, sx)`` between tiles (default: ``patch_size``).
        wet: optional wetness filter.
        split: the train/val/test assignment.
        samples_per_chunk: samples per output chunk; the unit a training reader
            shuffles (see docs/schemas.md).
    """

    channels: tuple[str, ...]
    target: str
    t_in: int
    t_out: int
    stride: int = 1
    patch_size: tuple[int, int] | None = None
    patch_stride: tuple[int, int] | None = None
    wet: WetFilter | None = None
    split: SplitSpec = dataclasses.field(default_factory=SplitSpec)
    samples_per_chunk: int = 4

    def __post_init__(self) -> None:
        channels = (self.channels,) if isinstance(self.channels, str) else tuple(self.channels)
        if not channels:
            raise WindowSpecError("channels is empty: name at least one input variable, e.g. ('precip',)")
        if len(set(channels)) != len(channels):
            raise WindowSpecError(f"channels {channels} name a variable twice")
        object.__setattr__(self, "channels", channels)
        for name in ("t_in", "t_out", "stride", "samples_per_chunk"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise WindowSpecError(f"{name} must be a positive integer, got {value!r}")
        if self.patch_stride is not None and self.patch_size is None:
            raise WindowSpecError("patch_stride needs patch_size; give both or neither")
        if self.patch_size is not None:
            size = _pair("patch_size", self.patch_size)
            stride = _pair("patch_stride", self.patch_stride or size)
            object.__setattr__(self, "patch_size", size)
            object.__setattr__(self, "patch_stride", stride)

    @property
    def length(self) -> int:
        """Frames per window: ``t_in + t_out``."""
        return self.t_in + self.t_out

    @property
    def variables(self) -> tuple[str, ...]:
        """Every variable the job reads: the channels, then the target if not among them."""
        return self.channels + (() if self.target in self.channels else (self.target,))

    @property
    def wet_variable(self) -> str | None:
        if self.wet is None:
            return None
        return self.wet.variable or self.target

    def to_json(self) -> str:
        """The spec as JSON (stored in windows.zarr's ``window_spec`` attribute)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WindowSpec:
        """Builds and validates a spec from plain data (JSON, a flow's parameters)."""
        data = dict(data)
        wet = data.pop("wet", None)
        split = data.pop("split", None)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise WindowSpecError(f"unknown window spec fields {sorted(unknown)}; known: {sorted(known)}")
        for key in ("patch_size", "patch_stride", "channels"):
            if isinstance(data.get(key), list):
                data[key] = tuple(data[key])
        return cls(
            wet=WetFilter(**wet) if isinstance(wet, Mapping) else wet,
            split=_split(split),
            **data,
        )

    @classmethod
    def from_json(cls, text: str) -> WindowSpec:
        return cls.from_dict(json.loads(text))


def _split(value: Any) -> SplitSpec:
    if isinstance(value, Mapping):
        return SplitSpec(**{str(k): tuple(v) if isinstance(v, list) else v for k, v in value.items()})  # type: ignore[arg-type]
    return value or SplitSpec()


def _pair(name: str, value: Any) -> tuple[int, int]:
    try:
        pair = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise WindowSpecError(f"{name} must be two positive integers (y, x), got {value!r}") from None
    if len(pair) != 2 or min(pair) < 1:
        raise WindowSpecError(f"{name} must be two positive integers (y, x), got {value!r}")
    return pair[0], pair[1]
