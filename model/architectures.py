"""Forecaster architectures in Keras 3 APIs only, looked up by name.

Both models map ``(batch, t_in, y, x, channels)`` inputs to
``(batch, t_out, y, x, 1)`` forecasts of the target variable, all in
normalised space (see :mod:`nowcast.model.data`). They use only ``keras.layers`` and
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
    >>> from nowcast.model.architectures import ArchitectureConfig, get_architecture
    >>> cfg = ArchitectureConfig(t_in=4, t_out=6, height=32, width=32, channels=1)
    >>> model = get_architecture("cnn_lstm")(cfg)
    >>> tuple(model.output_shape)
    (None, 6, 32, 32, 1)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import keras
from keras import layers

from nowcast.model.layers import Advect, LastFrame, MatchMotion


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
