"""Data-parallel training on every device of every replica: the cluster Vertex describes, joining it, and what ran.

One module for the topology, so the rest of the trainer asks only four things: which rows of each batch this
process feeds (`Topology.rows`), whether it writes the run's files (`is_chief`), what to report (`describe`), and
the scope to build and compile the model in (`scope`: TensorFlow's strategy; nothing on JAX).

- One replica, one device: nothing changes ("none").
- One replica, N devices (a machine with N GPUs, or N virtual CPU devices in tests): data parallel over the
  N devices ("data_parallel"); each batch is split across them and the gradients are averaged (an all-reduce).
  JAX: Keras' DataParallel distribution. TensorFlow: `tf.distribute.MirroredStrategy` over the N devices (GPUs, or
  the logical CPU devices a user configured), the model built and compiled in its scope.
- R replicas (`replica_count` R: workerpool0 = the chief, workerpool1 = R - 1 workers): every process joins one
  JAX cluster (`jax.distributed.initialize`, the chief's address from CLUSTER_SPEC is the coordinator), then
  DataParallel runs over every device of every replica ("multi_worker"). Each process feeds its own contiguous block
  of every global batch; all processes build the same batch plan (same seed, same order), so they step together.

`--batch-size` is the GLOBAL batch: the same settings train the same model whatever the topology (the 2-device run
matches the 1-device run, tests/trainer/test_distribute.py and test_distribute_tf.py), and the learning rate is used
unchanged. It must divide by the number of devices training together. Several replicas train on JAX only (finsent's
image runs JAX): Keras 3 does not train under TensorFlow's MultiWorkerMirroredStrategy (keras-team/keras#20585;
docs/scaling.md "TensorFlow" has the measured failure), so a TensorFlow trainer with replicas is refused, as is
PyTorch with more than one device or replica.

Vertex's cluster description: https://cloud.google.com/vertex-ai/docs/training/distributed-training
("CLUSTER_SPEC": {"cluster": {"workerpool0": ["host:port"], "workerpool1": [...]}, "task": {"type": "workerpool0",
"index": 0}, ...}); Vertex sets it for every replica, also for a one-replica job.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass, field, replace
from typing import Any, ContextManager, Iterator, Mapping, Optional, Tuple

from trainer.errors import ConfigError

log = logging.getLogger(__name__)
CLUSTER_ENV = "CLUSTER_SPEC"
CHIEF_POOL, WORKER_POOL = "workerpool0", "workerpool1"
#: Pools finsent builds (tasks/vertex.py): the chief and its workers. workerpool2/3 are TF's parameter servers and
#: evaluators, which JAX's data parallelism has no role for.
PROCESS_POOLS = (CHIEF_POOL, WORKER_POOL)
DISTRIBUTIONS = ("none", "data_parallel", "multi_worker")


# --------------------------------------------------------------------------------------------- the cluster (pure)


@dataclass(frozen=True)
class Cluster:
    """The processes of one training run: `addresses` chief first (workerpool0, then workerpool1 in index order),
    and which of them this process is."""

    addresses: Tuple[str, ...] = ("",)
    process_id: int = 0

    @property
    def num_processes(self) -> int:
        return len(self.addresses)

    @property
    def coordinator(self) -> str:
        """JAX's coordination service runs in the chief, on the port Vertex gives the chief's framework."""
        return self.addresses[0]

    @property
    def is_chief(self) -> bool:
        return self.process_id == 0


def parse_cluster_spec(raw: Optional[str]) -> Cluster:
    """CLUSTER_SPEC's JSON -> Cluster; no variable (a run outside Vertex) is one process. ConfigError (one line) for
    a spec finsent cannot train with: malformed, or with parameter-server/evaluator pools."""
    if not raw:
        return Cluster()
    try:
        spec = json.loads(raw)
        cluster, task = spec["cluster"], spec.get("task") or {}
        pools = {name: list(addresses) for name, addresses in cluster.items()}
        kind, index = task.get("type", CHIEF_POOL), int(task.get("index", 0) or 0)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ConfigError(f"{CLUSTER_ENV} is not Vertex's cluster description ({exc!r}): {raw[:120]}") from None
    extra = sorted(set(pools) - set(PROCESS_POOLS))
    if extra:
        raise ConfigError(f"{CLUSTER_ENV} has worker pool(s) {', '.join(extra)}: finsent trains data-parallel on "
                          f"{CHIEF_POOL} (1 chief) and {WORKER_POOL} (workers) only")
    chief, workers = pools.get(CHIEF_POOL, []), pools.get(WORKER_POOL, [])
    if len(chief) != 1:
        raise ConfigError(f"{CLUSTER_ENV}: {CHIEF_POOL} must hold exactly 1 replica, got {len(chief)}")
    if kind not in PROCESS_POOLS or not 0 <= index < len(pools.get(kind, [])):
        raise ConfigError(f"{CLUSTER_ENV}: this replica ({kind} {index}) is not in the cluster")
    return Cluster(addresses=tuple(chief + workers), process_id=0 if kind == CHIEF_POOL else 1 + index)


def cluster_from_env(env: Mapping[str, str] = os.environ) -> Cluster:
    return parse_cluster_spec(env.get(CLUSTER_ENV))


def is_chief(env: Mapping[str, str] = os.environ) -> bool:
    """Whether this process writes the run's files (checkpoints, exports, metrics.json, progress, wandb): the one
    replica of workerpool0, or any process outside a Vertex cluster. A spec that cannot be read: the chief (the
    trainer refuses such a spec before training anyway)."""
    try:
        return cluster_from_env(env).is_chief
    except ConfigError:
        return True


# --------------------------------------------------------------------------------------------- topology (pure)


@dataclass(frozen=True)
class Topology:
    """What trains: `replicas` processes with `devices` devices each, on a global batch of `global_batch_size`.
    `strategy`: the tf.distribute strategy the model is built and trained under (TensorFlow, several devices)."""

    replicas: int = 1
    devices: int = 1
    global_batch_size: int = 1
    process_id: int = 0
    strategy: Any = field(default=None, compare=False, repr=False)

    @property
    def total_devices(self) -> int:
        return self.replicas * self.devices

    @property
    def distribution(self) -> str:
        if self.replicas > 1:
            return "multi_worker"
        return "data_parallel" if self.devices > 1 else "none"

    @property
    def rows(self) -> slice:
        """The rows of every global batch this process feeds: its contiguous block (process p holds devices
        p*devices .. (p+1)*devices - 1 of the mesh, as jax.devices() orders them by process)."""
        local = self.global_batch_size // self.replicas
        return slice(self.process_id * local, (self.process_id + 1) * local)


def check_batch(batch_size: int, replicas: int, devices: int, spell: str = "--batch-size") -> None:
    """The global batch is split evenly over every device: refuse one that does not divide, naming the nearest
    sizes that do. (Padding it with zero-weight rows would change the loss's denominator, so the same settings
    would train differently on another topology.)"""
    n = replicas * devices
    if batch_size % n:
        lower, upper = batch_size - batch_size % n, batch_size + n - batch_size % n
        sizes = f"{lower} or {upper}" if lower else str(upper)
        raise ConfigError(f"{spell} {batch_size} is the global batch and must divide by the {n} devices training "
                          f"together ({replicas} replica(s) x {devices} device(s)); use {sizes}")


def describe(topology: Topology) -> dict:
    """metrics.json's environment keys for what ran (a contract: the flow and its reports read these names)."""
    return {"devices": topology.devices, "replicas": topology.replicas,
            "global_batch_size": topology.global_batch_size, "distribution": topology.distribution}


