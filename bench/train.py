"""Training throughput: the Zarr input pipeline against the same batches in memory.

A synthetic archive (bench.windows' rain-like fields) is cut by the windows
job (in process) into windows.zarr; then one ``cnn_lstm`` trains
(a) from :func:`nowcast.model.data.make_dataset` (chunk-wise zarr reads on threads,
shuffle buffer, prefetch) and (b) from the same normalised batches held in
memory (a ``tf.data`` over the stacked batches, no reads, no shuffling), on the same compiled
model, alternating, best of three rounds each (two in --quick), so that load from
other processes on a shared machine hurts both sides alike. Goal: (a) >= 0.9 x (b).
Then both again with TensorFlow's deterministic kernels, as ``nowcast.model.train``
runs by default (Keras compiles the step without XLA then): what
reproducible, resumable training costs (``deterministic_to_default_ratio``).

GFLOP/s of a training step are counted analytically (:func:`forward_flops`:
multiply-adds of Conv2D, Conv2DTranspose, Dense, LSTM and ConvLSTM2D, 2 FLOPs
each; pooling, activations and additions ignored) times 3 for forward plus
backward (the usual estimate: the backward pass costs about twice the
forward), at the in-memory rate; next to it the GFLOP/s of a large float32
matmul through ``keras.ops`` on the same machine, and their ratio.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from bench.common import parser, peak_rss, write_results
from bench.windows import synthetic_archive
from nowcast.model.architectures import ArchitectureConfig, build_model
from nowcast.model.data import WindowsStore, make_dataset
from nowcast.pipelines.jobs.windows import WindowJob, run_in_process
from nowcast.pipelines.plans.window_spec import SplitSpec, WindowSpec

T_IN, T_OUT = 4, 6


def _prod(shape) -> int:
    return int(math.prod(int(n) for n in shape))


def layer_flops(layer: keras.layers.Layer, in_shape, out_shape, steps: int = 1) -> int:
    """Forward FLOPs of one layer for one sample (``steps`` frames for TimeDistributed)."""
    if isinstance(layer, keras.layers.TimeDistributed):
        return layer_flops(layer.layer, in_shape[1:], out_shape[1:], steps * int(in_shape[0]))
    if isinstance(layer, keras.layers.Conv2DTranspose):
        k = _prod(layer.kernel_size)
        return steps * 2 * k * int(in_shape[-1]) * layer.filters * _prod(in_shape[:-1])
    if isinstance(layer, keras.layers.ConvLSTM2D):
        k = _prod(layer.kernel_size)
        t, h, w, cin = (int(n) for n in in_shape)
        f = layer.filters
        return steps * t * 2 * k * (cin + f) * 4 * f * h * w
    if isinstance(layer, keras.layers.Conv2D):
        k = _prod(layer.kernel_size)
        return steps * 2 * k * int(in_shape[-1]) * layer.filters * _prod(out_shape[:-1])
    if isinstance(layer, keras.layers.LSTM):
        t, cin = int(in_shape[0]), int(in_shape[-1])
        return steps * t * 2 * 4 * layer.units * (cin + layer.units)
    if isinstance(layer, keras.layers.Dense):
        return steps * 2 * int(in_shape[-1]) * layer.units * _prod(in_shape[:-1])
    return 0


def forward_flops(model: keras.Model) -> int:
    """Analytic forward FLOPs per sample of a functional model."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        inputs = layer.input if not isinstance(layer.input, list) else layer.input[0]
        total += layer_flops(layer, tuple(inputs.shape[1:]), tuple(layer.output.shape[1:]))
    return total


def matmul_gflops(n: int, repeats: int) -> float:
    """float32 ``n x n`` matmul GFLOP/s through keras.ops (the machine's compute ceiling here)."""
    rng = np.random.default_rng(0)
    a = keras.ops.convert_to_tensor(rng.standard_normal((n, n), dtype="float32"))
    b = keras.ops.convert_to_tensor(rng.standard_normal((n, n), dtype="float32"))
    keras.ops.convert_to_numpy(keras.ops.matmul(a, b))
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        keras.ops.convert_to_numpy(keras.ops.matmul(a, b))
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def make_windows(work: Path, frames: int, size: int, stride: int) -> str:
    archive = synthetic_archive(work / "archive.zarr", frames, size)
    spec = WindowSpec(channels=("precip",), target="precip", t_in=T_IN, t_out=T_OUT, stride=stride,
                      split=SplitSpec(fractions=(1.0, 0.0, 0.0)), samples_per_chunk=4)
    out = str(work / "windows.zarr")
    run_in_process(WindowJob(archive=archive, output=out, spec=spec))
    return out


