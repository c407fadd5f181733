"""The environment Vertex gives each replica: pure functions of the job, the replica's place and the host env.

A Vertex container starts from a clean environment plus the spec's `env`; on top Vertex sets AIP_MODEL_DIR,
AIP_CHECKPOINT_DIR, AIP_TENSORBOARD_LOG_DIR (from `baseOutputDirectory`), CLOUD_ML_JOB_ID, CLUSTER_SPEC and, when
the job has more than one replica, TF_CONFIG (workerpool0..3 = chief, worker, ps, evaluator).
"""

from __future__ import annotations

import json
from typing import Callable, Mapping

from emulators.vertex.spec import active_pools, replica_count

#: Host variables a replica inherits (the emulator runs replicas on the host, not in a container).
HOST_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "USER", "SSL_CERT_FILE",
            "STORAGE_EMULATOR_HOST")
TF_TASK_TYPES = ("chief", "worker", "ps", "evaluator")
_FIRST_PORT = 22220


def cluster_addresses(job: dict, next_port: Callable[[], int] | None = None) -> dict[str, list[str]]:
    """`{"workerpool0": ["127.0.0.1:22220"], "workerpool1": [...]}`: one loopback address per replica. Each replica
    of Vertex has a host of its own; here they share 127.0.0.1, so the driver passes `next_port` (a free port per
    call) and two multi-replica jobs running at once do not collide. Without it: fixed ports from 22220."""
    fixed = iter(range(_FIRST_PORT, _FIRST_PORT + 10_000))
    taken: set[int] = set()

    def port() -> int:
        while (chosen := next_port() if next_port else next(fixed)) in taken:
            pass
        taken.add(chosen)
        return chosen

    return {f"workerpool{i}": [f"127.0.0.1:{port()}" for _ in range(replica_count(pool))]
            for i, pool in active_pools(job)}


def replica_env(job: dict, job_id: str, pool_index: int, replica_index: int, cluster: Mapping[str, list[str]],
                host_env: Mapping[str, str]) -> dict[str, str]:
    """The variables replica `workerpool{pool_index}-{replica_index}` of `job` runs with."""
    env = {k: host_env[k] for k in HOST_ENV if k in host_env}
    env["PYTHONUNBUFFERED"] = "1"  # so the log (and the error's last lines) is complete when a replica dies
    job_spec = job.get("jobSpec", {})
    pool = job_spec["workerPoolSpecs"][pool_index]
    spec = pool.get("pythonPackageSpec") or pool.get("containerSpec") or {}
    for item in spec.get("env", []):
        env[item["name"]] = item.get("value", "")
    base = (job_spec.get("baseOutputDirectory") or {}).get("outputUriPrefix")
    if base:
        base = base.rstrip("/")
        env["AIP_MODEL_DIR"] = f"{base}/model/"
        env["AIP_CHECKPOINT_DIR"] = f"{base}/checkpoints/"
        env["AIP_TENSORBOARD_LOG_DIR"] = f"{base}/logs/"
    env["CLOUD_ML_JOB_ID"] = job_id
    env["CLUSTER_SPEC"] = json.dumps({
        "cluster": dict(cluster),
        "environment": "cloud",
        "task": {"type": f"workerpool{pool_index}", "index": replica_index},
        "job": json.dumps(job_spec),
    })
    if sum(len(addresses) for addresses in cluster.values()) > 1:
        by_index = {int(name[len("workerpool"):]): addresses for name, addresses in cluster.items()}
        env["TF_CONFIG"] = json.dumps({
            "cluster": {TF_TASK_TYPES[i]: addresses for i, addresses in by_index.items() if i < len(TF_TASK_TYPES)},
            "task": {"type": TF_TASK_TYPES[min(pool_index, 3)], "index": replica_index},
            "environment": "cloud",
        })
    return env
