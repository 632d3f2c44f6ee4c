"""Forecaster architectures in Keras 3 APIs only, looked up by name.

Both models map ``(batch, t_in, y, x, channels)`` inputs to
``(batch, t_out, y, x, 1)`` forecasts of the target variable, all in
normalised space (see :mod:`nowcast.model.data`). They are fully
convolutional: no weight depends on the spatial size, so a model trained on
patches is rebuilt for a whole grid with the same weights
(:func:`for_grid`) and forecasts it in one call, motion included, with no
tiles and no seams. (Keras's ConvLSTM2D needs a static spatial shape, hence
a rebuild rather than one model with ``None`` height and width.) They use
only ``keras.layers`` and ``keras.ops``, so the same code runs on the
TensorFlow, JAX or PyTorch backends.

- ``cnn_lstm``: the LRCN design. A TimeDistributed convolutional encoder
  (Conv2D + MaxPooling2D per level) turns each input frame into a coarse
  feature map, an LSTM runs over time at every coarse pixel (a ConvLSTM2D
  with a 1x1 kernel is exactly that), and a decoder emits the ``t_out``
  frames.
- ``convlstm``: the ConvLSTM encoder-forecaster of Shi et al. (2015). A
  strided convolution per level downsamples each frame, ConvLSTM2D layers
  encode the sequence into a spatial state, that state is repeated for each
  lead time, and forecaster ConvLSTM2D layers unroll it.

Both decoders see the lead time (:class:`~nowcast.model.layers.RepeatLeads`
adds it as a channel), so they can smooth what is unpredictable at long
leads, and they upsample bilinearly before each convolution (transposed
convolutions left a checkerboard).

Both optionally add the forecast to the last observed frame of the target
channel (``residual=True``), so an untrained model starts as persistence and
learns the change, which trains much faster on small data sets. With
``advection=True`` they also estimate a motion field and add the forecast to
the last frame advected along it (:class:`~nowcast.model.layers.Advect`, the
semi-Lagrangian step of an extrapolation nowcast), and the last convolutions
see that advected frame, so the network learns the growth, decay and
smoothing along the motion, not the motion itself. The change head starts at
zero, so an untrained model is exactly its base (persistence or the
advection). With ``lagrangian_ar=True`` the base is S-PROG's scale-wise
AR(2) forecast along the same motion
(:class:`~nowcast.model.layers.LagrangianAR`), and the network corrects that.

Constraint: height and width must be divisible by ``2 ** len(filters)``,
because each encoder level halves them and each decoder level doubles them
back; :class:`ArchitectureConfig` refuses other patch sizes with
:class:`ArchitectureError`, and the forecaster pads a grid to the next
multiple.

Example:
    >>> from nowcast.model.architectures import ArchitectureConfig, get_architecture
    >>> cfg = ArchitectureConfig(t_in=4, t_out=6, height=32, width=32, channels=1)
    >>> model = get_architecture("cnn_lstm")(cfg)
    >>> tuple(model.output_shape)
    (None, 6, 32, 32, 1)
    >>> tuple(for_grid(model, "cnn_lstm", cfg, (48, 64)).output_shape)  # same weights, any multiple of 4
    (None, 6, 48, 64, 1)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import keras
import numpy as np
from keras import layers

from nowcast.errors import InputError
from nowcast.model.layers import (
    SHIFT_PENALTY,
    Advect,
    BoxMean,
    LagrangianAR,
    LastFrame,
    LeadScale,
    LeadSmooth,
    MatchMotion,
    RepeatLeads,
)

SMOOTHING = (5, 17)  # box sizes, in pixels, of the smoothed base frames the head sees
# what a residual model corrects, as ArchitectureConfig options: the last frame, the last frame moved along
# the block-matched motion, or S-PROG's scale-wise AR(2) forecast along it (bench.skill's recipe). The
# motion is the whole grid's match, not corrected by the network: a correction learnt on patches cost CSI
# where the change is not used, and the gradient through the motion doubled a training step (docs/model.md)
BASES: dict[str, dict[str, bool]] = {
    "persistence": {},
    "advection": {"advection": True, "matched_motion": True, "learned_motion": False},
    "lagrangian_ar": {"advection": True, "matched_motion": True, "learned_motion": False,
                      "lagrangian_ar": True},
}
SMOOTHING_LAYER = "lead_smoothing"


def motion_penalty(unit: float) -> float:
    """:class:`MatchMotion`'s shift penalty for frames in ``unit`` s of ``log1p`` (a normaliser's std).

    The block match compares squared differences, which dividing the frames
    by ``unit`` divides by its square; the penalty must follow, or the
    normalisation moves the motion (by up to .94 px on a test-event init
    with a unit of 1.1, docs/model.md).

    >>> motion_penalty(1.0) == SHIFT_PENALTY, round(motion_penalty(2.0) / SHIFT_PENALTY, 3)
    (True, 0.25)
    """
    return SHIFT_PENALTY / float(unit) ** 2


class ArchitectureError(InputError):
    """An architecture name or configuration that cannot build a model."""


class Seeds:
    """The seeds of a model's random initial weights, drawn one per layer in build order from one seed.

    Left to itself Keras draws each layer's seed from Python's global ``random`` as the layer is made,
    and any other thread may draw from it meanwhile (a Prefect service's jitter, a logging worker): the
    same training seed then started from other weights. These draws are the model's alone.
    """

    def __init__(self, seed: int) -> None:
        self._draws = np.random.default_rng(seed)

    def _next(self) -> int:
        return int(self._draws.integers(0, 2**31 - 1))

    def kernel(self) -> keras.initializers.Initializer:
        """A convolution's kernel (Keras's default, Glorot uniform)."""
        return keras.initializers.GlorotUniform(seed=self._next())

    def convlstm(self) -> dict[str, keras.initializers.Initializer]:
        """A ConvLSTM2D's kernel and recurrent kernel (Keras's defaults, Glorot uniform and orthogonal)."""
        return {"kernel_initializer": self.kernel(),
                "recurrent_initializer": keras.initializers.Orthogonal(seed=self._next())}


@dataclasses.dataclass(frozen=True)
class ArchitectureConfig:
    """Shape, depth and width of a forecaster.

    Attributes:
        t_in: input frames per sample.
        t_out: forecast frames (lead times) per sample.
        height: training patch height in pixels (divisible by ``2 ** len(filters)``);
            the model itself takes any multiple of ``2 ** len(filters)``.
        width: training patch width in pixels (the same).
        channels: input channels per pixel (the variables, plus the coverage mask
            when the normalisation adds one).
        filters: convolution filters per encoder level; its length is the depth
            (each level halves the height and width).
        lstm_units: LSTM width (``cnn_lstm``) or ConvLSTM2D filters (``convlstm``).
        lstm_layers: stacked recurrent layers (per encoder and forecaster for ``convlstm``).
        kernel_size: square kernel of every convolution.
        decoder_filters: channels of the refinement convolution that sees the
            decoder's output and the residual's base frame.
        residual: add the forecast to the last input frame of ``target_channel``.
        advection: (with ``residual``) add the forecast to the last frame
            advected by a motion field the model estimates, instead of to the
            last frame itself (see :class:`Advect`).
        matched_motion: (with ``advection``) start that motion field from a
            block-matching estimate of the input frames' motion
            (:class:`MatchMotion`, no weights), so the network only learns a
            correction to it; an untrained model is then an extrapolation
            nowcast rather than persistence.
        learned_motion: (with ``matched_motion``) let the network correct the
            matched motion; off, it learns only the change along the matched
            motion (a patch's motion estimate is poorer near its edges than the
            whole grid's the forecaster uses, and a correction learnt there need
            not carry over).
        lagrangian_ar: (with ``advection`` and ``t_in >= 3``) correct S-PROG's
            scale-wise AR(2) forecast along the motion
            (:class:`~nowcast.model.layers.LagrangianAR`, no weights) instead of
            the advected last frame, which the head then sees beside it.
        target_channel: index of the target variable among the input channels.
        motion_penalty: :class:`MatchMotion`'s penalty on the shift's length, for
            frames in the model's normalised units: :func:`motion_penalty` of the
            normaliser's unit, so the matched motion is the one found on the
            ``log1p`` frames (``bench.skill``'s ``lagrangian_ar`` baseline) whatever
            the normalisation. The default is the ``log1p`` one, which models
            trained before this option was added used in their own units.
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
    learned_motion: bool = True
    lagrangian_ar: bool = False
    target_channel: int = 0
    motion_penalty: float = SHIFT_PENALTY

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
        if self.lagrangian_ar and not (self.advection and self.t_in >= 3):
            raise ArchitectureError(
                "lagrangian_ar=True needs advection=True and t_in >= 3: it steps each scale forward "
                "from the last three frames moved along the motion")
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

    Zero-initialised, so an untrained model advects nothing of its own;
    smooth, because it is estimated at the features' resolution and
    upsampled bilinearly.
    """
    motion = layers.Conv2D(2, cfg.kernel_size, padding="same", kernel_initializer="zeros",
                           name="motion")(features)
    return layers.UpSampling2D(cfg.downsampling, interpolation="bilinear", name="motion_upsample",
                               dtype="float32")(motion)


def _decoder(cfg: ArchitectureConfig, frames, seeds: Seeds) -> keras.KerasTensor:
    """Coarse ``(batch, t_out, y', x', c)`` frames back to the grid: upsampling + convolution per level.

    The last level only upsamples: the head's convolutions work at full resolution.
    """
    x = frames
    for level, f in reversed(list(enumerate(cfg.filters))):
        x = layers.TimeDistributed(layers.UpSampling2D(2, interpolation="bilinear"),
                                   name=f"decoder_upsample{level}")(x)
        if level:
            x = layers.TimeDistributed(layers.Conv2D(f, cfg.kernel_size, padding="same", activation="relu",
                                                     kernel_initializer=seeds.kernel()),
                                       name=f"decoder_conv{level}")(x)
    return x


def _head(cfg: ArchitectureConfig, inputs, frames, name: str, features, seeds: Seeds) -> keras.Model:
    """The forecast from the decoder's frames and the last frame (advected when ``advection``).

    With ``residual`` the output is that base plus a change that starts at
    zero; without, the change alone.
    """
    k = cfg.kernel_size
    if cfg.residual and cfg.advection:
        if cfg.matched_motion:
            motion = MatchMotion(cfg.target_channel, penalty=cfg.motion_penalty, name="matched_motion",
                                 dtype="float32")(inputs)
            if cfg.learned_motion:  # the network's motion is a correction to the matched one
                motion = layers.Add(name="motion_total", dtype="float32")([motion, _motion(cfg, features)])
        else:
            motion = _motion(cfg, features)
        advected = Advect(cfg.t_out, cfg.target_channel, name="advection", dtype="float32")(inputs, motion)
        base = advected
        if cfg.lagrangian_ar:
            base = LagrangianAR(cfg.t_out, cfg.target_channel, name="lagrangian_ar", dtype="float32")(
                inputs, motion)
    else:
        base = LastFrame(cfg.t_out, cfg.target_channel, name="persistence", dtype="float32")(inputs)
        advected = base
    # the last convolutions see the base frame at full resolution (a skip past the coarse encoder), and
    # its box means over 5 and 17 pixels: growth, decay and scale-dependent smoothing along the motion
    views = [frames, base] if base is advected else [frames, base, advected]
    views += [BoxMean(size, name=f"smooth{size}")(base) for size in SMOOTHING]
    frames = layers.Concatenate(name="with_base")(views)
    frames = layers.TimeDistributed(layers.Conv2D(cfg.decoder_filters, k, padding="same", activation="relu",
                                                  kernel_initializer=seeds.kernel()),
                                    name="refine")(frames)
    outputs = layers.TimeDistributed(layers.Conv2D(1, 1, kernel_initializer="zeros" if cfg.residual
                                                   else seeds.kernel(), dtype="float32"),
                                     name="to_target")(frames)
    if cfg.residual:  # the change, scaled per lead by factors chosen after training (1 until then)
        outputs = LeadScale(cfg.t_out, name="change_scale", dtype="float32")(outputs)
        outputs = layers.Add(name="residual", dtype="float32")([base, outputs])
        # the scales unpredictable at each lead smoothed away (chosen after training, none until then)
        outputs = LeadSmooth(cfg.t_out, name=SMOOTHING_LAYER, dtype="float32")(outputs)
    return keras.Model(inputs, outputs, name=name)


def _inputs(cfg: ArchitectureConfig) -> keras.KerasTensor:
    return keras.Input((cfg.t_in, cfg.height, cfg.width, cfg.channels), name="inputs")


def cnn_lstm(cfg: ArchitectureConfig, seed: int = 0) -> keras.Model:
    """TimeDistributed CNN encoder, an LSTM over time at every coarse pixel, lead-aware decoder; ``seed``
    draws the initial weights."""
    seeds = Seeds(seed)
    inputs = _inputs(cfg)
    x = inputs
    for level, f in enumerate(cfg.filters):
        x = layers.TimeDistributed(layers.Conv2D(f, cfg.kernel_size, padding="same", activation="relu",
                                                 kernel_initializer=seeds.kernel()),
                                   name=f"encoder_conv{level}")(x)
        x = layers.TimeDistributed(layers.MaxPooling2D(2), name=f"encoder_pool{level}")(x)
    for i in range(cfg.lstm_layers):  # a 1x1 ConvLSTM2D is one LSTM over time, shared by every pixel
        x = layers.ConvLSTM2D(cfg.lstm_units, 1, return_sequences=i < cfg.lstm_layers - 1, name=f"lstm{i}",
                              **seeds.convlstm())(x)
    features = x
    x = RepeatLeads(cfg.t_out, name="leads")(features)
    return _head(cfg, inputs, _decoder(cfg, x, seeds), "cnn_lstm", features, seeds)


def convlstm(cfg: ArchitectureConfig, seed: int = 0) -> keras.Model:
    """ConvLSTM2D encoder-forecaster (Shi et al. 2015) between strided convolutions and upsampling;
    ``seed`` draws the initial weights."""
    seeds = Seeds(seed)
    k = cfg.kernel_size
    inputs = _inputs(cfg)
    x = inputs
    for level, f in enumerate(cfg.filters):
        x = layers.TimeDistributed(layers.Conv2D(f, k, strides=2, padding="same", activation="relu",
                                                 kernel_initializer=seeds.kernel()),
                                   name=f"encoder_conv{level}")(x)
    for i in range(cfg.lstm_layers):
        x = layers.ConvLSTM2D(cfg.lstm_units, k, padding="same", return_sequences=i < cfg.lstm_layers - 1,
                              name=f"encoder_convlstm{i}", **seeds.convlstm())(x)
    features = x  # the encoder's final spatial state
    x = RepeatLeads(cfg.t_out, name="leads")(features)
    for i in range(cfg.lstm_layers):
        x = layers.ConvLSTM2D(cfg.lstm_units, k, padding="same", return_sequences=True,
                              name=f"forecaster_convlstm{i}", **seeds.convlstm())(x)
    return _head(cfg, inputs, _decoder(cfg, x, seeds), "convlstm", features, seeds)


ARCHITECTURES: dict[str, Callable[..., keras.Model]] = {
    "cnn_lstm": cnn_lstm,
    "convlstm": convlstm,
}


def get_architecture(name: str) -> Callable[..., keras.Model]:
    """The model builder registered as ``name`` (``cnn_lstm`` or ``convlstm``): ``builder(cfg, seed=0)``."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ArchitectureError(
            f"unknown architecture {name!r}; choose one of {sorted(ARCHITECTURES)}"
        ) from None


def build_model(name: str, cfg: ArchitectureConfig, seed: int = 0) -> keras.Model:
    """Builds the named architecture for ``cfg``, its initial weights drawn from ``seed`` alone."""
    return get_architecture(name)(cfg, seed)


def for_grid(model: keras.Model, name: str, cfg: ArchitectureConfig, shape: tuple[int, int]) -> keras.Model:
    """``model`` (built by ``name`` for ``cfg``) rebuilt for a ``shape`` grid, with the same weights.

    Raises:
        ArchitectureError: if ``shape`` is not a multiple of ``2 ** len(filters)``.
    """
    if tuple(shape) == (cfg.height, cfg.width):
        return model
    grid = build_model(name, dataclasses.replace(cfg, height=int(shape[0]), width=int(shape[1])))
    grid.set_weights(model.get_weights())
    return grid
