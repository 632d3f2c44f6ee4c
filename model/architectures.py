"""Forecaster architectures in Keras 3 APIs only, looked up by name.

Both models map ``(batch, t_in, y, x, channels)`` inputs to
``(batch, t_out, y, x, 1)`` forecasts of the target variable, all in
normalised space (see :mod:`model.data`). They use only ``keras.layers`` and
``keras.ops``, so the same code runs on the TensorFlow, JAX or PyTorch
backends.

- ``cnn_lstm``: the LRCN design. A TimeDistributed convolutional encoder
  (Conv2D + MaxPooling2D per level) and Flatten turn each input frame into a
  vector, an LSTM runs over time, and a decoder (Dense, Reshape, then one
  Conv2DTranspose per level) emits the ``t_out`` frames.
- ``convlstm``: the ConvLSTM encoder-forecaster of Shi et al. (2015). A
  strided convolution per level downsamples each frame, ConvLSTM2D layers
  encode the sequence into a spatial state, that state is repeated for each
  lead time, forecaster ConvLSTM2D layers unroll it, and transposed
  convolutions bring it back to the grid.

Both optionally add the forecast to the last observed frame of the target
channel (``residual=True``), so an untrained model starts as persistence and
learns the change, which trains much faster on small data sets. With
``advection=True`` they also estimate a motion field and add the forecast to
the last frame advected along it (:class:`Advect`, the semi-Lagrangian step
of an extrapolation nowcast), so the network learns motion and the change
along the motion, not motion from scratch through convolutions.

Constraint: the grid (or patch) height and width must be divisible by
``2 ** len(filters)``, because each encoder level halves them and each
decoder level doubles them back; :class:`ArchitectureConfig` refuses other
sizes with :class:`ArchitectureError`.

Example:
    >>> from model.architectures import ArchitectureConfig, get_architecture
    >>> cfg = ArchitectureConfig(t_in=4, t_out=6, height=32, width=32, channels=1)
    >>> model = get_architecture("cnn_lstm")(cfg)
    >>> tuple(model.output_shape)
    (None, 6, 32, 32, 1)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import keras
from keras import layers, ops

PACKAGE = "nowcast"


class ArchitectureError(ValueError):
    """An architecture name or configuration that cannot build a model."""


@dataclasses.dataclass(frozen=True)
class ArchitectureConfig:
    """Shape, depth and width of a forecaster.

    Attributes:
        t_in: input frames per sample.
        t_out: forecast frames (lead times) per sample.
        height: grid or patch height in pixels (divisible by ``2 ** len(filters)``).
        width: grid or patch width in pixels (divisible by ``2 ** len(filters)``).
        channels: input variables per pixel.
        filters: convolution filters per encoder level; its length is the depth
            (each level halves the height and width).
        lstm_units: LSTM width (``cnn_lstm``) or ConvLSTM2D filters (``convlstm``).
        lstm_layers: stacked recurrent layers (per encoder and forecaster for ``convlstm``).
        kernel_size: square kernel of every convolution.
        decoder_filters: channels of the bottleneck frame the ``cnn_lstm``
            Dense layer emits before the transposed convolutions.
        residual: add the forecast to the last input frame of ``target_channel``.
        advection: (with ``residual``) add the forecast to the last frame
            advected by a motion field the model estimates, instead of to the
            last frame itself (see :class:`Advect`).
        matched_motion: (with ``advection``) start that motion field from a
            block-matching estimate of the input frames' motion
            (:class:`MatchMotion`, no weights), so the network only learns a
            correction to it; an untrained model is then an extrapolation
            nowcast rather than persistence.
        target_channel: index of the target variable among the input channels.
    """

    t_in: int
    t_out: int
    height: int
    width: int
    channels: int = 1
    filters: tuple[int, ...] = (16, 32)
    lstm_units: int = 64
    lstm_layers: int = 1
    kernel_size: int = 3
    decoder_filters: int = 8
    residual: bool = True
    advection: bool = False
    matched_motion: bool = False
    target_channel: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "filters", tuple(int(f) for f in self.filters))
        for name in ("t_in", "t_out", "height", "width", "channels", "lstm_units", "lstm_layers",
                     "kernel_size", "decoder_filters"):
            if int(getattr(self, name)) < 1:
                raise ArchitectureError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not self.filters or min(self.filters) < 1:
            raise ArchitectureError(f"filters must be a non-empty tuple of positive ints, got {self.filters}")
        factor = self.downsampling
        if self.height % factor or self.width % factor:
            raise ArchitectureError(
                f"grid {self.height}x{self.width} is not divisible by 2**depth = {factor} "
                f"(depth = len(filters) = {len(self.filters)}); pick a patch size that is a "
                f"multiple of {factor} or use fewer encoder levels"
            )
        if self.advection and not self.residual:
            raise ArchitectureError(
                "advection=True needs residual=True: it advects the residual's base frame")
        if self.matched_motion and not (self.advection and self.t_in >= 2):
            raise ArchitectureError(
                "matched_motion=True needs advection=True and t_in >= 2: it estimates the motion "
                "the advection uses from consecutive input frames")
        if not 0 <= self.target_channel < self.channels:
            raise ArchitectureError(
                f"target_channel {self.target_channel} is not among the {self.channels} input channels"
            )

    @property
    def downsampling(self) -> int:
        """How much the encoder shrinks height and width."""
        return 2 ** len(self.filters)

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> ArchitectureConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ArchitectureError(f"unknown architecture options {sorted(unknown)}; known: {sorted(known)}")
        return cls(**{k: tuple(v) if k == "filters" else v for k, v in data.items()})  # type: ignore[arg-type]


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

    def call(self, inputs):  # noqa: D102
        last = inputs[:, -1:, :, :, self.channel : self.channel + 1]
        return ops.repeat(last, self.t_out, axis=1)

    def compute_output_shape(self, input_shape):  # noqa: D102
        return (input_shape[0], self.t_out, input_shape[2], input_shape[3], 1)

    def get_config(self) -> dict[str, object]:  # noqa: D102
        return {**super().get_config(), "t_out": self.t_out, "channel": self.channel}


@keras.saving.register_keras_serializable(package=PACKAGE)
class Advect(layers.Layer):
    """Semi-Lagrangian advection of the last frame, once per lead time.

    ``[inputs (batch, t_in, y, x, channels), motion (batch, y, x, 2)] ->
    (batch, t_out, y, x, 1)``: lead ``k`` takes, at each pixel ``p``, the last
    frame of ``channel`` at ``p - k * motion(p)`` (motion in pixels per time
    step, ``(dy, dx)``), interpolated bilinearly; points that fall outside the
    grid take the nearest edge pixel. This is the backward scheme of an
    extrapolation nowcast with motion held constant along the trajectory, so
    a model with zero motion is persistence. Only ``keras.ops``.
    """

    def __init__(self, t_out: int, channel: int = 0, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.t_out = int(t_out)
        self.channel = int(channel)

    def call(self, inputs, motion):  # noqa: D102
        frame = inputs[:, -1, :, :, self.channel]
        height, width = ops.shape(frame)[1], ops.shape(frame)[2]
        rows = ops.cast(ops.arange(height), frame.dtype)[None, :, None]
        cols = ops.cast(ops.arange(width), frame.dtype)[None, None, :]
        flat = ops.reshape(frame, (-1, height * width))
        leads = []
        for k in range(1, self.t_out + 1):
            ys = ops.clip(rows - k * motion[..., 0], 0.0, ops.cast(height - 1, frame.dtype))
            xs = ops.clip(cols - k * motion[..., 1], 0.0, ops.cast(width - 1, frame.dtype))
            leads.append(_bilinear(flat, ys, xs, height, width))
        return ops.stack(leads, axis=1)[..., None]

    def compute_output_shape(self, inputs_shape, motion_shape=None):  # noqa: D102
        return (inputs_shape[0], self.t_out, inputs_shape[2], inputs_shape[3], 1)

    def get_config(self) -> dict[str, object]:  # noqa: D102
        return {**super().get_config(), "t_out": self.t_out, "channel": self.channel}


@keras.saving.register_keras_serializable(package=PACKAGE)
class MatchMotion(layers.Layer):
    """Motion of one channel over the last input frames, by block matching.

    ``(batch, t_in, y, x, channels) -> (batch, y, x, 2)``, in pixels per time
    step ``(dy, dx)``, the convention of :class:`Advect`. The frames are
    averaged down by ``downsample``; for every shift of up to ``radius``
    coarse pixels, the squared difference between each of the last ``pairs``
    frames and its predecessor moved by that shift is averaged over a
    ``window``-pixel neighbourhood; each pixel takes its cheapest shift (a
    tiny penalty on the shift's length sends ties, such as dry areas, to no
    motion), and the field is smoothed over ``smooth`` pixels. It has no
    weights and passes no gradient: it is the motion estimate of an
    extrapolation nowcast, which the model then corrects. Only ``keras.ops``.

    The defaults (search radius 8 px per step, 64 px matching window, 32 px
    smoothing) suit 1 km, 5 min radar composites; ``bench.skill`` scores this
    motion alone as the ``matched_motion`` baseline (docs/model.md). Shifts
    are found to the coarse pixel and refined by a parabola through the
    neighbouring costs.
    """

    def __init__(self, channel: int = 0, radius: int = 4, downsample: int = 2, window: int = 64,
                 smooth: int = 32, pairs: int = 3, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.channel, self.radius, self.downsample = int(channel), int(radius), int(downsample)
        self.window, self.smooth, self.pairs = int(window), int(smooth), int(pairs)
        self.shifts = [(dy, dx) for dy in range(-self.radius, self.radius + 1)
                       for dx in range(-self.radius, self.radius + 1)]

    def call(self, inputs):  # noqa: D102
        frames = ops.stop_gradient(ops.transpose(inputs[..., self.channel], (0, 2, 3, 1)))  # (b, y, x, t)
        height, width, steps = ops.shape(frames)[1], ops.shape(frames)[2], ops.shape(frames)[3]
        d = self.downsample
        if d > 1:
            frames = ops.average_pool(frames, d, strides=d, padding="same")
        pairs = [(frames[..., steps - 1 - j], frames[..., steps - 2 - j])
                 for j in range(min(self.pairs, steps - 1))]
        cost = self._cost(pairs)
        penalty = ops.convert_to_tensor([dy * dy + dx * dx for dy, dx in self.shifts], dtype=cost.dtype)
        best = ops.argmin(cost + 1e-4 * penalty, axis=-1)
        vectors = ops.convert_to_tensor([[float(dy), float(dx)] for dy, dx in self.shifts],
                                        dtype=frames.dtype)
        motion = (ops.take(vectors, best, axis=0) + self._subpixel(cost, best)) * d  # full-grid pixels
        if d > 1:
            motion = ops.repeat(ops.repeat(motion, d, axis=1), d, axis=2)[:, :height, :width]
        if self.smooth > 1:
            motion = _box_mean(motion, self.smooth)
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
        pad = ((0, 0), (r, r), (r, r))
        height, width = ops.shape(pairs[0][0])[1], ops.shape(pairs[0][0])[2]
        inside = ops.pad(ops.ones_like(pairs[0][0]), pad)  # where the shifted frame has data
        padded = [(current, ops.pad(previous, pad)) for current, previous in pairs]
        sums = []
        for dy, dx in self.shifts:  # previous(p - shift) against current(p)
            rows, cols = slice(r - dy, r - dy + height), slice(r - dx, r - dx + width)
            valid = inside[:, rows, cols]
            error = sum(valid * (current - previous[:, rows, cols]) ** 2 for current, previous in padded)
            sums += [error, valid]
        pooled = _box_mean(ops.stack(sums, axis=-1), max(self.window // self.downsample, 1))
        return pooled[..., 0::2] / (pooled[..., 1::2] * len(pairs) + 1e-6)

    def compute_output_shape(self, input_shape):  # noqa: D102
        return (input_shape[0], input_shape[2], input_shape[3], 2)

    def get_config(self) -> dict[str, object]:  # noqa: D102
        return {**super().get_config(), "channel": self.channel, "radius": self.radius,
                "downsample": self.downsample, "window": self.window, "smooth": self.smooth,
                "pairs": self.pairs}


def _cost_at(cost, index):
    """``cost[..., index]`` per pixel: ``(b, y, x, shifts)`` and ``(b, y, x)`` -> ``(b, y, x)``."""
    return ops.squeeze(ops.take_along_axis(cost, ops.expand_dims(index, -1), axis=-1), -1)


def _box_mean(x, size: int):
    """Mean of ``(batch, y, x, c)`` over a ``size`` square around each pixel (the part inside the grid).

    Two one-dimensional passes: a 64-pixel box costs 128 additions per pixel, not 4096.
    """
    x = ops.average_pool(x, (size, 1), strides=1, padding="same")
    return ops.average_pool(x, (1, size), strides=1, padding="same")


def _bilinear(flat, ys, xs, height, width):
    """``flat`` (batch, y*x) sampled at in-grid float positions ``ys, xs`` (batch, y, x)."""
    y0, x0 = ops.floor(ys), ops.floor(xs)
    wy, wx = ys - y0, xs - x0
    y0, x0 = ops.cast(y0, "int32"), ops.cast(x0, "int32")
    y1, x1 = ops.minimum(y0 + 1, height - 1), ops.minimum(x0 + 1, width - 1)

    def at(yy, xx):
        index = ops.reshape(yy * width + xx, (ops.shape(flat)[0], -1))
        return ops.reshape(ops.take_along_axis(flat, index, axis=1), ops.shape(ys))

    top = at(y0, x0) * (1 - wx) + at(y0, x1) * wx
    bottom = at(y1, x0) * (1 - wx) + at(y1, x1) * wx
    return top * (1 - wy) + bottom * wy


def _motion(cfg: ArchitectureConfig, features) -> keras.KerasTensor:
    """Motion (pixels per step) from ``(batch, y / 2**depth, x / 2**depth, c)`` features.

    Zero-initialised, so an untrained model advects nothing (persistence);
    smooth, because it is estimated at the features' resolution and
    upsampled bilinearly.
    """
    motion = layers.Conv2D(2, cfg.kernel_size, padding="same", kernel_initializer="zeros",
                           name="motion")(features)
    return layers.UpSampling2D(cfg.downsampling, interpolation="bilinear", name="motion_upsample",
                               dtype="float32")(motion)


def _head(cfg: ArchitectureConfig, inputs, frames, name: str, features=None) -> keras.Model:
    """1x1 convolution to one channel, plus persistence (or its advection) when residual."""
    outputs = layers.TimeDistributed(layers.Conv2D(1, 1, dtype="float32"), name="to_target")(frames)
    if cfg.residual and cfg.advection:
        motion = _motion(cfg, features)
        if cfg.matched_motion:  # the network's motion is a correction to the matched one
            matched = MatchMotion(cfg.target_channel, name="matched_motion", dtype="float32")(inputs)
            motion = layers.Add(name="motion_total", dtype="float32")([matched, motion])
        base = Advect(cfg.t_out, cfg.target_channel, name="advection", dtype="float32")(inputs, motion)
        outputs = layers.Add(name="residual", dtype="float32")([base, outputs])
    elif cfg.residual:
        persistence = LastFrame(cfg.t_out, cfg.target_channel, name="persistence", dtype="float32")(inputs)
        outputs = layers.Add(name="residual", dtype="float32")([persistence, outputs])
    return keras.Model(inputs, outputs, name=name)


def cnn_lstm(cfg: ArchitectureConfig) -> keras.Model:
    """TimeDistributed CNN encoder, LSTM over time, Dense + transposed-conv decoder."""
    k = cfg.kernel_size
    inputs = keras.Input((cfg.t_in, cfg.height, cfg.width, cfg.channels), name="inputs")
    x = inputs
    for level, f in enumerate(cfg.filters):
        x = layers.TimeDistributed(layers.Conv2D(f, k, padding="same", activation="relu"),
                                   name=f"encoder_conv{level}")(x)
        x = layers.TimeDistributed(layers.MaxPooling2D(2), name=f"encoder_pool{level}")(x)
    x = layers.TimeDistributed(layers.Flatten(), name="encoder_flatten")(x)
    for i in range(cfg.lstm_layers):
        x = layers.LSTM(cfg.lstm_units, return_sequences=i < cfg.lstm_layers - 1, name=f"lstm{i}")(x)
    h, w = cfg.height // cfg.downsampling, cfg.width // cfg.downsampling
    features = None
    if cfg.advection:  # a motion field needs a spatial layout: one small frame from the LSTM state
        features = layers.Dense(h * w * cfg.decoder_filters, activation="relu", name="motion_dense")(x)
        features = layers.Reshape((h, w, cfg.decoder_filters), name="motion_features")(features)
    x = layers.Dense(cfg.t_out * h * w * cfg.decoder_filters, activation="relu", name="decoder_dense")(x)
    x = layers.Reshape((cfg.t_out, h, w, cfg.decoder_filters), name="decoder_reshape")(x)
    for level, f in reversed(list(enumerate(cfg.filters))):
        x = layers.TimeDistributed(
            layers.Conv2DTranspose(f, k, strides=2, padding="same", activation="relu"),
            name=f"decoder_upconv{level}")(x)
    return _head(cfg, inputs, x, "cnn_lstm", features)


def convlstm(cfg: ArchitectureConfig) -> keras.Model:
    """ConvLSTM2D encoder-forecaster (Shi et al. 2015) between strided convolutions."""
    k = cfg.kernel_size
    inputs = keras.Input((cfg.t_in, cfg.height, cfg.width, cfg.channels), name="inputs")
    x = inputs
    for level, f in enumerate(cfg.filters):
        x = layers.TimeDistributed(layers.Conv2D(f, k, strides=2, padding="same", activation="relu"),
                                   name=f"encoder_conv{level}")(x)
    for i in range(cfg.lstm_layers):
        x = layers.ConvLSTM2D(cfg.lstm_units, k, padding="same", return_sequences=i < cfg.lstm_layers - 1,
                              name=f"encoder_convlstm{i}")(x)
    h, w = cfg.height // cfg.downsampling, cfg.width // cfg.downsampling
    features = x  # the encoder's final spatial state
    x = layers.Flatten(name="state_flatten")(x)
    x = layers.RepeatVector(cfg.t_out, name="state_repeat")(x)
    x = layers.Reshape((cfg.t_out, h, w, cfg.lstm_units), name="state_frames")(x)
    for i in range(cfg.lstm_layers):
        x = layers.ConvLSTM2D(cfg.lstm_units, k, padding="same", return_sequences=True,
                              name=f"forecaster_convlstm{i}")(x)
    for level, f in reversed(list(enumerate(cfg.filters))):
        x = layers.TimeDistributed(
            layers.Conv2DTranspose(f, k, strides=2, padding="same", activation="relu"),
            name=f"decoder_upconv{level}")(x)
    return _head(cfg, inputs, x, "convlstm", features)


ARCHITECTURES: dict[str, Callable[[ArchitectureConfig], keras.Model]] = {
    "cnn_lstm": cnn_lstm,
    "convlstm": convlstm,
}


def get_architecture(name: str) -> Callable[[ArchitectureConfig], keras.Model]:
    """The model builder registered as ``name`` (``cnn_lstm`` or ``convlstm``)."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ArchitectureError(
            f"unknown architecture {name!r}; choose one of {sorted(ARCHITECTURES)}"
        ) from None


def build_model(name: str, cfg: ArchitectureConfig) -> keras.Model:
    """Builds the named architecture for ``cfg``."""
    return get_architecture(name)(cfg)
