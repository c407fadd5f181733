"""CustomJob bodies: normalise what the client sends (enum ints or names, int64 strings) and validate like Vertex.

Stored and answered form: camelCase, enums as NAMES, int64 as strings, int32 as numbers: what Vertex answers.
"""

from __future__ import annotations

import copy
import re

from tasks.catalog import (
    ACCELERATOR_TYPES,
    FLEX_START_GPUS,
    MACHINE_TYPE_RE,
    SCHEDULING_STRATEGIES,
    TRAINING_REGIONS,
    gpus_for_machine,
    past_end_of_availability,
    prebuilt_image_end,
)

from emulators.vertex.errors import InvalidArgument, bad_request_details

#: CustomJob fields the server owns; a client that sends them is ignored, as the real API does.
OUTPUT_ONLY = ("name", "state", "createTime", "startTime", "endTime", "updateTime", "error", "webAccessUris")

_LABEL_KEY_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_LABEL_VALUE_RE = re.compile(r"^[a-z0-9_-]{0,63}$")
_DURATION_RE = re.compile(r"^\d+(\.\d{1,9})?s$")


def _enum_name(value: object, table: dict[str, int], field: str, type_name: str) -> str:
    by_number = {v: k for k, v in table.items()}
    if isinstance(value, bool):
        value = None
    if isinstance(value, int) and value in by_number:
        return by_number[value]
    if isinstance(value, str) and value in table:
        return value
    raise InvalidArgument(
        f"Invalid value at '{field}' (type.googleapis.com/google.cloud.aiplatform.v1.{type_name}), {value!r}"
    )


def _as_int(value: object, field: str) -> int:
    try:
        if isinstance(value, bool):
            raise ValueError
        return int(value)  # int64 arrives as a string, int32 as a number
    except (TypeError, ValueError):
        raise InvalidArgument(f"Invalid value at '{field}' (TYPE_INT64), {value!r}") from None


def normalize_custom_job(body: object) -> dict:
    """Return a canonical copy of a CustomJob body; raise InvalidArgument on wrongly-typed values."""
    if not isinstance(body, dict):
        raise InvalidArgument("Invalid JSON payload received. Expected a CustomJob object.")
    job = copy.deepcopy(body)
    for key in OUTPUT_ONLY:
        job.pop(key, None)
    spec = job.get("jobSpec") or {}
    for i, pool in enumerate(spec.get("workerPoolSpecs") or []):
        prefix = f"custom_job.job_spec.worker_pool_specs[{i}]"
        machine = pool.get("machineSpec")
        if isinstance(machine, dict):
            if "acceleratorType" in machine:
                name = _enum_name(machine["acceleratorType"], ACCELERATOR_TYPES,
                                  f"{prefix}.machine_spec.accelerator_type", "AcceleratorType")
                if name == "ACCELERATOR_TYPE_UNSPECIFIED":
                    del machine["acceleratorType"]
                else:
                    machine["acceleratorType"] = name
            if "acceleratorCount" in machine:
                machine["acceleratorCount"] = _as_int(machine["acceleratorCount"], f"{prefix}.machine_spec.accelerator_count")
                if machine["acceleratorCount"] == 0:
                    del machine["acceleratorCount"]
        if "replicaCount" in pool:
            pool["replicaCount"] = str(_as_int(pool["replicaCount"], f"{prefix}.replica_count"))
        disk = pool.get("diskSpec")
        if isinstance(disk, dict) and "bootDiskSizeGb" in disk:
            disk["bootDiskSizeGb"] = _as_int(disk["bootDiskSizeGb"], f"{prefix}.disk_spec.boot_disk_size_gb")
    scheduling = spec.get("scheduling")
    if isinstance(scheduling, dict) and "strategy" in scheduling:
        name = _enum_name(scheduling["strategy"], SCHEDULING_STRATEGIES,
                          "custom_job.job_spec.scheduling.strategy", "Scheduling.Strategy")
        if name == "STRATEGY_UNSPECIFIED":
            del scheduling["strategy"]
        else:
            scheduling["strategy"] = name
    return job


def active_pools(job: dict) -> list[tuple[int, dict]]:
    """(index, pool) for each non-empty worker pool (Vertex allows `{}` placeholders after the first)."""
    pools = (job.get("jobSpec") or {}).get("workerPoolSpecs") or []
    return [(i, p) for i, p in enumerate(pools) if p]


def replica_count(pool: dict) -> int:
    return int(pool.get("replicaCount", "1") or 1)


def parse_duration(value: str) -> float:
    return float(value[:-1])


