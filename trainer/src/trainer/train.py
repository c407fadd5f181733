"""Fit loop: optimizer + schedule, bucketed batches fed to `model.fit`, per-epoch validation macro-F1,
early stopping with best-weights restore, and per-epoch checkpoints that a restarted job resumes from.

Checkpoint directory layout (local, or gs:// mirrored from a local working copy):

    state.json            written last after each epoch: last finished epoch, best epoch/F1, patience counter
    epoch-NNNN/           model.weights.h5 for the last epoch (and the best one, if different); Keras writes the
                          optimizer's variables (moments, step counter) into the same file
    epochs.jsonl          one line per finished epoch (epoch, pid, run id): proves no epoch ran twice
    vocab.txt             the vocab the ids were made with (a WordPiece vocab trained by the lstm run is
                          reused on resume, so the embedding rows keep their meaning)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from typing import List, Optional

import keras
import numpy as np

from trainer import storage
from trainer.config import TrainConfig
from trainer.data import BucketedBatches
from trainer.distribute import local_scope, one_replica_rows, xla_allowed
from trainer.errors import ConfigError
from trainer.metrics import macro_f1
from trainer.progress import ProgressRecorder, keras_callback as progress_callback

log = logging.getLogger(__name__)
STATE_FILE = "state.json"
EPOCH_LOG = "epochs.jsonl"
RUN_ID = uuid.uuid4().hex[:12]


# --------------------------------------------------------------------------------------------- checkpoints


class CheckpointStore:
    """Per-epoch checkpoints in `uri` (local dir or gs://), written through the local dir `local`. A store that is not
    the `writer` (a worker replica of a multi-machine run) reads the checkpoint to resume but writes nothing: every
    replica holds the same weights, and only the chief's copy is the run's."""

    def __init__(self, uri: str, local: str, writer: bool = True):
        self.uri = uri
        self.writer = writer
        self.remote = storage.is_gcs(uri)
        self.local = local if self.remote else uri
        os.makedirs(self.local, exist_ok=True)

    def _pull(self, rel: str) -> bool:
        if not self.remote:
            return os.path.exists(os.path.join(self.local, rel))
        return bool(storage.download_dir(self.uri, self.local, names=[rel]))

    def load_state(self) -> Optional[dict]:
        if not self._pull(STATE_FILE):
            return None
        with open(os.path.join(self.local, STATE_FILE)) as f:
            state = json.load(f)
        for rel in (state["weights"], state["best_weights"]):
            if not self._pull(rel):
                raise ConfigError(f"checkpoint {self.uri} is incomplete: {rel} is missing")
        if self._pull(EPOCH_LOG):
            self._drop_uncommitted_epochs(state["epoch"])
        return state

    def _drop_uncommitted_epochs(self, committed: int) -> None:
        """The epoch log is uploaded just before state.json: a kill between the two leaves a line for an epoch the
        checkpoint does not hold, which the resumed run trains again. Keep only the committed epochs."""
        path = os.path.join(self.local, EPOCH_LOG)
        with open(path) as f:
            lines = [line for line in f if line.strip()]
        kept = [line for line in lines if json.loads(line)["epoch"] <= committed]
        if len(kept) != len(lines):
            log.info("epoch log: dropped %d line(s) past the checkpoint's epoch %d", len(lines) - len(kept), committed)
            with open(path, "w") as f:
                f.writelines(kept)

    def epoch_log(self) -> List[dict]:
        path = os.path.join(self.local, EPOCH_LOG)
        if not os.path.exists(path):
            return []
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def save(self, model: keras.Model, epoch: int, state: dict, log_entry: dict) -> dict:
        """Write epoch files, then the epoch log, then state.json (the commit point), then drop stale epochs.
        Returns the committed state (what a non-writer would have committed, without writing it)."""
        rel_dir = f"epoch-{epoch:04d}"
        state = dict(state, weights=f"{rel_dir}/model.weights.h5",
                     optimizer_iterations=int(keras.ops.convert_to_numpy(model.optimizer.iterations)))
        if not self.writer:
            return state
        local_dir = os.path.join(self.local, rel_dir)
        os.makedirs(local_dir, exist_ok=True)
        with local_scope():  # only the writer saves: nothing in it may wait for the other replicas
            model.save_weights(os.path.join(local_dir, "model.weights.h5"))
        with open(os.path.join(self.local, EPOCH_LOG), "a") as f:
            f.write(json.dumps(log_entry) + "\n")
        tmp_state = os.path.join(self.local, STATE_FILE + ".tmp")
        with open(tmp_state, "w") as f:
            json.dump(state, f, indent=1)
        if self.remote:
            storage.upload_file(os.path.join(local_dir, "model.weights.h5"),
                                storage.join(self.uri, rel_dir, "model.weights.h5"))
            storage.upload_file(os.path.join(self.local, EPOCH_LOG), storage.join(self.uri, EPOCH_LOG))
            storage.upload_file(tmp_state, storage.join(self.uri, STATE_FILE))
        os.replace(tmp_state, os.path.join(self.local, STATE_FILE))
        keep = {os.path.dirname(state["weights"]), os.path.dirname(state["best_weights"])}
        for name in sorted(os.listdir(self.local)):
            if name.startswith("epoch-") and name not in keep:
                shutil.rmtree(os.path.join(self.local, name), ignore_errors=True)
                if self.remote:
                    storage.delete(storage.join(self.uri, name, "model.weights.h5"))
        return state

    def fetch(self, rel: str) -> Optional[str]:
        """Local path of a file stored in the checkpoint dir, or None."""
        return os.path.join(self.local, rel) if self._pull(rel) else None

    def put(self, local_path: str, rel: str) -> None:
        """Store a run-constant file (e.g. the vocab) next to the checkpoints (the writer only)."""
        if not self.writer:
            return
        dest = os.path.join(self.local, rel)
        if os.path.abspath(local_path) != os.path.abspath(dest):
            shutil.copyfile(local_path, dest)
        if self.remote:
            storage.upload_file(dest, storage.join(self.uri, rel))

    def restore(self, model: keras.Model, state: dict) -> None:
        optimizer = model.optimizer
        optimizer.build(model.trainable_variables)  # before load_weights, so its slots exist
        model.load_weights(os.path.join(self.local, state["weights"]))
        step = int(keras.ops.convert_to_numpy(optimizer.iterations))
        if step != state["optimizer_iterations"]:
            raise ConfigError(f"checkpoint {self.uri}: optimizer state not restored (step {step}, "
                              f"expected {state['optimizer_iterations']})")
        log.info("restored model and optimizer state (optimizer step %d)", step)

    def best_weights_path(self, state: dict) -> str:
        """Local path of the best epoch's weights; a non-writer (which saved none) fetches the writer's copy."""
        path = os.path.join(self.local, state["best_weights"])
        if not os.path.exists(path) and not self._pull(state["best_weights"]):
            raise ConfigError(f"checkpoint {self.uri} is incomplete: {state['best_weights']} is missing")
        return path


# --------------------------------------------------------------------------------------------- feeding


class _Feed(keras.utils.PyDataset):
    """Bucketed batches for model.fit; epoch k is shuffled with seed (seed, k), so a resumed run sees the
    same order a never-interrupted run would have seen. `rows`: the part of every (global) batch this process feeds
    (trainer.distribute.Topology.rows); every replica builds the same plan, so together they feed whole batches."""

    def __init__(self, batches: BucketedBatches, seed: int, first_epoch: int, rows: slice = slice(None)):
        super().__init__(workers=1, use_multiprocessing=False)
        self.batches = batches
        self.rows = rows
        self.seed = seed
        self.epoch = first_epoch
        self._plan = None

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int):
        if self._plan is None:
            self._plan = _tf_signature_safe(self.batches.plan(shuffle_seed=self.seed * 100_003 + self.epoch))
        b = self.batches.make(*self._plan[i])
        r = self.rows
        return {k: v[r] for k, v in b.inputs.items()}, b.labels[r], b.weights[r]

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self._plan = None


def _tf_signature_safe(plan: list) -> list:
    """On the TensorFlow backend Keras fixes the input signature from the first two batches of a PyDataset
    (tf.data.Dataset.from_generator): a padded length both share is baked in and a batch of another bucket
    then fails ("generator yielded an element of shape (16, 64) where ... (None, 32) was expected"). Keras'
    advice: make the first two batches differ in every variable dimension, so swap one of another bucket into
    second place. Deterministic, so a resumed run still sees the same order. Other backends: unchanged."""
    if keras.backend.backend() != "tensorflow" or len(plan) < 3 or plan[0][0] != plan[1][0]:
        return plan
    other = next((k for k in range(2, len(plan)) if plan[k][0] != plan[0][0]), None)
    if other is not None:
        plan = list(plan)
        plan[1], plan[other] = plan[other], plan[1]
    return plan


def predict_logits(model: keras.Model, batches: BucketedBatches) -> np.ndarray:
    """Logits for every sample of a split, in split order (padding rows dropped)."""
    n = len(batches.labels)
    out = None
    for b in batches.iterate():
        logits = one_replica_rows(model.predict_on_batch(b.inputs), len(b.index))
        logits = np.asarray(keras.ops.convert_to_numpy(logits), dtype=np.float32)
        if out is None:
            out = np.zeros((n, logits.shape[-1]), dtype=np.float32)
        keep = b.index >= 0
        out[b.index[keep]] = logits[keep]
    return out


# --------------------------------------------------------------------------------------------- training


@dataclass
class TrainResult:
    epochs_run: int
    resumed_from_epoch: int
    best_epoch: int
    seconds: float
    samples_trained: int
    stopped_early: bool
    history: List[dict] = field(default_factory=list)
    epoch_log: List[dict] = field(default_factory=list)


def make_optimizer(cfg: TrainConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """AdamW; BERT: linear warm-up then cosine decay to 0, global-norm clipping at 1.0."""
    total = max(1, steps_per_epoch * cfg.epochs)
    warmup = int(cfg.warmup_ratio * total) if cfg.model == "bert" else 0
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else cfg.learning_rate,
        decay_steps=max(1, total - warmup),
        warmup_target=cfg.learning_rate if warmup else None,
        warmup_steps=warmup,
    )
    opt = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=cfg.weight_decay,
                                 global_clipnorm=1.0 if cfg.model == "bert" else None)
    opt.exclude_from_weight_decay(var_names=["bias", "gamma", "beta", "norm", "embeddings"]
                                  if cfg.model == "lstm" else ["bias", "gamma", "beta", "norm"])
    return opt


def _fingerprint(cfg: TrainConfig) -> dict:
    return {"model": cfg.model, "hyperparameters": cfg.hyperparameters(),
            "data": [cfg.train_data, cfg.validation_data, cfg.test_data]}


class _EpochEnd(keras.callbacks.Callback):
    """Validation macro-F1, early stopping bookkeeping, checkpoint, tracking: after every epoch."""

    def __init__(self, cfg, val: BucketedBatches, store: Optional[CheckpointStore], state: dict, tracker,
                 progress: Optional[ProgressRecorder] = None):
        super().__init__()
        self.cfg, self.val, self.store, self.state, self.tracker = cfg, val, store, state, tracker
        self.progress = progress
        self.best_in_memory = None
        self.epochs_this_process = 0
        self._t = 0.0
        self.train_seconds = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._t = time.time()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.time() - self._t
        self.train_seconds += seconds
        self.epochs_this_process += 1
        done = epoch + 1  # epochs finished, 1-based
        preds = predict_logits(self.model, self.val).argmax(-1)
        f1 = macro_f1(self.val.labels, preds, 3)
        acc = float((preds == self.val.labels).mean())
        entry = {"epoch": done, "loss": float((logs or {}).get("loss", float("nan"))), "val_macro_f1": f1,
                 "val_accuracy": acc, "seconds": round(seconds, 3)}
        st = self.state
        st["history"].append(entry)
        st["epoch"] = done
        if f1 > st["best_macro_f1"]:
            st["best_macro_f1"], st["best_epoch"], st["wait"] = f1, done, 0
            if self.store is not None:
                st["best_weights"] = f"epoch-{done:04d}/model.weights.h5"
            else:
                self.best_in_memory = [np.array(w) for w in self.model.get_weights()]
        else:
            st["wait"] += 1
        if st["wait"] >= self.cfg.patience and done < self.cfg.epochs:
            st["stopped_early"] = True
            self.model.stop_training = True
        log.info("epoch %d/%d: loss %.4f val_macro_f1 %.4f val_acc %.4f (%.1fs)%s", done, self.cfg.epochs,
                 entry["loss"], f1, acc, seconds, " -> early stop" if st.get("stopped_early") else "")
        if self.store is not None:
            log_entry = {"epoch": done, "run_id": RUN_ID, "pid": os.getpid(), "finished_at": time.time(),
                         "val_macro_f1": f1}
            st.update(self.store.save(self.model, done, st, log_entry))
        if self.progress is not None:  # after the checkpoint: the record never shows an epoch a resume would redo
            self.progress.epoch_end(st)
        if self.tracker is not None:
            self.tracker.log({"epoch": done, "train/loss": entry["loss"], "val/macro_f1": f1, "val/accuracy": acc,
                              "epoch_seconds": seconds}, step=done)
        if self.cfg.stop_after_epochs is not None and self.epochs_this_process >= self.cfg.stop_after_epochs:
            # Test hook: behave like a preempted VM right after the checkpoint is safely written.
            log.warning("--stop-after-epochs %d reached: exiting as if killed", self.cfg.stop_after_epochs)
            logging.shutdown()
            os._exit(75)


def train_model(cfg: TrainConfig, model: keras.Model, train: BucketedBatches, val: BucketedBatches,
                store: Optional[CheckpointStore], tracker, rows: slice = slice(None)) -> TrainResult:
    """Compile, resume if a checkpoint exists, fit with early stopping, restore the best weights. `rows`: this
    process's part of every batch (all of it unless several replicas train together)."""
    model.compile(
        optimizer=make_optimizer(cfg, len(train)),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=xla_allowed(),
    )
    state = None
    if store is not None:
        state = store.load_state()
        if state is not None and state.get("fingerprint") != _fingerprint(cfg):
            raise ConfigError(f"checkpoint dir {store.uri} holds a run with different settings; "
                              "use a fresh --checkpoint-dir")
    resumed_from = 0
    if state is not None:
        resumed_from = state["epoch"]
        store.restore(model, state)
        log.info("resuming from %s after epoch %d (best epoch %d, val macro-F1 %.4f)", store.uri, resumed_from,
                 state["best_epoch"], state["best_macro_f1"])
    else:
        state = {"epoch": 0, "best_epoch": 0, "best_macro_f1": -1.0, "wait": 0, "stopped_early": False,
                 "history": [], "best_weights": "", "fingerprint": _fingerprint(cfg)}

    progress = ProgressRecorder(cfg.output_dir, cfg.model, cfg.epochs, len(train), int(len(train.labels)))
    progress.start(state)
    callbacks = [progress_callback(progress)]
    cb = _EpochEnd(cfg, val, store, state, tracker, progress=progress)
    callbacks.append(cb)
    if cfg.tensorboard_dir and keras.backend.backend() == "tensorflow":
        callbacks.append(keras.callbacks.TensorBoard(log_dir=cfg.tensorboard_dir))
    elif cfg.tensorboard_dir:
        log.info("--tensorboard-dir ignored: TensorBoard logging needs the TensorFlow backend")

    finished = state["epoch"] >= cfg.epochs or state.get("stopped_early")
    if not finished:
        feed = _Feed(train, cfg.seed, first_epoch=state["epoch"], rows=rows)
        # shuffle=False: `_Feed` orders each epoch from the seed. Keras' own shuffle of a PyDataset's batches
        # (fit's default) draws from Python's `random`, whose state depends on the I/O so far: a resumed run and
        # every replica of a multi-machine run would each see another order (the replicas' steps would not even
        # match in shape).
        model.fit(feed, epochs=cfg.epochs, initial_epoch=state["epoch"], callbacks=callbacks, verbose=2,
                  shuffle=False)
    else:
        log.info("checkpoint already holds a finished run (epoch %d); skipping training", state["epoch"])

    if store is not None:
        if state["best_epoch"] and state["best_epoch"] != state["epoch"]:
            model.load_weights(store.best_weights_path(state))
    elif cb.best_in_memory is not None and state["best_epoch"] != state["epoch"]:
        model.set_weights(cb.best_in_memory)
    if state["best_epoch"] != state["epoch"]:
        log.info("restored best weights from epoch %d (val macro-F1 %.4f)", state["best_epoch"],
                 state["best_macro_f1"])
    n_real = int(len(train.labels))
    return TrainResult(
        epochs_run=int(state["epoch"]),
        resumed_from_epoch=resumed_from,
        best_epoch=int(state["best_epoch"]),
        seconds=cb.train_seconds,
        samples_trained=n_real * cb.epochs_this_process,
        stopped_early=bool(state.get("stopped_early")),
        history=list(state["history"]),
        epoch_log=store.epoch_log() if store is not None else [],
    )