# --------------------------------------------------------------------------------------------- joining (I/O)


def join(cluster: Cluster, backend: str) -> None:
    """Join the JAX cluster of a multi-replica job. Must run before any JAX computation (JAX fixes its devices at
    the first one), so task.py calls it before importing Keras. One process: nothing to do."""
    if cluster.num_processes == 1:
        return
    if backend != "jax":  # Keras 3 cannot fit under TF's MultiWorkerMirroredStrategy (keras-team/keras#20585)
        raise ConfigError(f"{cluster.num_processes} replicas: multi-machine training runs on the JAX backend only, "
                          f"not {backend}; set KERAS_BACKEND=jax (finsent's image does) or replica_count 1")
    import jax

    # CPU replicas exchange gradients through Gloo (JAX's CPU collectives; the default has none across processes).
    # GPUs use NCCL whatever this says.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    log.info("joining %d replicas as process %d (coordinator %s)", cluster.num_processes, cluster.process_id,
             cluster.coordinator)
    jax.distributed.initialize(coordinator_address=cluster.coordinator, num_processes=cluster.num_processes,
                               process_id=cluster.process_id)


def setup(cluster: Cluster, batch_size: int) -> Topology:
    """After `join` and the Keras import: count the devices, check the batch divides, and distribute over all of
    them (variables replicated, batches split on their first axis). JAX: Keras' DataParallel, set globally.
    TensorFlow: a MirroredStrategy on the returned Topology, which `scope` enters. Returns what will train."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        devices = jax.local_device_count()
    else:
        devices = len(keras.distribution.list_devices())  # GPUs, else the (logical) CPU devices
        if devices > 1 and backend != "tensorflow":
            raise ConfigError(f"{devices} devices: data-parallel training runs on the JAX or TensorFlow backend, not "
                              f"{backend}; set KERAS_BACKEND=jax (finsent's image does) or make one device visible "
                              "(e.g. CUDA_VISIBLE_DEVICES=0)")
    topology = Topology(replicas=cluster.num_processes, devices=devices, global_batch_size=batch_size,
                        process_id=cluster.process_id)
    check_batch(batch_size, topology.replicas, topology.devices)
    if topology.total_devices > 1 and backend == "tensorflow":
        topology = replace(topology, strategy=_mirrored_strategy())
    elif topology.total_devices > 1:
        # auto_shard_dataset=False: each process already feeds only its rows (Topology.rows); Keras' own sharding
        # is for tf.data only.
        keras.distribution.set_distribution(keras.distribution.DataParallel(
            devices=keras.distribution.list_devices(), auto_shard_dataset=False))
    log.info("distribution %s: %d replica(s) x %d device(s), global batch %d (%d rows per replica)",
             topology.distribution, topology.replicas, topology.devices, batch_size, batch_size // topology.replicas)
    return topology


def _mirrored_strategy():
    """tf.distribute.MirroredStrategy over the devices Keras counted (its default would take the GPUs, or ONE CPU
    whatever the logical CPU devices). How Keras 3 trains under it (keras/src/backend/tensorflow/trainer.py, 3.15.1):
    a model built in the strategy's scope keeps it (`TensorFlowTrainer.__init__`: "Model must be created under scope
    of DistStrat it will be trained with"), and so does the optimizer `compile` creates there; `fit` hands the
    PyDataset's tf.data pipeline to `strategy.experimental_distribute_dataset` (TFEpochIterator), which splits every
    global batch into one equal slice per replica; each replica's loss is its slice's mean times 1 / replicas
    (keras/src/losses/loss.py `scale_loss_for_distribution`) and the strategy sums the replicas' gradients, so an
    update is the global batch's mean gradient, as on one device; the loss Keras logs is unscaled again
    (`unscale_loss_for_distribution`). https://www.tensorflow.org/guide/distributed_training#mirroredstrategy"""
    import tensorflow as tf

    kind = "GPU" if tf.config.list_logical_devices("GPU") else "CPU"
    names = [d.name for d in tf.config.list_logical_devices(kind)]
    return tf.distribute.MirroredStrategy(devices=names)


