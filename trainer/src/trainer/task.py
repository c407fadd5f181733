"""Entry point: `python -m trainer.task --help`.

main(argv): parse a TrainConfig -> load and validate the splits (before importing Keras, so bad input fails
fast) -> resolve the pretrained checkpoint -> build the model -> train (resumable) -> evaluate -> export the
model, vocab and label map -> write metrics.json last.
"""

from __future__ import annotations

import time

_PROCESS_START = time.time()

import importlib.util  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from typing import Optional, Sequence  # noqa: E402

from trainer import LABELS, __version__  # noqa: E402
from trainer import storage  # noqa: E402
from trainer.config import ERROR_PREFIX, TrainConfig, parse_config  # noqa: E402
from trainer.errors import CheckpointError, StorageError, TrainerError, describe  # noqa: E402

log = logging.getLogger("trainer")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_CHECKPOINT_FILES = ["config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json"]


def _default_backend() -> None:
    """Keras' own default is TensorFlow (what Vertex images have); without TF installed, use JAX."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's C++ start-up chatter would go to stderr
    if "KERAS_BACKEND" not in os.environ:
        os.environ["KERAS_BACKEND"] = "tensorflow" if importlib.util.find_spec("tensorflow") else "jax"


def resolve_pretrained(uri: str, work_dir: str, need_weights: bool) -> str:
    """Local directory holding the checkpoint files (downloaded first for gs:// and hub ids)."""
    if storage.is_gcs(uri):
        local = os.path.join(work_dir, "pretrained")
        got = storage.download_dir(uri, local, names=_CHECKPOINT_FILES)
        if not got:
            raise StorageError(f"pretrained checkpoint {uri} holds none of {', '.join(_CHECKPOINT_FILES[:3])}")
    elif os.path.isdir(uri):
        local = uri
    elif uri.startswith("hf://") or (_HUB_ID.match(uri) and not os.path.exists(uri)):
        repo_id = uri[len("hf://"):] if uri.startswith("hf://") else uri
        from huggingface_hub import snapshot_download

        try:
            local = snapshot_download(repo_id=repo_id, allow_patterns=_CHECKPOINT_FILES,
                                      local_dir=os.path.join(work_dir, "pretrained"))
        except (OSError, ValueError) as exc:  # the hub's errors (HTTP, not found, offline) are OSErrors; a bad id
            # a ValueError
            raise StorageError(f"cannot download {uri} from the Hugging Face hub: {describe(exc)}") from exc
    else:
        raise StorageError(f"pretrained checkpoint {uri} is not a directory, gs:// URI or hub id")
    required = ["vocab.txt"] + (["config.json", "model.safetensors"] if need_weights else [])
    for name in required:
        if not os.path.exists(os.path.join(local, name)):
            raise CheckpointError(f"pretrained checkpoint {uri} has no {name}")
    return local


def resolve_precision(requested: str) -> str:
    """auto: mixed_bfloat16 on bf16-capable GPUs (compute capability >= 8), mixed_float16 on older ones,
    float32 on CPU."""
    if requested != "auto":
        return requested
    import keras

    devices = [d.lower() for d in keras.distribution.list_devices()]
    if not any(d.startswith(("gpu", "cuda")) for d in devices):
        return "float32"
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout.split()
        return "mixed_bfloat16" if out and float(out[0]) >= 8.0 else "mixed_float16"
    except (OSError, subprocess.SubprocessError, ValueError) as exc:  # no nvidia-smi, hung, odd output
        log.warning("precision auto: cannot read the GPU's compute capability (%s); using mixed_float16, which "
                    "every CUDA GPU runs", describe(exc))
        return "mixed_float16"


def _environment(precision: str, topology) -> dict:
    """The backend, versions and device kind, and what trained (trainer.distribute: devices per replica, replicas,
    global batch, distribution)."""
    import keras

    from trainer import distribute

    import keras_hub
    import numpy

    backend = keras.backend.backend()
    devices = keras.distribution.list_devices()
    versions = {"keras": keras.__version__, "keras_hub": keras_hub.__version__, "numpy": numpy.__version__,
                "python": platform.python_version(), "trainer": __version__}
    backend_version = getattr(sys.modules.get(backend), "__version__", None)  # jax / tensorflow / torch
    if backend_version:
        versions[backend] = backend_version
    device = "gpu" if any(d.lower().startswith(("gpu", "cuda")) for d in devices) else "cpu"
    return {"backend": backend, "device": device, "versions": versions, **distribute.describe(topology)}


def _setup_logging() -> None:
    # Logs go to stdout: stderr is reserved for the one-line error of the CLI contract.
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def run(cfg: TrainConfig) -> dict:
    """Train, evaluate and export; returns the metrics dict (also written as metrics.json)."""
    from trainer.data import load_split

    splits = {name: load_split(uri, name) for name, uri in
              (("train", cfg.train_data), ("validation", cfg.validation_data), ("test", cfg.test_data))}
    log.info("data: %s", ", ".join(f"{k} {len(v.texts)}" for k, v in splits.items()))
    work_dir = tempfile.mkdtemp(prefix="finsent-trainer-")
    try:
        return _run(cfg, splits, work_dir)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


def _run(cfg: TrainConfig, splits: dict, work_dir: str) -> dict:
    pretrained_dir = None
    if cfg.pretrained:
        pretrained_dir = resolve_pretrained(cfg.pretrained, work_dir,
                                            need_weights=cfg.model == "bert" or cfg.lstm_embeddings != "learned")

    _default_backend()
    from trainer import distribute

    cluster = distribute.cluster_from_env()
    distribute.join(cluster, os.environ["KERAS_BACKEND"])  # before any JAX computation
    import keras

    from trainer import data as D
    from trainer.models import build_bert, build_lstm, pretrained_token_embeddings
    from trainer.metrics import classification_report
    from trainer.progress import history_entry
    from trainer.tracking import Tracker
    from trainer.train import CheckpointStore, predict_logits, train_model

    keras.utils.set_random_seed(cfg.seed)  # the same seed on every replica: the same initial weights
    topology = distribute.setup(cluster, cfg.batch_size)
    precision = resolve_precision(cfg.precision)
    keras.mixed_precision.set_dtype_policy(precision)
    log.info("backend %s, precision %s, devices %s", keras.backend.backend(), precision,
             keras.distribution.list_devices())

    export_dir = os.path.join(work_dir, "export")
    os.makedirs(export_dir)
    store = CheckpointStore(cfg.checkpoint_dir, os.path.join(work_dir, "checkpoints"), writer=cluster.is_chief) \
        if cfg.checkpoint_dir else None
    if pretrained_dir is not None:
        tokenizer, vocab_path, lowercase = D.checkpoint_tokenizer(pretrained_dir, cfg.max_seq_len)
    else:  # lstm without a checkpoint: WordPiece vocab learned from the training split only
        vocab_path = store.fetch("vocab.txt") if store is not None else None
        if vocab_path is None:
            vocab_path = D.train_wordpiece_vocab(splits["train"].texts, cfg.lstm_vocab_size,
                                                 os.path.join(work_dir, "vocab"))
        lowercase = True
        vocab_path = distribute.same_file_everywhere(vocab_path, topology)
        tokenizer = D.load_tokenizer(vocab_path, lowercase, cfg.max_seq_len)
    if store is not None and store.fetch("vocab.txt") is None:
        store.put(vocab_path, "vocab.txt")
    pad_id = tokenizer.token_to_id("[PAD]")
    encoded = {name: D.encode(tokenizer, s.texts) for name, s in splits.items()}
    buckets = D.bucket_lengths([len(x) for x in encoded["train"]], cfg.max_seq_len, cfg.buckets)
    class_weights = D.class_weights(splits["train"].labels, cfg.class_weights)
    log.info("buckets %s, class weights %s", buckets, dict(zip(LABELS, class_weights.round(3).tolist())))
    batches = {
        name: D.BucketedBatches(encoded[name], s.labels, cfg.batch_size, buckets, cfg.model,
                                class_weights=class_weights if name == "train" else None, pad_id=pad_id)
        for name, s in splits.items()
    }

    # Seeded again: the initial weights come from the seed alone, not from the I/O since the first seeding (a GCS
    # upload draws a multipart boundary from Python's random, and only the chief uploads), so every replica of a
    # multi-machine run starts from the same weights (JAX refuses replicated values that differ between processes).
    keras.utils.set_random_seed(cfg.seed)
    if cfg.model == "lstm" and pad_id != 0:
        raise CheckpointError(f"vocab {vocab_path}: [PAD] must have id 0 for the lstm's masking, got {pad_id}")
    with distribute.scope(topology):  # built and (in train_model) compiled where it trains: TF's strategy
        if cfg.model == "bert":
            model = build_bert(pretrained_dir, len(LABELS), cfg.dropout, cfg.max_seq_len, cfg.pooling,
                               work_dir=work_dir)
        else:
            embeddings = None
            if cfg.lstm_embeddings != "learned":
                embeddings = pretrained_token_embeddings(pretrained_dir, tokenizer.get_vocab_size())
            model = build_lstm(tokenizer.get_vocab_size(), len(LABELS), cfg.lstm_embedding_dim, cfg.lstm_units,
                               cfg.dropout, pooling=cfg.lstm_pooling, embeddings=embeddings,
                               train_embeddings=cfg.lstm_embeddings != "frozen")
    log.info("model %s: %d parameters", model.name, model.count_params())

    hyper = dict(cfg.hyperparameters(), precision=precision, buckets=list(buckets),
                 class_weight_values=[round(float(w), 4) for w in class_weights])
    tracker = Tracker(cfg.wandb_project if cluster.is_chief else None, cfg.wandb_run_name, cfg.wandb_tags,
                      config=dict(hyper, model=cfg.model), work_dir=os.path.join(work_dir, "wandb"))
    try:
        with distribute.scope(topology):
            result = train_model(cfg, model, batches["train"], batches["validation"], store, tracker,
                                 rows=topology.rows)

        reports = {}
        for name in ("test", "validation"):
            pred = predict_logits(model, batches[name]).argmax(-1)
            reports[name] = classification_report(splits[name].labels, pred, LABELS)
        log.info("test accuracy %.4f macro-F1 %.4f; validation accuracy %.4f macro-F1 %.4f",
                 reports["test"]["accuracy"], reports["test"]["macro_f1"], reports["validation"]["accuracy"],
                 reports["validation"]["macro_f1"])

        distribute.local_only()  # every replica exports to its own work dir; only the chief publishes it
        # === Export: a model that reloads anywhere (no optimizer state), its vocab and label map ===
        # from_config builds an uncompiled twin: serializing the trained model would carry its compile config,
        # and the saved file AdamW's two moments per weight (3x the size: 1.25 GB instead of 418 MB for BERT-base)
        export_model = keras.Model.from_config(model.get_config())
        export_model.set_weights(model.get_weights())
        export_model.save(os.path.join(export_dir, "model.keras"))
        shutil.copyfile(vocab_path, os.path.join(export_dir, "vocab.txt"))
        with open(os.path.join(export_dir, "labels.json"), "w") as f:
            json.dump({"labels": list(LABELS), "label_to_id": {k: i for i, k in enumerate(LABELS)}}, f, indent=1)
        with open(os.path.join(export_dir, "preprocessing.json"), "w") as f:
            json.dump({"model": cfg.model, "tokenizer": "wordpiece", "vocab": "vocab.txt", "lowercase": lowercase,
                       "max_seq_len": cfg.max_seq_len, "buckets": list(buckets), "pad_id": pad_id,
                       "inputs": ["token_ids", "segment_ids", "padding_mask"] if cfg.model == "bert"
                       else ["token_ids"]},
                      f, indent=1)
        with open(os.path.join(export_dir, "history.json"), "w") as f:
            json.dump({"best_epoch": result.best_epoch, "stopped_early": result.stopped_early,
                       "epochs": result.history, "epoch_log": result.epoch_log}, f, indent=1)

        train_seconds = result.seconds
        metrics = {
            "model": cfg.model,
            "labels": list(LABELS),
            "test": reports["test"],
            "validation": reports["validation"],
            "train": {
                "epochs_run": result.epochs_run,
                "seconds": round(train_seconds, 3),
                "samples_per_second": round(result.samples_trained / train_seconds, 2) if train_seconds else 0.0,
                "resumed_from_epoch": result.resumed_from_epoch,
                # per finished epoch, over every process of a resumed run (the checkpoint carries it)
                "history": [history_entry(entry) for entry in result.history],
            },
            "environment": _environment(precision, topology),
            "hyperparameters": hyper,
        }
        if not cluster.is_chief:  # workers write nothing to the output: the chief's files are the run's
            log.info("replica %d of %d: done; the chief publishes the model", cluster.process_id + 1,
                     cluster.num_processes)
            return metrics
        _publish(export_dir, cfg.output_dir, metrics)
        tracker.summary({"test/accuracy": metrics["test"]["accuracy"], "test/macro_f1": metrics["test"]["macro_f1"],
                         "wall_seconds": time.time() - _PROCESS_START})
        return metrics
    finally:
        tracker.finish()


def _publish(export_dir: str, output_dir: str, metrics: dict) -> None:
    """Copy the exported files to the output dir, then metrics.json LAST (temp name + rename locally), so a
    half-finished run never looks complete."""
    for name in sorted(os.listdir(export_dir)):
        storage.upload_file(os.path.join(export_dir, name), storage.join(output_dir, name))
    tmp = os.path.join(export_dir, "metrics.json")
    with open(tmp, "w") as f:
        json.dump(metrics, f, indent=1)
    storage.upload_file(tmp, storage.join(output_dir, "metrics.json"))
    log.info("wrote %s (wall time since process start %.1fs)", storage.join(output_dir, "metrics.json"),
             time.time() - _PROCESS_START)


def main(argv: Optional[Sequence[str]] = None) -> int:
    _setup_logging()
    try:
        cfg = parse_config(argv)
        run(cfg)
        return 0
    except TrainerError as exc:
        sys.stderr.write(f"{ERROR_PREFIX}{' '.join(str(exc).split())}\n")
        return 2
    except Exception as exc:  # unexpected: traceback to the log (stdout), one line to stderr
        log.exception("unexpected failure")
        msg = " ".join(str(exc).split())[:300]
        sys.stderr.write(f"{ERROR_PREFIX}unexpected {type(exc).__name__}: {msg}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
