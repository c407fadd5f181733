"""`PipelineConfig`: every setting of a `train` run, checked before anything is uploaded or launched.

The config is a Prefect flow parameter, so it shows in the UI and is stored with each run. It must never hold a
secret: credentials come from a prefect-gcp `GcpCredentials` block (or application-default credentials), the wandb
key from a Prefect `Secret` block or a Secret Manager reference; the config only names them.

`params` is generated from the trainer's own schema (trainer/src/trainer/params.py), not written again here: one
pydantic model per model (`BertParams`, `LstmParams`, made with `create_model` from the schema's table, with that
model's defaults and help texts, so Prefect's UI shows them), whose validation is the trainer's `resolve`. Why
both: the generated fields give the UI form and attribute access (`cfg.params["bert"].max_seq_len`); calling
`resolve` makes the flow refuse exactly what the trainer would refuse, with the trainer's message, before any
upload, and fill in exactly the trainer's per-model defaults. The bounds and rules are never copied into pydantic.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator
from trainer import params as trainer_params
from trainer.distribute import check_batch
from trainer.errors import ConfigError as TrainerConfigError

from tasks.catalog import FLEX_START_GPUS, TRAINING_REGIONS, gpus_for_machine, machine_family, past_end_of_availability, prebuilt_image_end
from tasks.image import default_image_uri
from tasks.pricing import UnknownPrice, describe, hourly_usd, worst_case_usd
from tasks.sweep import Sweep, Trial

ModelName = Literal[trainer_params.MODELS]  # type: ignore[valid-type]
LABELS = ("negative", "neutral", "positive")

DEFAULT_DATA_URI = (
    "https://huggingface.co/datasets/takala/financial_phrasebank/resolve/main/data/FinancialPhraseBank-v1.0.zip"
)
# https://cloud.google.com/vertex-ai/docs/training/schedule-jobs-dws: a Dynamic Workload Scheduler (FLEX_START) job
# "has a maximum timeout of 7 days or less".
FLEX_START_MAX_TIMEOUT_SECONDS = 7 * 24 * 3600


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TrainerParams(_Strict):
    """Hyper-parameters of one model for `python -m trainer.task` (see its `--help`); `BertParams` and
    `LstmParams` below are generated from the trainer's schema, each with that model's defaults."""

    trainer_model: ClassVar[str]

    @model_validator(mode="before")
    @classmethod
    def _resolved_by_the_trainer(cls, given: Any) -> dict[str, Any]:
        try:
            return trainer_params.resolve(cls.trainer_model, given)
        except TrainerConfigError as exc:
            raise ValueError(str(exc)) from None


# The JSON type of each kind of schema parameter (what Prefect's UI shows; the values are checked by `resolve`).
_ANNOTATION_OF_KIND: dict[str, Any] = {"int": int, "float": float, "checkpoint": str | None,
                                       "lengths": list[int] | None}


def _params_model(model: str) -> type[TrainerParams]:
    fields: dict[str, Any] = {
        p.name: (Literal[p.choices] if p.kind == "choice" else _ANNOTATION_OF_KIND[p.kind],
                 Field(p.defaults[model], description=p.help))
        for p in trainer_params.params_of(model)
    }
    generated = create_model(f"{model.capitalize()}Params", __base__=TrainerParams, __module__=__name__, **fields)
    generated.trainer_model = model
    return generated


PARAMS_OF_MODEL: dict[str, type[TrainerParams]] = {model: _params_model(model) for model in trainer_params.MODELS}


class _ParamsByModel(_Strict):
    def __getitem__(self, model: str) -> TrainerParams:
        if model not in PARAMS_OF_MODEL:
            raise KeyError(model)
        return getattr(self, model)


# `params`: one field per model, each defaulting to all that model's defaults (so a model missing from the config,
# or a field missing from a model, takes the trainer's default for that model).
ParamsByModel = create_model(
    "ParamsByModel",
    __base__=_ParamsByModel,
    __module__=__name__,
    **{model: (cls, Field(default_factory=cls)) for model, cls in PARAMS_OF_MODEL.items()},  # type: ignore[call-overload]
)


class DataConfig(_Strict):
    """Where the data comes from and how it is parsed and split."""

    uri: str = Field(DEFAULT_DATA_URI, description="https:// URL, gs:// URI or local path of a zip or CSV.")
    format: Literal["auto", "phrasebank", "csv"] = "auto"
    phrasebank_file: str = Field("Sentences_50Agree.txt", description="Member of the PhraseBank zip to read.")
    text_column: str | int = Field("text", description="CSV column name, or 0-based index when has_header=False.")
    label_column: str | int = "label"
    has_header: bool | None = Field(None, description="None: sniff the CSV.")
    label_map: dict[str, Literal["negative", "neutral", "positive"]] = Field(
        default_factory=dict, description="Source label -> finsent label, e.g. {'0': 'negative'}."
    )
    test_fraction: float = Field(0.2, gt=0, lt=1)
    validation_fraction: float = Field(0.1, gt=0, lt=1, description="Share of the non-test rows.")
    seed: int = 42
    split_column: str | int | None = Field(
        None,
        description="CSV column holding a predefined split (train / validation|val|dev / test); "
        "None: stratified seeded split by the fractions above.",
    )


class WandbConfig(_Strict):
    project: str = "finsent"
    api_key_secret_block: str | None = Field(None, description="Prefect Secret block holding the wandb key.")
    secret_manager_ref: str | None = Field(
        None,
        description="projects/P/secrets/S/versions/V: the trainer reads the key from Secret Manager, so it never "
        "appears in the job spec.",
    )


class PollConfig(_Strict):
    """Adaptive polling: quick while a job starts, slower for long jobs.

    Defaults (docs/benchmarks.md, Orchestration): every second for the first 30 s, then x1.3 per poll up to 60 s.
    A one-hour job costs 101 GETs; the largest gap in the first minute is 8.2 s; a short job's end is seen within
    1 s (it was up to 5 s with the earlier 60 s / 5 s fast phase, the bulk of the flow's overhead on the emulators).
    Once the trainer says its training is finished the schedule restarts from `finishing_seconds`, so a long job's
    end is seen soon too, rather than up to 60 s late.
    """

    initial_seconds: float = Field(1.0, gt=0)
    max_seconds: float = Field(60.0, gt=0)
    growth: float = Field(1.3, ge=1.0)
    fast_phase_seconds: float = Field(30.0, ge=0, description="Keep polling every few seconds this long.")
    fast_phase_max_seconds: float = Field(1.0, gt=0)
    finishing_seconds: float = Field(
        0.25, gt=0, description="When the trainer's progress record says training finished (only evaluation, export "
        "and the upload are left), the schedule starts again from this gap (growing by `growth`): the job's end is "
        "seen in about a second, not after the long gap of a long job (at most ~20 more GETs per job).")


class PipelineConfig(_Strict):
    """Every setting of a `train` run. Validated as a whole before the first byte is uploaded."""

    project: str = Field(..., description="GCP project id.")
    region: str = "us-central1"
    bucket: str = Field(..., description="GCS bucket (without gs://) for data, packages and models.")
    prefix: str = Field("finsent", description="Folder inside the bucket.")
    models: tuple[ModelName, ...] = ("bert", "lstm")
    params: ParamsByModel = Field(  # type: ignore[valid-type]
        default_factory=ParamsByModel, description="Hyper-parameters per model (`python -m trainer.task --help`)."
    )
    data: DataConfig = Field(default_factory=DataConfig)
    wandb: WandbConfig = Field(default_factory=WandbConfig)
    poll: PollConfig = Field(default_factory=PollConfig)
    sweep: Sweep | None = Field(
        None,
        description="A hyper-parameter sweep of one of `models` (tasks/sweep.py): one Vertex job per trial "
        "instead of that model's single job, the winner by validation macro-F1; the other models train once.",
    )

    machine_type: str = "n1-standard-8"
    accelerator_type: str | None = "NVIDIA_TESLA_T4"
    accelerator_count: int = Field(1, ge=0)
    replica_count: int = Field(1, ge=1)
    boot_disk_size_gb: int = Field(100, ge=10)
    container_image_uri: str | None = Field(
        None,
        description="The jobs' image. Default: finsent's own image for this checkout, "
        "REGION-docker.pkg.dev/PROJECT/finsent/finsent-trainer:TAG (`make image` builds and pushes it).",
    )
    executor_image_uri: str | None = Field(
        None,
        description="Not supported: Vertex's prebuilt training images (pythonPackageSpec) are past their end of "
        "availability; kept so an old config gets a clear refusal. Use container_image_uri.",
    )
    scheduling_strategy: Literal["STANDARD", "SPOT", "FLEX_START"] = "STANDARD"
    # custom_job.proto, Scheduling.restart_job_on_worker_restart: "Restarts the entire CustomJob if a worker gets
    # restarted" (so with one replica: the whole job, which resumes from its checkpoints).
    restart_job_on_worker_restart: bool = Field(
        True,
        description="Vertex restarts the entire CustomJob (every replica) when a worker restarts, e.g. after a "
        "SPOT preemption; the trainer resumes from AIP_CHECKPOINT_DIR.",
    )
    timeout_seconds: int = Field(4 * 3600, ge=60, description="Vertex kills the job after this long RUNNING.")
    max_wait_seconds: int = Field(
        86400,
        ge=60,
        description="How long a job may wait QUEUED/PENDING for quota or capacity before the flow cancels it; sent "
        "as scheduling.max_wait_duration for FLEX_START (Vertex's default there is 24 h).",
    )
    max_infra_retries: int = Field(2, ge=0, description="Resubmits after preemption/stockout failures.")
    max_cost_usd: float | None = Field(
        None,
        gt=0,
        description="The most one model's job may cost over all its attempts (USD, machine + GPUs at the list prices "
        "in tasks/pricing.py). Refused before any upload when timeout_seconds x (1 + max_infra_retries) could cost "
        "more; a running job is cancelled once its running time has. None: no budget guard.",
    )
    service_account: str | None = None

    gcp_credentials_block: str | None = Field(None, description="prefect-gcp GcpCredentials block name.")
    anonymous_credentials: bool = Field(False, description="Emulators only: send no credentials.")
    vertex_endpoint: str | None = Field(None, description="Override, e.g. http://127.0.0.1:8470 for the emulator.")

    @field_validator("region")
    @classmethod
    def _known_region(cls, region: str) -> str:
        if region not in TRAINING_REGIONS:
            close = sorted(r for r in TRAINING_REGIONS if r[:6] == region[:6])[:3]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ValueError(f"region {region!r} does not offer Vertex AI training{hint}")
        return region

    @field_validator("bucket")
    @classmethod
    def _bucket_name(cls, bucket: str) -> str:
        if bucket.startswith("gs://"):
            raise ValueError(f"give the bucket name only, not {bucket!r}")
        if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]", bucket):
            raise ValueError(f"bucket {bucket!r} is not a valid GCS bucket name")
        return bucket

    @field_validator("models")
    @classmethod
    def _some_model(cls, models: tuple[str, ...]) -> tuple[str, ...]:
        if not models:
            raise ValueError("choose at least one of 'bert', 'lstm'")
        return tuple(dict.fromkeys(models))

    @field_validator("executor_image_uri")
    @classmethod
    def _no_prebuilt_executor(cls, uri: str | None) -> None:
        if uri is None:
            return None
        use = ("finsent runs in its own image now: remove executor_image_uri (container_image_uri then defaults to "
               "finsent's image, built with `make image`)")
        known = prebuilt_image_end(uri)
        if known and known[1] is not None and past_end_of_availability(known[1]):
            raise ValueError(f"{known[0]} reached the end of its availability on Vertex on {known[1].isoformat()} "
                             f"(https://cloud.google.com/vertex-ai/docs/training/pre-built-containers); {use}")
        if known:
            raise ValueError(f"{known[0]}: finsent has no tested pin set for this prebuilt image; {use}")
        raise ValueError(f"{uri} is not a Vertex prebuilt training image (pythonPackageSpec takes only those); {use}")

    @model_validator(mode="after")
    def _machine_and_gpu_fit(self) -> PipelineConfig:
        offered, gpu_required = gpus_for_machine(self.machine_type)
        gpu = self.accelerator_type
        if gpu and self.accelerator_count == 0:
            raise ValueError(f"accelerator_type {gpu} needs accelerator_count >= 1")
        if self.accelerator_count and not gpu:
            raise ValueError(f"accelerator_count {self.accelerator_count} needs an accelerator_type")
        if gpu:
            if gpu not in offered:
                choices = ", ".join(sorted(offered)) if offered else "none"
                raise ValueError(
                    f"{gpu} is not offered on machine type {self.machine_type} "
                    f"(GPUs for {machine_family(self.machine_type)}: {choices})"
                )
            allowed = offered[gpu]
            if self.accelerator_count not in allowed:
                raise ValueError(
                    f"{self.machine_type} takes {' or '.join(map(str, allowed))} x {gpu}, "
                    f"not {self.accelerator_count}"
                )
        elif gpu_required:
            raise ValueError(f"machine type {self.machine_type} comes with GPUs: set accelerator_type")
        if self.scheduling_strategy == "FLEX_START":
            if gpu not in FLEX_START_GPUS:
                raise ValueError(
                    f"FLEX_START does not offer {gpu}; use SPOT or STANDARD, or an L4/A100/H100/H200/B200"
                )
            if self.timeout_seconds > FLEX_START_MAX_TIMEOUT_SECONDS:
                raise ValueError(
                    f"timeout_seconds {self.timeout_seconds} is over FLEX_START's 7-day limit "
                    f"({FLEX_START_MAX_TIMEOUT_SECONDS}); lower it, or use STANDARD or SPOT"
                )
        return self

    @model_validator(mode="after")
    def _batch_fits_the_devices(self) -> PipelineConfig:
        """Every GPU of every replica trains data-parallel (trainer/src/trainer/distribute.py; replica_count R:
        workerpool0 the chief + R - 1 workers, tasks/vertex.py): batch_size is the global batch, split evenly over
        accelerator_count (or the 1 CPU device) x replica_count devices. Refused here rather than when the job
        starts."""
        for model in self.models:
            try:
                check_batch(self.params[model].batch_size, self.replica_count, self.accelerator_count or 1,
                            spell=f"params.{model}.batch_size")
            except TrainerConfigError as exc:
                raise ValueError(str(exc)) from None
        return self

    @model_validator(mode="after")
    def _within_budget(self) -> PipelineConfig:
        """The worst case, every attempt running until Vertex stops it at scheduling.timeout, fits max_cost_usd."""
        budget = self.max_cost_usd
        if budget is None:
            return self
        what = describe(self.machine_type, self.accelerator_type, self.accelerator_count, self.region,
                        self.replica_count)
        try:
            hourly = self.hourly_usd()
        except UnknownPrice as exc:
            raise ValueError(f"max_cost_usd {budget:g}: cannot estimate {what} ({self.scheduling_strategy}): {exc}"
                             ) from None  # fmt: skip
        attempts = 1 + self.max_infra_retries
        worst = worst_case_usd(hourly, self.timeout_seconds, attempts)
        if worst > budget:
            raise ValueError(
                f"max_cost_usd {budget:g}: one job may cost up to ${worst:.2f} ({what} at ${hourly:.4f}/h x "
                f"{self.timeout_seconds / 3600:g} h x {attempts} attempts); raise max_cost_usd, or lower "
                "timeout_seconds or max_infra_retries"
            )
        return self

    @model_validator(mode="after")
    def _sweep_trials_valid(self) -> PipelineConfig:
        """Every trial's params pass the trainer's validation now, not when its job starts."""
        if self.sweep is not None:
            if self.sweep.model not in self.models:
                raise ValueError(f"sweep.model {self.sweep.model} is not in models ({', '.join(self.models)}); "
                                 "add it to models")
            for trial in self.sweep_trials():  # a swept batch_size must fit the devices too (_batch_fits_the_devices)
                try:
                    check_batch(trial.params["batch_size"], self.replica_count, self.accelerator_count or 1,
                                spell=f"sweep trial {trial.trial_id} batch_size")
                except TrainerConfigError as exc:
                    raise ValueError(str(exc)) from None
        return self

    def sweep_trials(self) -> list[Trial]:
        """The sweep's trials over this config's params of the swept model ([] without a sweep)."""
        if self.sweep is None:
            return []
        return self.sweep.expand(self.params[self.sweep.model].model_dump())

    # --- derived names (pure) ---------------------------------------------------------------------------------
    @property
    def base_uri(self) -> str:
        return f"gs://{self.bucket}/{self.prefix.strip('/')}"

    def hourly_usd(self) -> float:
        """One job's list price per hour, every replica counted (each is a machine with its own GPUs, billed on its
        own: tasks/pricing.py); UnknownPrice when it has none."""
        return self.replica_count * hourly_usd(self.machine_type, self.accelerator_type, self.accelerator_count,
                                               self.region, self.scheduling_strategy)

    @property
    def image_uri(self) -> str:
        """The image every job runs in: container_image_uri, or finsent's own image for this checkout."""
        return self.container_image_uri or default_image_uri(self.project, self.region)


def parse_config(raw: dict | PipelineConfig) -> PipelineConfig:
    """Validate raw settings, turning pydantic's report into one `ConfigError` line per problem."""
    from pydantic import ValidationError

    from tasks.errors import ConfigError

    if isinstance(raw, PipelineConfig):
        return raw
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(part) for part in err["loc"])
            message = err["msg"].removeprefix("Value error, ")
            # a message that already names its field (e.g. "sweep.grid.lr: ...") is not prefixed twice
            problems.append(f"{where}: {message}" if where and not message.startswith(where) else message)
        raise ConfigError("invalid finsent config: " + "; ".join(problems)) from None
