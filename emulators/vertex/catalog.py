"""What Vertex offers, in one place: locations, enum wire values, machine families and their accelerators.

Sources: cloud.google.com/vertex-ai/docs/general/locations, .../training/configure-compute (2026-11). The enum
integers are google.cloud.aiplatform.v1's (tests/emulators/test_catalog.py checks them against the client).
"""

from __future__ import annotations

import re

#: Regions where CustomJobs run. A typo such as "us-centrall1" is rejected.
LOCATIONS = frozenset({
    "us-central1", "us-east1", "us-east4", "us-east5", "us-south1", "us-west1", "us-west2", "us-west3", "us-west4",
    "northamerica-northeast1", "northamerica-northeast2", "southamerica-east1", "southamerica-west1",
    "europe-central2", "europe-north1", "europe-southwest1", "europe-west1", "europe-west2", "europe-west3",
    "europe-west4", "europe-west6", "europe-west8", "europe-west9", "europe-west12",
    "me-central1", "me-central2", "me-west1", "africa-south1",
    "asia-east1", "asia-east2", "asia-northeast1", "asia-northeast2", "asia-northeast3", "asia-south1",
    "asia-southeast1", "asia-southeast2", "australia-southeast1", "australia-southeast2",
})

#: google.cloud.aiplatform.v1.AcceleratorType
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

#: google.cloud.aiplatform.v1.Scheduling.Strategy
SCHEDULING_STRATEGIES: dict[str, int] = {
    "STRATEGY_UNSPECIFIED": 0,
    "ON_DEMAND": 1,
    "LOW_COST": 2,
    "STANDARD": 3,
    "SPOT": 4,
    "FLEX_START": 6,
}

#: Dynamic Workload Scheduler (FLEX_START) only provisions these.
FLEX_START_ACCELERATORS = frozenset({
    "NVIDIA_L4", "NVIDIA_TESLA_A100", "NVIDIA_A100_80GB", "NVIDIA_H100_80GB", "NVIDIA_H100_MEGA_80GB",
    "NVIDIA_H200_141GB", "NVIDIA_B200",
})

#: Machine types Vertex training accepts (family-kind-size, GPU families end in "g").
MACHINE_TYPE_RE = re.compile(r"^(n1|n2|n2d|e2|c2|c2d|c3|m1|a2|a3|a4|g2)-[a-z]+-\d+g?$")

_N1_GPUS = {
    "NVIDIA_TESLA_T4": (1, 2, 4),
    "NVIDIA_TESLA_P4": (1, 2, 4),
    "NVIDIA_TESLA_P100": (1, 2, 4),
    "NVIDIA_TESLA_V100": (1, 2, 4, 8),
}
_G2_L4_COUNT = {4: 1, 8: 1, 12: 1, 16: 1, 32: 1, 24: 2, 48: 4, 96: 8}


def accelerator_offer(machine_type: str) -> tuple[dict[str, tuple[int, ...]], bool]:
    """Accelerators offered on `machine_type` with their allowed counts, and whether one is required.

    n1-* takes T4/P4/P100/V100; a2-highgpu/megagpu A100; a2-ultragpu A100_80GB; g2-* L4; a3-highgpu H100;
    a3-megagpu H100_MEGA; a3-ultragpu H200; a4-highgpu B200. Other families take none.
    """
    family, _, rest = machine_type.partition("-")
    kind, _, size = rest.rpartition("-")
    gpus = int(size[:-1]) if size.endswith("g") and size[:-1].isdigit() else None
    if family == "n1":
        return dict(_N1_GPUS), False
    if family == "g2" and size.isdigit():
        return {"NVIDIA_L4": (_G2_L4_COUNT.get(int(size), 1),)}, True
    fixed = {
        ("a2", "highgpu"): "NVIDIA_TESLA_A100",
        ("a2", "megagpu"): "NVIDIA_TESLA_A100",
        ("a2", "ultragpu"): "NVIDIA_A100_80GB",
        ("a3", "highgpu"): "NVIDIA_H100_80GB",
        ("a3", "megagpu"): "NVIDIA_H100_MEGA_80GB",
        ("a3", "ultragpu"): "NVIDIA_H200_141GB",
        ("a4", "highgpu"): "NVIDIA_B200",
    }.get((family, kind))
    if fixed and gpus:
        return {fixed: (gpus,)}, True
    return {}, False