def validate_custom_job(job: dict, location: str) -> None:
    """Raise InvalidArgument listing every problem, in Vertex's "List of found errors" format."""
    errors: list[tuple[str, str]] = []
    if location not in TRAINING_REGIONS:
        raise InvalidArgument(
            f"Location {location!r} is not a supported Vertex AI location for CustomJobs "
            f"(e.g. us-central1, europe-west4). Check the region in the parent resource name."
        )
    if not job.get("displayName"):
        errors.append(("custom_job.display_name", "Required field is not set."))
    labels = job.get("labels") or {}
    if len(labels) > 64:
        errors.append(("custom_job.labels", f"At most 64 labels are allowed, got {len(labels)}."))
    for key, value in labels.items():
        if not _LABEL_KEY_RE.match(key):
            errors.append((f"custom_job.labels[{key!r}]", "Label keys must start with a lowercase letter and contain "
                           "only lowercase letters, digits, '_' and '-' (at most 63 characters)."))
        if not isinstance(value, str) or not _LABEL_VALUE_RE.match(value):
            errors.append((f"custom_job.labels[{key!r}]", f"Label value {value!r} is invalid: only lowercase letters, "
                           "digits, '_' and '-' are allowed (at most 63 characters)."))
    spec = job.get("jobSpec") or {}
    pools = spec.get("workerPoolSpecs") or []
    if not pools or not pools[0]:
        errors.append(("custom_job.job_spec.worker_pool_specs[0]", "Required field is not set."))
    scheduling = spec.get("scheduling") or {}
    strategy = scheduling.get("strategy")
    timeout = scheduling.get("timeout")
    if timeout is not None and not (isinstance(timeout, str) and _DURATION_RE.match(timeout)):
        errors.append(("custom_job.job_spec.scheduling.timeout", f"Invalid duration {timeout!r}."))
    prefix_uri = (spec.get("baseOutputDirectory") or {}).get("outputUriPrefix")
    if prefix_uri is not None and not str(prefix_uri).startswith("gs://"):
        errors.append(("custom_job.job_spec.base_output_directory.output_uri_prefix",
                       f"Output URI prefix must start with gs://, got {prefix_uri!r}."))
    for i, pool in active_pools(job):
        errors.extend(_pool_errors(i, pool, strategy))
    if errors:
        found = "".join(f"{n}.Field: {field}; Message: {msg}\t" for n, (field, msg) in enumerate(errors, 1))
        raise InvalidArgument(f"List of found errors:\t{found}", bad_request_details(errors))


def _pool_errors(i: int, pool: dict, strategy: str | None) -> list[tuple[str, str]]:
    p = f"custom_job.job_spec.worker_pool_specs[{i}]"
    errors: list[tuple[str, str]] = []
    count = replica_count(pool)
    if i == 0 and count != 1:
        errors.append((f"{p}.replica_count", f"The first worker pool must have exactly 1 replica, got {count}."))
    elif count < 1:
        errors.append((f"{p}.replica_count", f"Replica count must be at least 1, got {count}."))
    machine = pool.get("machineSpec") or {}
    machine_type = machine.get("machineType")
    accel = machine.get("acceleratorType")
    accel_count = machine.get("acceleratorCount")
    if not machine_type:
        errors.append((f"{p}.machine_spec.machine_type", "Required field is not set."))
    elif not MACHINE_TYPE_RE.match(machine_type):
        errors.append((f"{p}.machine_spec.machine_type", f"Machine type \"{machine_type}\" is not supported."))
    else:
        offered, required = gpus_for_machine(machine_type)
        if accel and not accel_count:
            errors.append((f"{p}.machine_spec.accelerator_count",
                           f"Accelerator count must be set and greater than 0 when accelerator type {accel} is set."))
        elif accel_count and not accel:
            errors.append((f"{p}.machine_spec.accelerator_type",
                           f"Accelerator type must be set when accelerator count ({accel_count}) is set."))
        elif accel and accel not in offered:
            supported = ", ".join(sorted(offered)) or "none (CPU only)"
            errors.append((f"{p}.machine_spec.accelerator_type",
                           f"Accelerator \"{accel}\" is not supported for machine type \"{machine_type}\". "
                           f"Supported accelerators: {supported}."))
        elif accel and accel_count not in offered[accel]:
            counts = ", ".join(map(str, offered[accel]))
            errors.append((f"{p}.machine_spec.accelerator_count",
                           f"Accelerator count {accel_count} is not supported for {accel} on machine type "
                           f"\"{machine_type}\". Supported counts: {counts}."))
        elif required and not accel:
            want = ", ".join(sorted(offered))
            errors.append((f"{p}.machine_spec.accelerator_type",
                           f"Machine type \"{machine_type}\" requires accelerator type {want}."))
    if strategy == "FLEX_START" and accel not in FLEX_START_GPUS:
        errors.append(("custom_job.job_spec.scheduling.strategy",
                       f"FLEX_START is not supported for accelerator {accel or 'none'} in worker pool {i}. "
                       f"Supported accelerators: {', '.join(sorted(FLEX_START_GPUS))}."))
    python_spec, container = pool.get("pythonPackageSpec"), pool.get("containerSpec")
    if bool(python_spec) == bool(container):
        errors.append((f"{p}", "Exactly one of python_package_spec or container_spec must be set."))
    if python_spec:
        q = f"{p}.python_package_spec"
        image = python_spec.get("executorImageUri")
        if not image:
            errors.append((f"{q}.executor_image_uri", "Required field is not set."))
        else:
            problem = executor_image_problem(image)
            if problem:
                errors.append((f"{q}.executor_image_uri", problem))
        uris = python_spec.get("packageUris") or []
        if not uris:
            errors.append((f"{q}.package_uris", "Required field is not set."))
        for uri in uris:
            if not str(uri).startswith("gs://"):
                errors.append((f"{q}.package_uris", f"Package URI must be a Cloud Storage URI (gs://...), got {uri!r}."))
        if not python_spec.get("pythonModule"):
            errors.append((f"{q}.python_module", "Required field is not set."))
    if container and not container.get("imageUri"):
        errors.append((f"{p}.container_spec.image_uri", "Required field is not set."))
    return errors


def executor_image_problem(image_uri: str, today=None) -> str | None:
    """Why Vertex would refuse `image_uri` as a pythonPackageSpec executor, or None. custom_job.proto,
    PythonPackageSpec.executor_image_uri: "See the list of pre-built containers for training. You must use an
    image from this list." Past its end of availability an image "can no longer" be used (framework-support-policy).
    The wording of both messages is ours: no source quotes Vertex's."""
    known = prebuilt_image_end(image_uri)
    if known is None or known[1] is None:
        return (f"Executor image {image_uri} is not a pre-built training container "
                "(https://cloud.google.com/vertex-ai/docs/training/pre-built-containers).")
    if past_end_of_availability(known[1], today):
        return f"Executor image {image_uri} reached its end of availability on {known[1].isoformat()}."
    return None