def scope(topology: Topology) -> ContextManager:
    """Where the model is built and compiled: the TensorFlow strategy's scope (its variables mirrored on every
    device), or nothing to do (JAX distributes through keras.distribution; one device)."""
    return topology.strategy.scope() if topology.strategy is not None else contextlib.nullcontext()


def xla_allowed() -> bool:
    """Whether `compile` may jit the train step with XLA: not inside a tf.distribute strategy, where XLA cannot
    reach a mirrored variable on another device ("Trying to access resource .../replica_1 located in device CPU:1
    from device CPU:0", https://www.tensorflow.org/xla/known_issues#tfvariable_on_a_different_device); Keras' own
    "auto" turns XLA off under tf.distribute too (keras/src/trainers/trainer.py `_resolve_auto_jit_compile`)."""
    import keras

    if keras.backend.backend() != "tensorflow":
        return True
    import tensorflow as tf

    return not tf.distribute.has_strategy()


def one_replica_rows(outputs, rows: int):
    """`predict_on_batch` under a MirroredStrategy runs the whole batch on every replica and concatenates their
    results (keras/src/backend/tensorflow/trainer.py: `strategy.run` on a plain batch, then `reduce_per_replica(...,
    reduction="concat")`): keep the first replica's `rows`. Elsewhere: `outputs` unchanged."""
    return outputs[:rows]


def same_file_everywhere(path: str, topology: Topology) -> str:
    """Make `path` hold the chief's bytes on every replica (a collective: every process calls it at the same point).
    The WordPiece vocab learned from the training split can differ between processes on small corpora (tied
    merges), and replicas with different token ids would average meaningless gradients."""
    if topology.replicas == 1:
        return path
    import numpy as np
    from jax.experimental import multihost_utils

    with open(path, "rb") as f:
        data = np.frombuffer(f.read(), dtype=np.uint8)
    size = int(multihost_utils.broadcast_one_to_all(np.asarray(len(data), dtype=np.int32)))
    buffer = np.zeros(size, dtype=np.uint8)
    buffer[:min(size, len(data))] = data[:size]
    chief = np.asarray(multihost_utils.broadcast_one_to_all(buffer), dtype=np.uint8)
    if not topology.process_id == 0 and chief.tobytes() != data.tobytes():
        log.info("%s: using the chief's copy (this replica's differed)", os.path.basename(path))
        with open(path, "wb") as f:
            f.write(chief.tobytes())
    return path


@contextlib.contextmanager
def local_scope() -> Iterator[None]:
    """Keras objects created inside live on this process only. Under a multi-process distribution every variable
    Keras creates is placed on the global mesh, which JAX makes a collective (it checks the value is the same on
    every process); `model.save_weights` creates reference objects (saving_lib's `Optimizer(1.0)`), so a save that
    only the chief runs would wait forever for the workers, or pair with another collective of theirs."""
    import keras

    previous = keras.distribution.distribution()
    keras.distribution.set_distribution(None)
    try:
        yield
    finally:
        keras.distribution.set_distribution(previous)


def local_only() -> None:
    """Leave the distribution: what runs next (the chief's export) builds its variables on this process only."""
    import keras

    keras.distribution.set_distribution(None)
