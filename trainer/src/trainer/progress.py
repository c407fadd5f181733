"""The job's progress record: `progress.json` in the output folder (next to metrics.json), which the flow's watch reads
on its own polls (tasks/progress.py) to show epoch k/N, loss, ETA and the latest validation figures while Vertex runs.

Written whole each time (local: temp + rename; gs://: one object upload, which GCS makes visible all at once), at the
start of training, at every epoch end, and inside an epoch at most every `interval_seconds()` (30 s; tests set
FINSENT_PROGRESS_SECONDS). A resumed job rebuilds the record from its checkpoint (epoch and per-epoch history) and
never reports less than the record it finds: the steps it redoes after a kill are not new progress. Only the chief
writes it. A failed write is logged once and training goes on: the record is a view, never a reason to fail.

Fields: model, epoch (the epoch `step` counts in, 1-based), epochs, step, steps_per_epoch, loss, samples_per_second,
eta_seconds, val_accuracy and val_macro_f1 (latest finished epoch), percent (0-100), finished, updated_at,
resumed_from_epoch, history (per finished epoch: epoch, loss, val_accuracy, val_macro_f1, seconds).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from datetime import datetime, timezone
from typing import Callable, List, Optional

from trainer import storage
from trainer.distribute import is_chief  # the one rule of which replica writes the run's files
from trainer.errors import StorageError

log = logging.getLogger(__name__)
PROGRESS_FILE = "progress.json"
DEFAULT_INTERVAL_SECONDS = 30.0
INTERVAL_ENV = "FINSENT_PROGRESS_SECONDS"
HISTORY_KEYS = ("epoch", "loss", "val_accuracy", "val_macro_f1", "seconds")


def interval_seconds() -> float:
    """The least time between two in-epoch writes: $FINSENT_PROGRESS_SECONDS, else 30 s (a bad value: the default)."""
    raw = os.environ.get(INTERVAL_ENV, "")
    try:
        value = float(raw)
    except ValueError:
        if raw:
            log.warning("%s=%r is not a number of seconds; using %g", INTERVAL_ENV, raw, DEFAULT_INTERVAL_SECONDS)
        return DEFAULT_INTERVAL_SECONDS
    return max(0.0, value)


# --- pure -----------------------------------------------------------------------------------------------------------
def percent_of(epoch: int, step: int, steps_per_epoch: int, epochs: int, finished: bool = False) -> float:
    """Share of the planned training done, 0-100: `epoch - 1` whole epochs plus `step` of `steps_per_epoch`."""
    if finished:
        return 100.0
    if epochs <= 0:
        return 0.0
    fraction = (max(0, epoch - 1) + min(1.0, step / steps_per_epoch if steps_per_epoch > 0 else 0.0)) / epochs
    return round(min(100.0, max(0.0, 100.0 * fraction)), 2)


def history_entry(entry: dict) -> dict:
    """One finished epoch as the record (and metrics.json's train.history) spells it."""
    return {key: entry.get(key) for key in HISTORY_KEYS}


def make_record(*, model: str, epoch: int, epochs: int, step: int, steps_per_epoch: int, loss: Optional[float],
                samples_per_second: Optional[float], eta_seconds: Optional[float], history: List[dict],
                resumed_from_epoch: int, finished: bool, floor_percent: float = 0.0, now: Optional[float] = None
                ) -> dict:
    """The record's JSON document; `floor_percent`: what an earlier process of the same run already reported."""
    latest = history[-1] if history else {}
    percent = max(floor_percent, percent_of(epoch, step, steps_per_epoch, epochs, finished))
    return {
        "model": model,
        "epoch": epoch,
        "epochs": epochs,
        "step": step,
        "steps_per_epoch": steps_per_epoch,
        "loss": None if loss is None else round(float(loss), 6),
        "samples_per_second": None if samples_per_second is None else round(samples_per_second, 2),
        "eta_seconds": None if eta_seconds is None else round(max(0.0, eta_seconds), 1),
        "val_accuracy": latest.get("val_accuracy"),
        "val_macro_f1": latest.get("val_macro_f1"),
        "percent": percent,
        "finished": finished,
        "updated_at": datetime.fromtimestamp(time.time() if now is None else now, timezone.utc)
        .isoformat(timespec="seconds"),
        "resumed_from_epoch": resumed_from_epoch,
        "history": [history_entry(e) for e in history],
    }


def resume_floor(previous: Optional[dict], model: str, epochs: int, epochs_done: int) -> float:
    """The percent a resumed process starts from: the earlier record's, when it is this run's (same model and plan,
    no more finished epochs than the checkpoint holds); else 0 (a stale record of another run is not continued)."""
    if not previous or previous.get("model") != model or previous.get("epochs") != epochs:
        return 0.0
    if len(previous.get("history") or []) > epochs_done:
        return 0.0
    try:
        return float(previous.get("percent") or 0.0)
    except (TypeError, ValueError):
        return 0.0


# --- I/O ------------------------------------------------------------------------------------------------------------
class ProgressRecorder:
    """Keeps and writes one run's progress record. `clock` and `interval` are settable for tests."""

    def __init__(self, output_dir: str, model: str, epochs: int, steps_per_epoch: int, samples_per_epoch: int, *,
                 interval: Optional[float] = None, clock: Callable[[], float] = time.time,
                 chief: Optional[bool] = None):
        self.uri = storage.join(output_dir, PROGRESS_FILE)
        self.model, self.epochs = model, epochs
        self.steps_per_epoch, self.samples_per_epoch = max(1, steps_per_epoch), samples_per_epoch
        self.interval = interval_seconds() if interval is None else interval
        self.clock = clock
        self.enabled = is_chief() if chief is None else chief
        self.history: List[dict] = []
        self.resumed_from = 0
        self.floor = 0.0
        self.record: Optional[dict] = None
        self._warned = False
        self._last_write = 0.0
        self._epoch_started = 0.0
        self._train_seconds = 0.0  # fit time of this process's finished epochs: the ETA's rate
        self._steps_done = 0  # steps of this process's finished epochs

    def _read_previous(self) -> Optional[dict]:
        try:
            return json.loads(storage.read_bytes(self.uri))
        except (StorageError, ValueError):
            return None  # absent (a first start) or unreadable: nothing to continue

    def start(self, state: dict) -> None:
        """Training begins (or resumes) after `state["epoch"]` finished epochs, whose history `state` holds."""
        if not self.enabled:
            return
        done = int(state.get("epoch", 0))
        self.resumed_from = done
        self.history = [history_entry(e) for e in state.get("history", [])]
        if done:
            self.floor = resume_floor(self._read_previous(), self.model, self.epochs, done)
        finished = done >= self.epochs or bool(state.get("stopped_early"))
        self._write(epoch=done if finished else done + 1, step=self.steps_per_epoch if finished else 0,
                    loss=self.history[-1]["loss"] if self.history else None, samples_per_second=None,
                    eta_seconds=0.0 if finished else None, finished=finished)

    def epoch_begin(self, epoch_index: int) -> None:
        self._epoch_started = self.clock()

    def batch_end(self, epoch_index: int, step: int, loss: Optional[float]) -> None:
        """After `step` steps (1-based) of epoch `epoch_index` (0-based): written when `interval` has passed."""
        if not self.enabled or self.clock() - self._last_write < self.interval:
            return
        elapsed = max(1e-9, self.clock() - self._epoch_started)
        per_step = (self._train_seconds + elapsed) / (self._steps_done + step)
        remaining = (self.epochs - epoch_index - 1) * self.steps_per_epoch + (self.steps_per_epoch - step)
        self._write(epoch=epoch_index + 1, step=step, loss=loss,
                    samples_per_second=step * self.samples_per_epoch / self.steps_per_epoch / elapsed,
                    eta_seconds=remaining * per_step, finished=False)

    def epoch_end(self, state: dict) -> None:
        """After the epoch's checkpoint (when there is one): `state` holds the finished epoch's history entry."""
        if not self.enabled:
            return
        entry = history_entry(state["history"][-1])
        self.history.append(entry)
        done = int(state["epoch"])
        seconds = float(entry.get("seconds") or 0.0)
        self._train_seconds += seconds
        self._steps_done += self.steps_per_epoch
        finished = done >= self.epochs or bool(state.get("stopped_early"))
        per_step = self._train_seconds / self._steps_done if self._steps_done else 0.0
        self._write(epoch=done, step=self.steps_per_epoch, loss=entry.get("loss"),
                    samples_per_second=self.samples_per_epoch / seconds if seconds > 0 else None,
                    eta_seconds=0.0 if finished else (self.epochs - done) * self.steps_per_epoch * per_step,
                    finished=finished)

    def _write(self, **fields) -> None:
        now = self.clock()
        self.record = make_record(model=self.model, epochs=self.epochs, steps_per_epoch=self.steps_per_epoch,
                                  history=self.history, resumed_from_epoch=self.resumed_from,
                                  floor_percent=self.floor, now=now, **fields)
        self.floor = self.record["percent"]  # this process never goes backwards either
        self._last_write = now
        data = json.dumps(self.record, indent=1).encode()
        try:
            if storage.is_gcs(self.uri):
                with tempfile.NamedTemporaryFile(suffix=".json") as tmp:
                    tmp.write(data)
                    tmp.flush()
                    storage.upload_file(tmp.name, self.uri)  # one object upload: readers see all or nothing
            else:
                storage.atomic_write_bytes(self.uri, data)
        except (StorageError, OSError) as exc:
            if not self._warned:
                self._warned = True
                log.warning("cannot write the progress record %s (%s); training goes on without it", self.uri, exc)


def keras_callback(recorder: ProgressRecorder):
    """A Keras callback feeding `recorder` the in-epoch steps (the epoch end comes from train.py's `_EpochEnd`, after
    validation and the checkpoint). Keras imported here: the module itself stays importable without it."""
    import keras

    class _ProgressSteps(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self._epoch = 0

        def on_epoch_begin(self, epoch, logs=None):
            self._epoch = epoch
            recorder.epoch_begin(epoch)

        def on_train_batch_end(self, batch, logs=None):
            loss = (logs or {}).get("loss")
            recorder.batch_end(self._epoch, batch + 1, None if loss is None else float(loss))

    return _ProgressSteps()
