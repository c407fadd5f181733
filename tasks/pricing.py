"""What a Vertex AI custom-training job costs per hour: the dated list prices the budget guard reads.

The one table of these prices: the config's pre-flight estimate (tasks/config.py, `max_cost_usd`) and the watch's
running cost (tasks/vertex.py) both read it. Pure data and small pure functions; no Google client is imported.

Only prices with a source are here, each row group with its source and the date it was read; a price that could not
be sourced is absent, and asking for it raises `UnknownPrice` naming what is missing (never a guess). Vertex bills a
job's machine and its GPUs separately per hour (the pricing page lists a rate per machine type and a rate per
accelerator), so a replica's rate is machine + count x GPU, and a job's that times its replica_count (every replica
is a machine of its own). No per-vCPU/per-GB derivation is made: the sources read do
not state Vertex's rule for one. Not in the table at all: the boot disk (pd-ssd, billed too, no price sourced),
SPOT and FLEX_START rates, and every region but us-central1.
"""

from __future__ import annotations

CHECKED = "2026-12-01"
PRICING_PAGE = "https://cloud.google.com/vertex-ai/pricing"
THIS_FILE = "tasks/pricing.py"

# Vertex AI custom training, STANDARD (on-demand) list prices, USD per hour, per (region, machine type).
# Source: Vertex's pricing page, now https://cloud.google.com/products/gemini-enterprise-agent-platform/pricing
# (formerly https://cloud.google.com/vertex-ai/pricing), as transcribed verbatim in api-evangelist/google-vertex-ai
# plans/google-vertex-ai-plans-pricing.yml ("Custom training n1-standard-4", "$0.21849885 / 1 hour"; the file was
# generated 2026-10-07 and says "every price_text was found verbatim in the fetched page text"); read 2026-12-01.
# That file names no region; two other public transcriptions give the same figure for us-central1 ("n1-standard-4
# in Iowa (us-central1) at $0.21849885/hour ... checked September 6, 2026"; "n1-standard-4, us-central1, tabela
# Default, 2026-09-08").
MACHINE_USD_PER_HOUR: dict[tuple[str, str], float] = {
    ("us-central1", "n1-standard-4"): 0.21849885,
}

# Vertex AI custom training accelerators, STANDARD list prices, USD per GPU per hour, per (region, accelerator).
# Source: the same api-evangelist transcription ("Accelerator NVIDIA_H100_80GB (training)", "$9.79655057 / 1 hour"),
# read 2026-12-01. Its region is not stated there: it is filed under us-central1 because the same transcription's
# machine price is the page's Iowa (us-central1) figure. H100s come only with a3-highgpu machine types, which have
# no price here yet, so no job is priced from this row alone.
GPU_USD_PER_HOUR: dict[tuple[str, str], float] = {
    ("us-central1", "NVIDIA_H100_80GB"): 9.79655057,
}

# Scheduling strategies priced by the tables above. SPOT: Vertex's Spot VMs page
# (https://cloud.google.com/vertex-ai/docs/predictions/use-spot-vms; Spot "is supported for only custom training and
# prediction") says only that Spot VMs "have significant discounts" and "you're billed by job duration and machine
# type. You don't pay for the time that the job is in a queue or preempted"; Compute Engine's "up to 91% off"
# (docs/instances/create-use-spot) is a bound, not a rate. FLEX_START (Dynamic Workload Scheduler) is billed on its
# own SKUs. Neither has a sourced price, so neither is estimated.
PRICED_STRATEGIES = frozenset({"STANDARD"})


class UnknownPrice(ValueError):
    """A machine, GPU, region or strategy with no sourced price; the message names each missing one and this file,
    `missing` lists them (for a short "not priced" note)."""

    def __init__(self, message: str, missing: list[str] | None = None):
        super().__init__(message)
        self.missing = list(missing or [])


def describe(machine_type: str, accelerator_type: str | None, accelerator_count: int, region: str,
             replica_count: int = 1) -> str:
    """'n1-standard-8 + 1 x NVIDIA_TESLA_T4 in us-central1' (', x 2 replicas' for several machines): what one job
    runs on, for messages."""
    gpu = f" + {accelerator_count} x {accelerator_type}" if accelerator_type and accelerator_count else ""
    replicas = f", x {replica_count} replicas" if replica_count > 1 else ""
    return f"{machine_type}{gpu}{replicas} in {region}"


def hourly_usd(machine_type: str, accelerator_type: str | None, accelerator_count: int, region: str,
               strategy: str = "STANDARD") -> float:  # fmt: skip
    """USD per hour of one replica: machine + accelerator_count x GPU, at the list price of `strategy`.
    Raises `UnknownPrice` naming everything that has no price (all at once, so one fix covers them)."""
    missing: list[str] = []
    if strategy not in PRICED_STRATEGIES:
        missing.append(f"scheduling_strategy {strategy} (no sourced rate, not estimated; "
                       f"priced: {', '.join(sorted(PRICED_STRATEGIES))})")
    machine = MACHINE_USD_PER_HOUR.get((region, machine_type))
    if machine is None:
        missing.append(f"machine type {machine_type} in {region}")
    gpu = 0.0
    if accelerator_type and accelerator_count:
        per_gpu = GPU_USD_PER_HOUR.get((region, accelerator_type))
        if per_gpu is None:
            missing.append(f"accelerator {accelerator_type} in {region}")
        else:
            gpu = accelerator_count * per_gpu
    if missing:
        raise UnknownPrice(
            f"{THIS_FILE} (checked {CHECKED}) has no price for {'; '.join(missing)}; add the figure with its source "
            f"from {PRICING_PAGE}, or unset max_cost_usd",
            missing,
        )
    return machine + gpu  # type: ignore[operator]  # machine is not None: it would be in `missing`


def job_cost_usd(hourly: float, running_seconds: float) -> float:
    """What `running_seconds` of RUNNING time cost at `hourly` USD per hour (Vertex bills the running time)."""
    return hourly * max(0.0, running_seconds) / 3600.0


def worst_case_usd(hourly: float, timeout_seconds: float, attempts: int) -> float:
    """The most one model's job may cost: every attempt runs until Vertex stops it at scheduling.timeout."""
    return job_cost_usd(hourly, timeout_seconds) * attempts