def timed_fits(net: keras.Model, datasets: tuple, epochs: int, rounds: int) -> list[float]:
    """Best-of-``rounds`` seconds of ``net.fit`` on each dataset, alternating, after one untimed fit each."""
    for dataset in datasets:  # traces the step and warms the input
        net.fit(dataset, epochs=1, verbose=0)
    best = [math.inf] * len(datasets)
    for _ in range(rounds):
        for i, dataset in enumerate(datasets):
            start = time.perf_counter()
            net.fit(dataset, epochs=epochs, verbose=0)
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    frames, size, stride, batch, epochs = (120, 32, 4, 8, 1) if args.quick else (660, 64, 2, 16, 1)
    filters, units = ((8, 16), 32) if args.quick else ((16, 32), 64)
    work = Path(tempfile.mkdtemp(prefix="bench_train_"))
    try:
        with peak_rss() as rss:
            url = make_windows(work, frames, size, stride)
            store = WindowsStore(url, "train")
            keras.utils.set_random_seed(0)
            cfg = ArchitectureConfig(t_in=T_IN, t_out=T_OUT, height=size, width=size, filters=filters,
                                     lstm_units=units)
            net = build_model("cnn_lstm", cfg)
            net.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
            dataset = make_dataset(url, "train", batch, seed=0, shuffle_buffer=64, drop_remainder=True)
            batches = [tuple(t.numpy() for t in b) for b in dataset]
            in_memory = tf.data.Dataset.from_tensor_slices(
                tuple(np.stack(parts) for parts in zip(*batches, strict=True))).prefetch(tf.data.AUTOTUNE)
            samples = batch * len(batches)
            rounds = 2 if args.quick else 3
            pipeline_s, memory_s = timed_fits(net, (dataset, in_memory), epochs, rounds)
            # then as nowcast.model.train runs by default: deterministic kernels (no way back in a process)
            tf.config.experimental.enable_op_determinism()
            net.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")  # kernels chosen anew
            det_pipeline_s, det_memory_s = timed_fits(net, (dataset, in_memory), epochs, rounds)
            pipeline_rate, memory_rate = samples * epochs / pipeline_s, samples * epochs / memory_s
            det_memory_rate = samples * epochs / det_memory_s
            flops = forward_flops(net)
            step_gflops = 3 * flops * memory_rate / 1e9
            matmul = matmul_gflops(512 if args.quick else 2048, 3 if args.quick else 10)
        figures = {
            "pipeline_samples_per_s": pipeline_rate,
            "memory_samples_per_s": memory_rate,
            "pipeline_to_memory_ratio": pipeline_rate / memory_rate,
            "deterministic_pipeline_samples_per_s": samples * epochs / det_pipeline_s,
            "deterministic_memory_samples_per_s": det_memory_rate,
            "deterministic_to_default_ratio": det_memory_rate / memory_rate,
            "step_gflops": step_gflops,
            "matmul_gflops": matmul,
            "step_to_matmul_ratio": step_gflops / matmul,
            "forward_mflops_per_sample": flops / 1e6,
            "samples": samples,
            "sample_shape": [T_IN, size, size, 1],
            "batch_size": batch,
            "model": {"name": "cnn_lstm", "filters": list(filters), "lstm_units": units,
                      "params": net.count_params()},
            "store_samples_per_chunk": store.chunk,
            "peak_rss_mb": rss["peak"] / 2**20,
            "keras_backend": keras.backend.backend(),
        }
        notes = ("cnn_lstm trained (a) from windows.zarr via nowcast.model.data.make_dataset and (b) from "
                 "the same normalised batches held in memory; step GFLOP/s = 3 x analytic forward FLOPs x "
                 "in-memory rate. deterministic_*: the same after "
                 "tf.config.experimental.enable_op_determinism() (training's default; Keras then runs the "
                 "step without XLA).")
        path = write_results("train", figures, args.out, args.quick, notes)
        print(f"wrote {path}: pipeline {pipeline_rate:.1f} vs memory {memory_rate:.1f} samples/s "
              f"(deterministic kernels: memory {det_memory_rate:.1f}); "
              f"step {step_gflops:.1f} vs matmul {matmul:.1f} GFLOP/s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
