"""Crash-safe training: a run killed at any point resumes where its last finished epoch left it.

Keras's ``BackupAndRestore`` saves the weights, then the epoch, as two
files: a kill between them resumes one epoch off, and early stopping's,
the learning-rate schedule's and the best checkpoint's memories are not
saved at all, so a resumed run trains on differently. This module saves
everything a run's future depends on after each epoch:

- the model's and the optimizer's variables (the learning rate included);
- the state of the callbacks that decide (early stopping's best value, its
  patience count and best weights; the plateau schedule's; the best
  checkpoint's best value) and the history so far;
- which epoch comes next; the input pipeline draws each epoch from
  ``(seed, epoch)`` alone (:mod:`nowcast.model.data`).

An epoch's files carry its number and ``state.json`` names them; it is
replaced last, atomically, so a kill at any point leaves the previous
complete state. With deterministic kernels (``TrainConfig.deterministic``)
the resumed run's weights are bit for bit an uninterrupted run's.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping
from pathlib import Path

import keras
import numpy as np

from nowcast.errors import InputError
from nowcast.files import write_atomically

STATE = "state.json"
DATA = "training_data_hash"  # the run identity's key for the windows' content (model.train.run_identity)
log = logging.getLogger(__name__)
# what each callback remembers between epochs (Keras resets it in on_train_begin)
REMEMBERED = {
    keras.callbacks.EarlyStopping: ("wait", "stopped_epoch", "best", "best_epoch"),
    keras.callbacks.ReduceLROnPlateau: ("wait", "cooldown_counter", "best"),
    keras.callbacks.ModelCheckpoint: ("best",),
}


class CheckpointMismatchError(InputError):
    """A workdir holds the checkpoint of a different training run."""


class Epochs(keras.callbacks.Callback):
    """Tells the input pipeline which epoch it draws (``make_dataset(epoch=...)``)."""

    def __init__(self) -> None:
        super().__init__()
        self.current = 0

    def on_epoch_begin(self, epoch: int, logs: Mapping | None = None) -> None:
        self.current = epoch


def _number(value):
    """A JSON-safe copy of a callback's remembered value (numpy floats, infinities)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return float(value)


class TrainingCheckpoint(keras.callbacks.Callback):
    """Saves the run's state after each epoch and puts it back when the run starts again.

    Place it after the callbacks it remembers (their ``on_train_begin``
    resets them first). :meth:`restore` runs before ``fit``, which then
    starts at :attr:`initial_epoch`.

    Args:
        folder: where the state lives (``workdir/backup``).
        run: what identifies the run (architecture, data, seed, ...): a
            checkpoint of another run is refused, not resumed.
    """

    def __init__(self, folder: str | Path, run: Mapping[str, object]) -> None:
        super().__init__()
        self.folder = Path(folder)
        self.run = json.loads(json.dumps(dict(run)))
        self.initial_epoch = 0
        self.history: dict[str, list[float]] = {}
        self.stopped = False
        self._saved_callbacks: dict[str, dict] = {}
        self._best_weights: list[np.ndarray] | None = None
        self._watched: list[keras.callbacks.Callback] = []

    def watch(self, callbacks: list[keras.callbacks.Callback]) -> TrainingCheckpoint:
        """The callbacks whose memory is saved (those of a type in REMEMBERED)."""
        self._watched = [cb for cb in callbacks if type(cb) in REMEMBERED]
        return self

    def state(self) -> dict | None:
        """The last complete state saved in ``folder``, or None."""
        path = self.folder / STATE
        if not path.exists():
            return None
        state = json.loads(path.read_text())
        if state["run"] != self.run:
            changed = sorted(k for k in {*state["run"], *self.run} if state["run"].get(k) != self.run.get(k))
            if changed == [DATA]:
                # the same settings on windows cut anew (`nowcast train` cuts them at every run, and the
                # archive grew meanwhile): resuming would train on other data, and the refusal below, which
                # said to rerun with the same settings, held at every rerun
                log.warning("the windows changed since the training run interrupted in %s (after epoch %d): "
                            "its checkpoint is dropped and training starts afresh", self.folder.parent,
                            state["epoch"])
                shutil.rmtree(self.folder, ignore_errors=True)
                return None
            raise CheckpointMismatchError(
                f"{self.folder} holds the checkpoint of another training run (it differs in {changed}); "
                f"rerun with the same settings to resume it, delete {self.folder} to start afresh, or give "
                "this run another --workdir")
        return state

    def restore(self, model: keras.Model, state: Mapping | None) -> int:
        """Loads the weights and optimizer of ``state`` (from :meth:`state`) into ``model``.

        Returns the epoch ``fit`` starts at (0 without a state).
        """
        if state is None:
            return 0
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        model.load_weights(self.folder / state["weights"])
        self.initial_epoch = state["epoch"]
        self.history = {k: list(v) for k, v in state["history"].items()}
        self.stopped = state["stopped"]
        self._saved_callbacks = state["callbacks"]
        if state.get("best_weights"):
            with np.load(self.folder / state["best_weights"]) as saved:
                self._best_weights = [saved[f"w{i}"] for i in range(len(saved.files))]
        return self.initial_epoch

    def on_train_begin(self, logs: Mapping | None = None) -> None:
        for cb in self._watched:
            for name, value in self._saved_callbacks.get(type(cb).__name__, {}).items():
                setattr(cb, name, value)
            if isinstance(cb, keras.callbacks.EarlyStopping) and self._best_weights is not None:
                cb.best_weights = self._best_weights

    def on_epoch_end(self, epoch: int, logs: Mapping | None = None) -> None:
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))
        self.save(epoch + 1)

    def save(self, next_epoch: int) -> None:
        """Writes the epoch's files, then points ``state.json`` at them, then removes older epochs'."""
        self.folder.mkdir(parents=True, exist_ok=True)
        weights = f"epoch-{next_epoch:05d}.weights.h5"
        self.model.save_weights(self.folder / weights, overwrite=True)
        best = None
        callbacks = {}
        for cb in self._watched:
            callbacks[type(cb).__name__] = {name: _number(getattr(cb, name)) for name in REMEMBERED[type(cb)]}
            if isinstance(cb, keras.callbacks.EarlyStopping) and cb.best_weights is not None:
                best = f"epoch-{next_epoch:05d}.best.npz"
                with open(self.folder / best, "wb") as handle:
                    np.savez(handle, **{f"w{i}": w for i, w in enumerate(cb.best_weights)})
        state = {"run": self.run, "epoch": next_epoch, "weights": weights, "best_weights": best,
                 "callbacks": callbacks, "history": self.history, "stopped": bool(self.model.stop_training)}
        write_atomically(self.folder / STATE, json.dumps(state, indent=1))
        keep = {STATE, weights, best}
        for path in self.folder.iterdir():
            if path.name not in keep:
                path.unlink()
