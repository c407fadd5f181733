"""What Vertex AI custom training offers: regions, machine families and their GPUs, FLEX_START GPUs, wire enums.

The one table of these facts: the flow's config check (tasks/config.py) and the Vertex emulator's spec validation
(emulators/vertex/spec.py) both read it. Pure data and small pure helpers; no Google client is imported.
Checked on 2026-12-01 against the page cited above each table. tests/emulators/test_vertex_units.py checks the enum
integers against google.cloud.aiplatform_v1's.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timezone

CHECKED = "2026-12-01"

# https://cloud.google.com/vertex-ai/docs/general/locations (regions offering Vertex AI custom training)
TRAINING_REGIONS = frozenset({
    "us-central1", "us-east1", "us-east4", "us-east5", "us-south1", "us-west1", "us-west2", "us-west3", "us-west4",
    "northamerica-northeast1", "northamerica-northeast2", "southamerica-east1", "southamerica-west1",
    "europe-central2", "europe-north1", "europe-southwest1", "europe-west1", "europe-west2", "europe-west3",
    "europe-west4", "europe-west6", "europe-west8", "europe-west9", "europe-west12",
    "me-central1", "me-central2", "me-west1", "africa-south1",
    "asia-east1", "asia-east2", "asia-northeast1", "asia-northeast2", "asia-northeast3", "asia-south1",
    "asia-southeast1", "asia-southeast2", "australia-southeast1", "australia-southeast2",
})

# https://cloud.google.com/vertex-ai/docs/training/configure-compute (machine types; GPUs and their counts)
#: Machine type names custom training accepts: family-kind-size, accelerator-optimized sizes end in "g".
MACHINE_TYPE_RE = re.compile(r"^(n1|n2|n2d|e2|c2|c2d|c3|m1|a2|a3|a4|g2)-[a-z]+-\d+g?$")
#: N1 machine types take these GPUs, in these counts: the user picks.
N1_GPUS: dict[str, tuple[int, ...]] = {
    "NVIDIA_TESLA_T4": (1, 2, 4),
    "NVIDIA_TESLA_P4": (1, 2, 4),
    "NVIDIA_TESLA_P100": (1, 2, 4),
    "NVIDIA_TESLA_V100": (1, 2, 4, 8),
}
#: Accelerator-optimized families, (family, kind) -> the GPU their machine types come with; the count is the
#: machine type's "<N>g" suffix (a2-highgpu-2g: 2 x A100, a4-highgpu-8g: 8 x B200).
ACCELERATOR_OPTIMIZED_GPUS: dict[tuple[str, str], str] = {
    ("a2", "highgpu"): "NVIDIA_TESLA_A100",
    ("a2", "megagpu"): "NVIDIA_TESLA_A100",
    ("a2", "ultragpu"): "NVIDIA_A100_80GB",
    ("a3", "highgpu"): "NVIDIA_H100_80GB",
    ("a3", "megagpu"): "NVIDIA_H100_MEGA_80GB",
    ("a3", "ultragpu"): "NVIDIA_H200_141GB",
    ("a4", "highgpu"): "NVIDIA_B200",
}
#: G2 machine types come with L4s: vCPUs -> L4 count (g2-standard-24: 2).
G2_L4_COUNTS: dict[int, int] = {4: 1, 8: 1, 12: 1, 16: 1, 32: 1, 24: 2, 48: 4, 96: 8}

# https://cloud.google.com/vertex-ai/docs/training/schedule-jobs-dws ("requests L4, A100, H100, H200, or B200 GPUs")
#: Dynamic Workload Scheduler (scheduling strategy FLEX_START) only provisions these.
FLEX_START_GPUS = frozenset({
    "NVIDIA_L4", "NVIDIA_TESLA_A100", "NVIDIA_A100_80GB", "NVIDIA_H100_80GB", "NVIDIA_H100_MEGA_80GB",
    "NVIDIA_H200_141GB", "NVIDIA_B200",
})

# https://cloud.google.com/vertex-ai/docs/reference/rest/v1/MachineSpec (AcceleratorType)
# (google/cloud/aiplatform/v1/accelerator_type.proto): the wire integers, GPUs only.
ACCELERATOR_TYPES: dict[str, int] = {
    "ACCELERATOR_TYPE_UNSPECIFIED": 0,
    "NVIDIA_TESLA_K80": 1,
    "NVIDIA_TESLA_P100": 2,
    "NVIDIA_TESLA_V100": 3,
    "NVIDIA_TESLA_P4": 4,
    "NVIDIA_TESLA_T4": 5,
    "NVIDIA_TESLA_A100": 8,
    "NVIDIA_A100_80GB": 9,
    "NVIDIA_L4": 11,
    "NVIDIA_H100_80GB": 13,
    "NVIDIA_H100_MEGA_80GB": 14,
    "NVIDIA_H200_141GB": 15,
    "NVIDIA_B200": 16,
    "NVIDIA_GB200": 17,
}

# https://cloud.google.com/vertex-ai/docs/reference/rest/v1/CustomJobSpec (Scheduling.Strategy)
# (google/cloud/aiplatform/v1/custom_job.proto, Scheduling.Strategy): the wire integers.
SCHEDULING_STRATEGIES: dict[str, int] = {
    "STRATEGY_UNSPECIFIED": 0,
    "ON_DEMAND": 1,
    "LOW_COST": 2,
    "STANDARD": 3,
    "SPOT": 4,
    "FLEX_START": 6,
}


# https://cloud.google.com/vertex-ai/docs/training/pre-built-containers ("Prebuilt containers for custom training",
# also .../supported-frameworks), read 2026-12-01: the end-of-availability (EoA) date of each prebuilt training image
# still listed (older rows, all past EoA before 2025-10, are left out). What EoA means
# (https://cloud.google.com/vertex-ai/docs/framework-support-policy): "After this date, you can no longer use images
# for this framework version. Services might block the creation of new resources using these images". Every image
# is {us,europe,asia}-docker.pkg.dev/vertex-ai/training/<name>:latest ("Using image names without the `latest` tag
# isn't supported"). No TensorFlow, PyTorch, scikit-learn or XGBoost image is available after 2026-10-23, which is
# why finsent builds its own image (trainer/container/, tasks/image.py).
PREBUILT_TRAINING_IMAGES: dict[str, date] = {
    "tf-cpu.2-17.py310": date(2026, 7, 11), "tf-gpu.2-17.py310": date(2026, 7, 11),
    "tf-cpu.2-16.py310": date(2026, 6, 28), "tf-gpu.2-16.py310": date(2026, 6, 28),
    "tf-cpu.2-15.py310": date(2025, 11, 14), "tf-gpu.2-15.py310": date(2025, 11, 14),
    "tf-cpu.2-14.py310": date(2025, 9, 26), "tf-gpu.2-14.py310": date(2025, 9, 26),
    "pytorch-xla.2-4.py310": date(2026, 7, 24), "pytorch-gpu.2-4.py310": date(2026, 7, 24),
    "pytorch-xla.2-3.py310": date(2026, 4, 24), "pytorch-gpu.2-3.py310": date(2026, 4, 24),
    "pytorch-xla.2-2.py310": date(2026, 10, 23), "pytorch-gpu.2-2.py310": date(2026, 1, 30),
    "sklearn-cpu.1-6": date(2026, 7, 11), "sklearn-gpu.1-6": date(2026, 7, 11),
    "xgboost-cpu.2-1": date(2026, 7, 11), "xgboost-gpu.2-1": date(2026, 7, 11),
}
PREBUILT_IMAGE_RE = re.compile(r"^(?:us|europe|asia)-docker\.pkg\.dev/vertex-ai/training/(?P<name>[^:/]+):latest$")


def prebuilt_image_end(image_uri: str) -> tuple[str, date | None] | None:
    """('tf-gpu.2-17.py310', its EoA date) for a prebuilt training image URI, (name, None) for a name in Vertex's
    form that is not in the table, None for a URI that is not a prebuilt training image at all."""
    match = PREBUILT_IMAGE_RE.match(image_uri)
    if not match:
        return None
    return match["name"], PREBUILT_TRAINING_IMAGES.get(match["name"])


def past_end_of_availability(end: date, today: date | None = None) -> bool:
    """Whether an image whose end of availability is `end` can no longer be used on `today` (UTC by default)."""
    return end <= (today or datetime.now(timezone.utc).date())


def machine_family(machine_type: str) -> str:
    """'n1-standard-8' -> 'n1', 'a2-highgpu-2g' -> 'a2-highgpu'."""
    return "n1" if machine_type.startswith("n1-") else machine_type.rsplit("-", 1)[0]


def gpus_for_machine(machine_type: str) -> tuple[dict[str, tuple[int, ...]], bool]:
    """The GPUs `machine_type` takes with their allowed counts, and whether it must have one.

    n1-* takes T4/P4/P100/V100 (optional); g2-* and the accelerator-optimized families (a2, a3, a4) come with a fixed
    number of one GPU (required); other families take none.
    """
    family, _, rest = machine_type.partition("-")
    kind, _, size = rest.rpartition("-")
    if family == "n1":
        return dict(N1_GPUS), False
    if family == "g2" and size.isdigit():
        return {"NVIDIA_L4": (G2_L4_COUNTS.get(int(size), 1),)}, True
    gpu = ACCELERATOR_OPTIMIZED_GPUS.get((family, kind))
    count = int(size[:-1]) if size.endswith("g") and size[:-1].isdigit() else 0
    if gpu and count:
        return {gpu: (count,)}, True
    return {}, False
