"""The custom Keras layers of the forecasters, registered so saved models load in safe mode.

- :class:`LastFrame`: the last input frame repeated over the lead times (persistence).
- :class:`Advect`: semi-Lagrangian advection of the last frame along a motion field.
- :class:`LagrangianAR`: S-PROG's scale-wise AR(2) forecast along a motion field, without weights.
- :class:`MatchMotion`: a weightless block-matching motion estimate.
- :class:`RepeatLeads`: a state repeated over the lead times, the lead as a channel.
- :class:`BoxMean`: each frame's mean over a square around each pixel.
- :class:`LeadScale`: the learned change scaled per lead, by factors chosen on the validation split.
- :class:`LeadSmooth`: each lead smoothed over a box size chosen on the validation split.

Only ``keras.ops``, so they run on the TensorFlow, JAX or PyTorch backend.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers, ops

PACKAGE = "nowcast"  # the registration prefix stored in model.keras files ("nowcast>Advect")


@keras.saving.register_keras_serializable(package=PACKAGE)
class LastFrame(layers.Layer):
    """The last input frame of one channel repeated over the lead times.

    ``(batch, t_in, y, x, channels) -> (batch, t_out, y, x, 1)``: the
    persistence forecast in normalised space, which the residual models add
    their output to.
    """

    def __init__(self, t_out: int, channel: int = 0, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.t_out = int(t_out)
        self.channel = int(channel)

    def call(self, inputs):
        last = inputs[:, -1:, :, :, self.channel : self.channel + 1]
        return ops.repeat(last, self.t_out, axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.t_out, input_shape[2], input_shape[3], 1)

    def get_config(self) -> dict[str, object]:
        return {**super().get_config(), "t_out": self.t_out, "channel": self.channel}


@keras.saving.register_keras_serializable(package=PACKAGE)
class Advect(layers.Layer):
    """Semi-Lagrangian advection of the last frame, once per lead time.

    ``[inputs (batch, t_in, y, x, channels), motion (batch, y, x, 2)] ->
    (batch, t_out, y, x, 1)``: lead ``k`` takes, at each pixel ``p``, the last
    frame of ``channel`` where the trajectory ending at ``p`` was ``k`` steps
    before (followed back step by step along the motion, in pixels per time
    step, ``(dy, dx)``), interpolated bilinearly; points that fall outside the
    grid take the nearest edge pixel. This is the backward semi-Lagrangian
    scheme of an extrapolation nowcast (pysteps'), so a model with zero motion
    is persistence. Only ``keras.ops``.
    """

    def __init__(self, t_out: int, channel: int = 0, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.t_out = int(t_out)
        self.channel = int(channel)

    def call(self, inputs, motion):
        frames = ops.repeat(inputs[:, -1:, :, :, self.channel], self.t_out, axis=1)
        return advect(frames, motion, range(1, self.t_out + 1))[..., None]

    def compute_output_shape(self, inputs_shape, motion_shape=None):
        return (inputs_shape[0], self.t_out, inputs_shape[2], inputs_shape[3], 1)

    def get_config(self) -> dict[str, object]:
        return {**super().get_config(), "t_out": self.t_out, "channel": self.channel}


def advect(frames, motion, steps: Sequence[int]):
    """Each frame of ``frames`` ``(batch, n, y, x)`` moved ``steps[i]`` time steps along ``motion``.

    ``motion`` is ``(batch, y, x, 2)`` in pixels per step, ``(dy, dx)``; the
    result is ``(batch, n, y, x)``. Each pixel ``p`` of frame ``i`` takes that
    frame where the trajectory ending at ``p`` was ``steps[i]`` steps before
    (:func:`_departures`), interpolated bilinearly; points
    outside the grid take the nearest edge pixel. All frames move in one
    gather, so a model traces one set of ops however many leads it has.
    """
    ys, xs = _departures(motion, steps, frames.dtype)
    return _sample(frames, ys, xs)


def _departures(motion, steps: Sequence[int], dtype):
    """Where each pixel's value comes from ``steps[i]`` steps back: rows and columns ``(batch, n, y, x)``.

    The trajectory is followed back one step at a time, each step along the
    motion where the trajectory then is (bilinear; the nearest edge pixel's
    outside the grid), as pysteps' semi-Lagrangian extrapolation does, so
    parcels in a turning or converging flow follow it instead of its tangent
    at the arrival point. One step back is ``p - motion(p)`` exactly; in a
    uniform motion every step is a straight line.
    """
    height, width = ops.shape(motion)[1], ops.shape(motion)[2]
    motion = ops.cast(ops.transpose(motion, (0, 3, 1, 2)), dtype)  # (batch, 2, y, x): both components
    ys = ops.cast(ops.arange(height), dtype)[None, :, None] + ops.zeros_like(motion[:, 0])
    xs = ops.cast(ops.arange(width), dtype)[None, None, :] + ops.zeros_like(motion[:, 0])
    trajectory = []
    for _ in range(max(steps)):
        at = _sample(motion, ops.stack([ys, ys], axis=1), ops.stack([xs, xs], axis=1))
        ys, xs = ys - at[:, 0], xs - at[:, 1]
        trajectory.append((ys, xs))
    return (ops.stack([trajectory[k - 1][0] for k in steps], axis=1),
            ops.stack([trajectory[k - 1][1] for k in steps], axis=1))


def _inside(ys, xs):
    """1 where a departure point ``ys, xs`` (from :func:`_departures`) lies in the grid, else 0."""
    height, width = ops.shape(ys)[-2], ops.shape(ys)[-1]
    inside = ((ys >= 0) & (ys <= ops.cast(height - 1, ys.dtype)) & (xs >= 0)
              & (xs <= ops.cast(width - 1, xs.dtype)))
    return ops.cast(inside, ys.dtype)


def _sample(frames, ys, xs):
    """``frames`` ``(batch, n, y, x)``, each at its own departure points ``ys, xs`` ``(batch, n, y, x)``.

    Bilinear; points outside the grid take the nearest edge pixel.
    """
    height, width = ops.shape(frames)[2], ops.shape(frames)[3]
    ys = ops.clip(ys, 0.0, ops.cast(height - 1, frames.dtype))
    xs = ops.clip(xs, 0.0, ops.cast(width - 1, frames.dtype))
    return _bilinear(frames, ys, xs)


SCALE_LEVELS = (3, 7, 15, 31, 63)  # box sizes, in pixels, between the cascade levels of LagrangianAR


def scale_levels(frame, sizes: tuple[int, ...] = SCALE_LEVELS):
    """``frame`` ``(batch, y, x)`` -> ``(batch, y, x, len(sizes) + 1)`` levels, finest first, summing to it.

    Level ``i`` holds what the box mean over ``sizes[i - 1]`` pixels keeps
    and the one over ``sizes[i]`` removes; the last level is the coarsest box
    mean. A spatial band-pass cascade (pysteps uses Gaussian filters in
    Fourier space) that works on any grid size and backend; all box means
    come from one pass (:func:`box_means`).
    """
    smooth = [frame] + [mean[..., 0] for mean in box_means(frame[..., None], sizes)]
    return ops.stack([smooth[i] - smooth[i + 1] for i in range(len(sizes))] + [smooth[-1]], axis=-1)


def _correlation(a, b, weights):
    """Pearson correlation of ``a`` and ``b`` ``(batch, y, x, levels)``: ``(batch, levels)``.

    Only the pixels ``weights`` ``(batch, y, x)`` keep count. Computed as one
    minus half the mean squared difference of the standardised fields, with
    sums along rows, then columns: the slow levels correlate near 1 from one
    frame to the next, where a float32 sum of products over a whole grid
    loses the digits that set their AR(2) decay (on a 700 x 700 px RMI frame
    the coarsest level's .9979 came out .9964, or .9988 after an affine
    change of units, which the correlation must not see).
    A level without variation in either field correlates 0.
    """
    weights = weights[..., None]
    total = ops.maximum(_grid_sum(weights), 1.0)

    def standardised(v):
        v = v - _grid_sum(v * weights) / total
        spread = ops.sqrt(_grid_sum(v * v * weights) / total)
        return v / ops.maximum(spread, 1e-12), spread > 1e-12

    (a, a_varies), (b, b_varies) = standardised(a), standardised(b)
    correlation = 1.0 - 0.5 * _grid_sum((a - b) ** 2 * weights) / total
    return ops.where(ops.logical_and(a_varies, b_varies), correlation, 0.0)[:, 0, 0, :]


def _grid_sum(v):
    """``(batch, y, x, c)`` summed over the grid, along rows then columns: ``(batch, 1, 1, c)``.

    Two short float32 sums instead of one long one.
    """
    return ops.sum(ops.sum(v, axis=2, keepdims=True), axis=1, keepdims=True)


def ar2_parameters(gamma1, gamma2):
    """AR(2) coefficients from lag-1 and lag-2 correlations, as pysteps' S-PROG estimates them.

    A correlation below zero counts as none, lag 2 is at most lag 1 (a
    level with neither is forecast as its mean), lag 2 is adjusted so the
    process is stationary
    (``pysteps.timeseries.autoregression.adjust_lag2_corrcoef2``), and the
    Yule-Walker equations give ``(phi1, phi2)``.

    >>> import numpy as np
    >>> [round(float(v), 3) for v in ar2_parameters(np.float32(0.9), np.float32(0.7))]
    [1.254, -0.393]
    >>> [round(float(v), 3) for v in ar2_parameters(np.float32(0.0), np.float32(0.5))]  # nothing to carry on
    [0.001, 0.001]
    """
    gamma1 = ops.clip(gamma1, 1e-3, 0.999)
    gamma2 = ops.clip(ops.minimum(gamma2, gamma1), -1.0, 0.999)
    gamma2 = ops.maximum(gamma2, 2 * gamma1 * gamma2 - 1)
    gamma2 = ops.maximum(gamma2, (3 * gamma1**2 - 2 + 2 * (1 - gamma1**2) ** 1.5) / gamma1**2)
    denominator = 1 - gamma1**2
    return gamma1 * (1 - gamma2) / denominator, (gamma2 - gamma1**2) / denominator


@keras.saving.register_keras_serializable(package=PACKAGE)
class LagrangianAR(layers.Layer):
    """S-PROG's forecast, without weights: each scale's AR(2) evolution along the motion.

    ``[inputs (batch, t_in >= 3, y, x, channels), motion (batch, y, x, 2)] ->
    (batch, t_out, y, x, 1)``. The last three frames of ``channel`` are moved
    onto the last one along the motion (the Lagrangian frame) and split into
    scale levels (:func:`scale_levels`); each level's lag-1 and lag-2
    correlations, per sample and where the moved frames come from inside
    the grid, give its AR(2) coefficients
    (:func:`ar2_parameters`); the levels are stepped forward with them, summed,
    and lead ``k`` is moved ``k`` steps along the motion. Small scales, which
    decorrelate fast, fade with the lead time; a level that grows or decays
    carries its trend on. This is what made S-PROG the strongest classical
    nowcast in bench.skill; with this motion it beats it on MAE at every lead
    (docs/model.md). The output is smoother than rain: the forecaster's
    probability matching gives it back the advected frame's distribution.
    """

    def __init__(self, t_out: int, channel: int = 0, sizes: tuple[int, ...] = SCALE_LEVELS,
                 **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.t_out, self.channel = int(t_out), int(channel)
        self.sizes = tuple(int(s) for s in sizes)

    def call(self, inputs, motion):
        frames = inputs[..., self.channel]
        now, before, earlier, inside = self._lagrangian_levels(frames, motion)
        phi1, phi2 = ar2_parameters(ops.stop_gradient(_correlation(now, before, inside)),
                                    ops.stop_gradient(_correlation(now, earlier, inside)))
        phi1, phi2 = phi1[:, None, None, :], phi2[:, None, None, :]
        mean = ops.mean(now, axis=(1, 2), keepdims=True)
        now, before = now - mean, before - ops.mean(before, axis=(1, 2), keepdims=True)
        leads = []
        for _ in range(self.t_out):
            now, before = phi1 * now + phi2 * before, now
            leads.append(ops.sum(now + mean, axis=-1))
        return advect(ops.stack(leads, axis=1), motion, range(1, self.t_out + 1))[..., None]

    def _lagrangian_levels(self, frames, motion):
        """The last three frames moved onto the last one, as levels, and where both moved ones have data.

        ``(now, before, earlier)``, each ``(batch, y, x, levels)``, and
        ``inside`` ``(batch, y, x)``: 1 where both departure points lie in the
        grid. One set of departure points serves the move and the mask; the three frames
        go through :func:`scale_levels` as one batch.
        """
        ys, xs = _departures(motion, (1, 2), frames.dtype)
        moved = _sample(ops.stack([frames[:, -2], frames[:, -3]], axis=1), ys, xs)
        levels = scale_levels(ops.concatenate([frames[:, -1], moved[:, 0], moved[:, 1]], axis=0), self.sizes)
        now, before, earlier = ops.split(levels, 3, axis=0)
        return now, before, earlier, _inside(ys[:, 0], xs[:, 0]) * _inside(ys[:, 1], xs[:, 1])

    def compute_output_shape(self, inputs_shape, motion_shape=None):
        return (inputs_shape[0], self.t_out, inputs_shape[2], inputs_shape[3], 1)

    def get_config(self) -> dict[str, object]:
        return {**super().get_config(), "t_out": self.t_out, "channel": self.channel,
                "sizes": list(self.sizes)}


# MatchMotion's penalty per squared coarse pixel of shift, against mean squared differences of log1p frames;
# frames divided by a unit need it divided by that unit squared (architectures.motion_penalty), or the motion
# found depends on the units
SHIFT_PENALTY = 1e-4
MIN_OVERLAP = 0.24  # the share of a matching window a shift must keep on the grid to be compared (a quarter,
# less the float noise of the box sums)


@keras.saving.register_keras_serializable(package=PACKAGE)
class MatchMotion(layers.Layer):
    """Motion of one channel over the last input frames, by block matching.

    ``(batch, t_in, y, x, channels) -> (batch, y, x, 2)``, in pixels per time
    step ``(dy, dx)``, the convention of :class:`Advect`. The frames are
    averaged down by ``downsample``; for every shift of up to ``radius``
    coarse pixels, the squared difference between each of the last ``pairs``
    frames and its predecessor moved by that shift is averaged over a
    ``window``-pixel neighbourhood; each pixel takes its cheapest shift (a
    tiny ``penalty`` per squared pixel of shift sends ties, such as dry areas,
    to no motion), and the field is smoothed over ``smooth`` pixels. It has no
    weights and passes no gradient: it is the motion estimate of an
    extrapolation nowcast, which the model then corrects. Only ``keras.ops``.

    The defaults (search radius 12 px per step, 144 km/h on a 1 km, 5 min
    composite; 64 px matching window; 32 px smoothing) suit such composites:
    a radius of 8 px saturated on a fast storm (KNMI 2010-08-26, where
    pysteps' Lucas-Kanade finds 8-10 px per step); ``bench.skill`` scores this
    motion alone as the ``matched_motion`` baseline (docs/model.md). Shifts
    are found to the coarse pixel and refined by a parabola through the
    neighbouring costs. A shift that keeps less than ``MIN_OVERLAP`` of a
    pixel's window on the grid is not a candidate there (on grids little
    wider than the search it compared nothing and won).
    """

    def __init__(self, channel: int = 0, radius: int = 6, downsample: int = 2, window: int = 64,
                 smooth: int = 32, pairs: int = 3, penalty: float = SHIFT_PENALTY, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.channel, self.radius, self.downsample = int(channel), int(radius), int(downsample)
        self.window, self.smooth, self.pairs = int(window), int(smooth), int(pairs)
        self.penalty = float(penalty)
        self.shifts = [(dy, dx) for dy in range(-self.radius, self.radius + 1)
                       for dx in range(-self.radius, self.radius + 1)]

    def call(self, inputs):
        frames = ops.stop_gradient(ops.transpose(inputs[..., self.channel], (0, 2, 3, 1)))  # (b, y, x, t)
        height, width, steps = ops.shape(frames)[1], ops.shape(frames)[2], ops.shape(frames)[3]
        d = self.downsample
        if d > 1:
            frames = ops.average_pool(frames, d, strides=d, padding="same")
        pairs = [(frames[..., steps - 1 - j], frames[..., steps - 2 - j])
                 for j in range(min(self.pairs, steps - 1))]
        cost = self._cost(pairs)
        lengths = ops.convert_to_tensor([dy * dy + dx * dx for dy, dx in self.shifts], dtype=cost.dtype)
        best = ops.argmin(cost + self.penalty * lengths, axis=-1)
        vectors = ops.convert_to_tensor([[float(dy), float(dx)] for dy, dx in self.shifts],
                                        dtype=frames.dtype)
        motion = (ops.take(vectors, best, axis=0) + self._subpixel(cost, best)) * d  # full-grid pixels
        if d > 1:
            motion = ops.repeat(ops.repeat(motion, d, axis=1), d, axis=2)[:, :height, :width]
        if self.smooth > 1:
            motion = box_mean(motion, self.smooth)
        return motion

    def _subpixel(self, cost, best):
        """Offsets within ±0.5 coarse pixel: a parabola through the cost at the best shift and its neighbours.

        Along each axis; a best shift on the edge of the search range keeps its whole-pixel value.
        """
        side = 2 * self.radius + 1
        row, col = best // side, best % side
        offsets = []
        for position, step in ((row, side), (col, 1)):  # neighbours along y are a row of shifts apart
            step = ops.where(ops.logical_and(position > 0, position < side - 1), step, 0)
            below, centre, above = (_cost_at(cost, best + k * step) for k in (-1, 0, 1))
            curvature = below - 2 * centre + above
            offset = ops.where(curvature > 1e-12, 0.5 * (below - above) / ops.maximum(curvature, 1e-12), 0.0)
            offsets.append(ops.clip(offset, -0.5, 0.5))
        return ops.stack(offsets, axis=-1)

    def _cost(self, pairs):
        """Mean squared difference per coarse pixel and shift, over the window: (b, y, x, shifts)."""
        r = self.radius
        # where the shifted frame has data: the same for every sample, so shifted once, not per sample
        valid = _shifted(ops.ones_like(pairs[0][0][:1]), r)
        # every pair's previous frame at p - shift, for every shift at once; then summed pair by pair
        previous = ops.concatenate([before for _, before in pairs], axis=0)
        moved = ops.split(_shifted(previous, r), len(pairs), axis=0)
        error = 0
        for (current, _), before in zip(pairs, moved, strict=True):  # previous(p - shift) against current(p)
            error = error + valid * (current[:, None] - before) ** 2
        window = max(self.window // self.downsample, 1)
        pooled_error = box_mean(ops.transpose(error, (0, 2, 3, 1)), window)
        pooled_valid = box_mean(ops.transpose(valid, (0, 2, 3, 1)), window)
        cost = pooled_error / (pooled_valid * len(pairs) + 1e-6)
        # A shift that moves (nearly) the whole window off the grid compares next to nothing: with no overlap
        # 0 / 1e-6 made it the cheapest, and on grids not much wider than the search (12 px) every pixel
        # fetched its rain from outside: forecasts all dry, or the edge row copied down the grid. A shift
        # whose window keeps less than MIN_OVERLAP of its pixels costs more than any other. On a grid at
        # least a window wide no shift comes near it (39% at a corner, radius 6, window 32).
        overlap = pooled_valid > MIN_OVERLAP
        worst = ops.max(ops.where(overlap, cost, 0.0), axis=-1, keepdims=True)
        return ops.where(overlap, cost, worst + 1.0)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[2], input_shape[3], 2)

    def get_config(self) -> dict[str, object]:
        return {**super().get_config(), "channel": self.channel, "radius": self.radius,
                "downsample": self.downsample, "window": self.window, "smooth": self.smooth,
                "pairs": self.pairs, "penalty": self.penalty}


def _cost_at(cost, index):
    """``cost[..., index]`` per pixel: ``(b, y, x, shifts)`` and ``(b, y, x)`` -> ``(b, y, x)``."""
    return ops.squeeze(ops.take_along_axis(cost, ops.expand_dims(index, -1), axis=-1), -1)


def _shifted(frames, radius: int):
    """``frames`` ``(b, y, x)`` at ``p - shift`` for every :class:`MatchMotion` shift: ``(b, shifts, y, x)``.

    Zero where ``p - shift`` is outside the grid; shifts ordered as
    ``MatchMotion.shifts`` (``dy`` from ``-radius`` to ``radius``, then
    ``dx``). The rows are shifted first and then the columns of all of them,
    so ``2 * radius + 1`` shifts per axis cost that many slices, not their
    square; each shift is a contiguous block, which copies fast.
    """
    height, width = ops.shape(frames)[1], ops.shape(frames)[2]
    padded = ops.pad(frames, ((0, 0), (radius, radius), (radius, radius)))
    starts = range(2 * radius, -1, -1)  # the padded row (column) of p - shift at p = 0, shift -radius..radius
    rows = ops.stack([padded[:, start : start + height] for start in starts], axis=1)  # (b, dy, y, x + 2r)
    both = ops.stack([rows[..., start : start + width] for start in starts], axis=2)  # (b, dy, dx, y, x)
    return ops.reshape(both, (ops.shape(frames)[0], (2 * radius + 1) ** 2, height, width))


MANY_CHANNELS = 16  # from here on, average pooling beats running sums (162 channels: 0.73 vs 0.94 s)


def box_mean(x, size: int):
    """Mean of ``(batch, y, x, c)`` over a ``size`` square around each pixel (the part inside the grid).

    The same as average pooling with stride 1 and ``same`` padding; see
    :func:`box_means`, which this is for one size.
    """
    return box_means(x, (size,))[0]


def box_means(x, sizes: Sequence[int]):
    """:func:`box_mean` of ``(batch, y, x, c)`` over each of ``sizes``: a list, one array per size.

    With many channels it is average pooling, in two one-dimensional passes
    (64 pixels cost 128 additions per pixel, not 4096), which the backends
    vectorise across channels; with few channels, running sums, whose cost
    does not grow with ``size``: on a 640 x 712 grid of two channels a
    32-pixel box takes 0.03 s against 0.5 s for pooling (2 CPU cores, TF).
    All sizes share one running sum along each axis, so a cascade of box
    means traces (and compiles) as two passes, not two per size.
    """
    if x.shape[-1] is not None and x.shape[-1] >= MANY_CHANNELS:
        return [ops.average_pool(ops.average_pool(x, (size, 1), strides=1, padding="same"),
                                 (1, size), strides=1, padding="same") for size in sizes]
    by_rows = _box_sums(x, sizes, axis=1)  # one running sum down the columns serves every size
    # across the rows one running sum per size: independent, so the backend runs them in parallel (one
    # scan over all sizes stacked took twice as long on 2 cores)
    sums = [_box_sums(part, (size,), axis=2)[0] for part, size in zip(by_rows, sizes, strict=True)]
    return [total / count[..., None] for total, count in zip(sums, _box_counts(x, sizes), strict=True)]


def _box_sums(x, sizes: Sequence[int], axis: int):
    """Sums over ``size`` consecutive pixels along ``axis`` (1 or 2) for each of ``sizes``: a list.

    Aligned as ``same`` pooling aligns them: output ``i`` sums inputs
    ``i - before .. i - before + size - 1`` that lie inside the grid,
    ``before = (size - 1) // 2``, as the difference of two entries of the
    running sum, padded in front with zeros and behind with its total. One
    running sum serves every size.
    """
    n = ops.shape(x)[axis]
    front = max((size - 1) // 2 for size in sizes) + 1
    back = max(size - (size - 1) // 2 - 1 for size in sizes)
    running = ops.cumsum(x, axis=axis)

    def part(start, stop):
        index = [slice(None)] * 4
        index[axis] = slice(start, stop)
        return tuple(index)

    total = running[part(n - 1, n)]
    padded = ops.concatenate([ops.repeat(ops.zeros_like(total), front, axis=axis), running,
                              ops.repeat(total, back, axis=axis)], axis=axis)
    sums = []
    for size in sizes:
        start = front - (size - 1) // 2 - 1  # the running sum just before the box's first pixel
        stop = start + size  # the running sum at the box's last pixel
        sums.append(padded[part(stop, stop + n)] - padded[part(start, start + n)])
    return sums


def _box_counts(x, sizes: Sequence[int]):
    """How many pixels of ``x`` ``(batch, y, x, c)`` each box covers: one ``(y, x)`` array per size."""
    height, width = ops.shape(x)[1], ops.shape(x)[2]

    def along(n, size):
        start = ops.arange(n, dtype="int32") - (size - 1) // 2  # the box's first pixel, maybe outside
        return ops.minimum(start + size, n) - ops.maximum(start, 0)

    return [ops.cast(along(height, size)[:, None] * along(width, size)[None, :], x.dtype) for size in sizes]


@keras.saving.register_keras_serializable(package=PACKAGE)
class BoxMean(layers.Layer):
    """Each frame's mean over a ``size`` square around each pixel: ``(batch, t, y, x, c)`` -> the same.

    The head's smoothed views of the base frame (:func:`box_mean`, the part
    inside the grid). Weightless; it replaces two TimeDistributed
    AveragePooling2D, which cost 0.1-0.2 s a lead on a whole composite.
    """

    def __init__(self, size: int, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.size = int(size)

    def call(self, frames):
        shape = ops.shape(frames)
        flat = ops.reshape(frames, (-1, shape[2], shape[3], shape[4]))
        return ops.reshape(box_mean(flat, self.size), shape)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict[str, object]:
        return {**super().get_config(), "size": self.size}


def _bilinear(frames, ys, xs):
    """``frames`` ``(batch, n, y, x)`` sampled at in-grid float positions ``ys, xs`` ``(batch, n, y, x)``.

    Frame ``i`` at positions ``i``: each corner of the interpolation is one
    gather for all frames, from a row per frame (as small as one frame, so it
    stays in cache).
    """
    height, width = ops.shape(frames)[2], ops.shape(frames)[3]
    flat = ops.reshape(frames, (-1, ops.shape(frames)[1], height * width))
    y0, x0 = ops.floor(ys), ops.floor(xs)
    wy, wx = ys - y0, xs - x0
    y0, x0 = ops.cast(y0, "int32"), ops.cast(x0, "int32")
    y1, x1 = ops.minimum(y0 + 1, height - 1), ops.minimum(x0 + 1, width - 1)

    def at(yy, xx):
        index = ops.reshape(yy * width + xx, ops.shape(flat))
        return ops.reshape(ops.take_along_axis(flat, index, axis=2), ops.shape(ys))

    top = at(y0, x0) * (1 - wx) + at(y0, x1) * wx
    bottom = at(y1, x0) * (1 - wx) + at(y1, x1) * wx
    return top * (1 - wy) + bottom * wy


@keras.saving.register_keras_serializable(package=PACKAGE)
class RepeatLeads(layers.Layer):
    """A spatial state repeated for every lead time, with the lead as an extra channel.

    ``(batch, y, x, c) -> (batch, t_out, y, x, c + 1)``; the last channel of
    lead ``k`` (1-based) is ``k / t_out``, so the layers after it can treat
    the leads differently (smooth more at longer ones). Replaces a
    Flatten/RepeatVector/Reshape, which fixed the spatial size.
    """

    def __init__(self, t_out: int, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.t_out = int(t_out)

    def call(self, state):
        repeated = ops.repeat(ops.expand_dims(state, 1), self.t_out, axis=1)
        leads = ops.arange(1, self.t_out + 1, dtype=state.dtype) / self.t_out
        lead_channel = ops.ones_like(repeated[..., :1]) * ops.reshape(leads, (1, self.t_out, 1, 1, 1))
        return ops.concatenate([repeated, lead_channel], axis=-1)

    def compute_output_shape(self, input_shape):
        channels = None if input_shape[-1] is None else input_shape[-1] + 1
        return (input_shape[0], self.t_out, input_shape[1], input_shape[2], channels)

    def get_config(self) -> dict[str, object]:
        return {**super().get_config(), "t_out": self.t_out}


@keras.saving.register_keras_serializable(package=PACKAGE)
class LeadScale(layers.Layer):
    """The network's change scaled per lead time: ``(batch, t_out, y, x, c)`` -> the same.

    The factors are not trained: they start at 1 (no effect while the
    network learns) and are then chosen on the validation split
    (:mod:`nowcast.model.calibration`), so that at a lead where the learned
    change adds error, such as the first, the model falls back towards the
    extrapolation it corrects. They are saved with the model.
    """

    def __init__(self, t_out: int, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.t_out = int(t_out)

    def build(self, input_shape) -> None:
        self.scale = self.add_weight(shape=(self.t_out,), initializer="ones", trainable=False, name="scale")

    def call(self, change):
        return change * ops.reshape(ops.cast(self.scale, change.dtype), (1, self.t_out, 1, 1, 1))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict[str, object]:
        return {**super().get_config(), "t_out": self.t_out}


LEAD_SMOOTHING = (1, 3, 5, 9, 17, 33)  # box sizes, in pixels, a lead's forecast can be smoothed over


def _first_only(shape, dtype=None):
    """Initial mixing weights: every lead takes the first view (the forecast itself)."""
    return ops.one_hot(ops.zeros((shape[0],), "int32"), shape[1], dtype=dtype or "float32")


@keras.saving.register_keras_serializable(package=PACKAGE)
class LeadSmooth(layers.Layer):
    """Each lead's forecast as a weighted mix of its box means: ``(batch, t_out, y, x, c)`` -> the same.

    The scales a forecast cannot predict grow with the lead time; S-PROG
    filters them out with its cascade. Here each lead mixes box means over
    ``sizes`` pixels (1: the forecast itself) with non-trained weights, which
    start at "size 1 only" (no effect while the network learns) and are then
    chosen on the validation split (:mod:`nowcast.model.calibration`), after
    which probability matching gives the smoothed field back its rain
    distribution. Saved with the model. In training it passes its input
    through unchanged (the network learns the unsmoothed forecast; the
    weights are chosen afterwards).
    """

    def __init__(self, t_out: int, sizes: tuple[int, ...] = LEAD_SMOOTHING, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.t_out = int(t_out)
        self.sizes = tuple(int(s) for s in sizes)

    def build(self, input_shape) -> None:
        self.mix = self.add_weight(shape=(self.t_out, len(self.sizes)), initializer=_first_only,
                                   trainable=False, name="mix")

    def call(self, frames, training=None):
        if training:  # the weights are chosen after training; until then they change nothing
            return frames
        shape = ops.shape(frames)
        flat = ops.reshape(frames, (-1, shape[2], shape[3], shape[4]))
        mix = ops.cast(self.mix, frames.dtype)
        smoothed = [size for size in self.sizes if size != 1]  # their box means in one pass
        means = dict(zip(smoothed, box_means(flat, smoothed), strict=True)) if smoothed else {}
        out = ops.zeros_like(frames)
        for k, size in enumerate(self.sizes):
            view = frames if size == 1 else ops.reshape(means[size], shape)
            out = out + view * ops.reshape(mix[:, k], (1, self.t_out, 1, 1, 1))
        return out

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict[str, object]:
        return {**super().get_config(), "t_out": self.t_out, "sizes": list(self.sizes)}
