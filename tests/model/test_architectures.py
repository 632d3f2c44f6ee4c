"""Both architectures: shapes and dtypes at several sizes, clear errors, learning."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from model.architectures import ArchitectureConfig, ArchitectureError, build_model, get_architecture

NAMES = ["cnn_lstm", "convlstm"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    ("t_in", "t_out", "height", "width", "channels", "filters"),
    [(3, 2, 8, 8, 1, (4,)), (4, 3, 16, 24, 2, (4, 8)), (2, 5, 32, 16, 1, (4, 4, 8))],
)
def test_output_shape_and_dtype(name, t_in, t_out, height, width, channels, filters):
    cfg = ArchitectureConfig(t_in=t_in, t_out=t_out, height=height, width=width, channels=channels,
                             filters=filters, lstm_units=8, decoder_filters=4)
    model = build_model(name, cfg)
    batch = np.random.default_rng(0).normal(size=(2, t_in, height, width, channels)).astype("float32")
    out = keras.ops.convert_to_numpy(model(batch))
    assert out.shape == (2, t_out, height, width, 1)
    assert out.dtype == np.float32
    assert tuple(model.output_shape) == (None, t_out, height, width, 1)


@pytest.mark.parametrize("name", NAMES)
def test_every_layer_is_named_in_summary(name):
    model = build_model(name, ArchitectureConfig(t_in=2, t_out=2, height=8, width=8, filters=(4, 4),
                                                 lstm_units=4, lstm_layers=2))
    lines: list[str] = []
    model.summary(line_length=200, print_fn=lambda line, **_: lines.append(line))
    text = "\n".join(lines)
    for layer in model.layers:
        assert layer.name in text
    recurrent = [layer for layer in model.layers if "lstm" in layer.name]
    assert len(recurrent) == (2 if name == "cnn_lstm" else 4)


def test_residual_model_starts_from_persistence():
    cfg = ArchitectureConfig(t_in=3, t_out=2, height=8, width=8, filters=(4,), lstm_units=4)
    model = build_model("convlstm", cfg)
    for layer in model.layers:
        if layer.name == "to_target":
            kernel, bias = layer.get_weights()
            layer.set_weights([np.zeros_like(kernel), np.zeros_like(bias)])
    batch = np.random.default_rng(1).normal(size=(1, 3, 8, 8, 1)).astype("float32")
    out = keras.ops.convert_to_numpy(model(batch))
    np.testing.assert_allclose(out, np.repeat(batch[:, -1:], 2, axis=1), rtol=1e-6)


def test_indivisible_grid_is_refused_with_the_fix():
    with pytest.raises(ArchitectureError, match="not divisible by 2\\*\\*depth = 4"):
        ArchitectureConfig(t_in=2, t_out=2, height=30, width=32, filters=(4, 8))


def test_bad_names_and_options_are_refused():
    with pytest.raises(ArchitectureError, match="choose one of"):
        get_architecture("unet")
    with pytest.raises(ArchitectureError, match="unknown architecture options"):
        ArchitectureConfig.from_dict({"t_in": 2, "t_out": 2, "height": 8, "width": 8, "filterz": [4]})
    with pytest.raises(ArchitectureError, match="target_channel"):
        ArchitectureConfig(t_in=2, t_out=2, height=8, width=8, channels=1, target_channel=1)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_tiny_model_overfits_a_tiny_batch(name):
    keras.utils.set_random_seed(0)
    cfg = ArchitectureConfig(t_in=3, t_out=2, height=8, width=8, filters=(8,), lstm_units=16, residual=False)
    model = build_model(name, cfg)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 3, 8, 8, 1)).astype("float32")
    y = rng.normal(size=(4, 2, 8, 8, 1)).astype("float32")
    first = model.evaluate(x, y, verbose=0)
    history = model.fit(x, y, batch_size=4, epochs=100, verbose=0)
    assert min(history.history["loss"]) <= first / 10, (first, history.history["loss"][-5:])


@pytest.mark.parametrize("module", ["architectures", "losses"])
def test_model_code_uses_keras_apis_only(module):
    import ast
    from pathlib import Path

    import model

    tree = ast.parse((Path(model.__file__).parent / f"{module}.py").read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert not imported & {"tensorflow", "jax", "torch"}, imported
