"""The Beam RunInference handler of the scoring job: a registered model loaded once per worker.

The handler wraps :class:`nowcast.model.forecaster.Forecaster` (tiling,
normalisation, clipping) in Beam's ``ModelHandler`` interface, so model/
stays free of Beam and this is the one place the two meet.
"""

from __future__ import annotations

import atexit
import functools
import gc
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from apache_beam.ml.inference.base import ModelHandler

from nowcast.model.forecaster import Forecaster, load_forecaster

log = logging.getLogger(__name__)


@functools.cache
def skip_final_collection_at_exit() -> None:
    """Makes this process's exit skip the garbage collector's last full pass (once per process).

    A process that has loaded TensorFlow and a model spends seconds at exit
    in the interpreter's final garbage collection, and the local
    multi-process runner stops its workers one after the other, so every
    worker's exit adds to the job's wall time; ``gc.freeze()`` run from
    ``atexit`` skips that collection (figures in docs/scoring.md). Nothing is
    lost: at that point the job's writes are finished and the OS reclaims the
    memory; atexit handlers registered before this one still run.
    """
    atexit.register(gc.freeze)


class KerasForecastHandler(ModelHandler[np.ndarray, np.ndarray, Forecaster]):
    """RunInference handler: physical ``(t_in, y, x, c)`` windows in, physical ``(t_out, y, x)`` out.

    Beam loads the model once per worker process (``shared.Shared``) through
    :meth:`load_model`; ``min_batch_size``/``max_batch_size`` bound how many
    windows (init times) Beam hands to one :meth:`run_inference` call, and
    ``predict_batch_size`` how many tiles go to one model call. ``threads``
    caps TensorFlow's threads per worker process (set through the
    environment before the model loads), so N workers on N cores do not
    each start a thread per core.
    """

    def __init__(self, models: str, name: str, version: str, archive: Mapping[str, Any], *,
                 overlap: int | None = None, predict_batch_size: int = 16, min_batch_size: int = 1,
                 max_batch_size: int = 8,
                 valid_range: tuple[float | None, float | None] = (None, None),
                 threads: int | None = None) -> None:
        env = {"TF_NUM_INTRAOP_THREADS": str(threads), "TF_NUM_INTEROP_THREADS": "1"} if threads else {}
        super().__init__(min_batch_size=min_batch_size, max_batch_size=max_batch_size, env_vars=env)
        self.models, self.name, self.version = str(models), name, version
        self.archive = dict(archive)
        self.overlap, self.predict_batch_size, self.valid_range = overlap, predict_batch_size, valid_range

    def load_model(self) -> Forecaster:
        log.info("loading model %s/%s from %s", self.name, self.version, self.models)
        skip_final_collection_at_exit()
        return load_forecaster(self.models, self.name, self.version, self.archive, overlap=self.overlap,
                               predict_batch_size=self.predict_batch_size, valid_range=self.valid_range)

    def run_inference(self, batch: Sequence[np.ndarray], model: Forecaster,
                      inference_args: dict[str, Any] | None = None) -> Iterable[np.ndarray]:
        if not batch:
            return []
        return list(model.forecast(np.stack(batch)))

    def get_num_bytes(self, batch: Sequence[np.ndarray]) -> int:
        return int(sum(np.asarray(x).nbytes for x in batch))

    def get_metrics_namespace(self) -> str:
        return "nowcast.scoring"
