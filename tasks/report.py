"""Results: metrics.json -> Prefect artifacts, and the champion/challenger pointer in the bucket.

The champion is one JSON object (`BucketLayout.champion`). A model replaces it only when its test macro-F1 beats
the champion's; the write is conditional on the object's generation, so two runs finishing together cannot both
promote over the same champion.
"""

from __future__ import annotations

from datetime import datetime, timezone

from typing import TYPE_CHECKING

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from tasks import gcs, pricing
from tasks.config import PipelineConfig
from tasks.curves import curves_markdown, curves_svg
from tasks.errors import StorageError
from tasks.layout import BucketLayout
from tasks.vertex import JobOutcome

if TYPE_CHECKING:
    from google.cloud.storage import Client as StorageClient

SUMMARY_ARTIFACT = "finsent-summary"


# --- pure ---------------------------------------------------------------------------------------------------------
def results_rows(metrics_by_model: dict[str, dict], costs: dict[str, float | None] | None = None) -> list[dict]:
    """One row per model; `cost_usd` from `costs` (None: not priced, see `job_cost`)."""
    rows = []
    for model, metrics in sorted(metrics_by_model.items()):
        train = metrics.get("train", {})
        rows.append(
            {
                "model": model,
                "test_accuracy": round(metrics["test"]["accuracy"], 4),
                "test_macro_f1": round(metrics["test"]["macro_f1"], 4),
                "validation_macro_f1": round(metrics["validation"]["macro_f1"], 4),
                "epochs": train.get("epochs_run"),
                "train_seconds": round(train.get("seconds", 0.0), 1),
                "samples_per_second": round(train.get("samples_per_second", 0.0), 1),
                "cost_usd": (costs or {}).get(model),
            }
        )
    return rows


def epoch_rows(metrics: dict) -> list[dict]:
    """The per-epoch table of one model, from metrics.json's train.history (empty for an older trainer)."""
    return [
        {"epoch": e.get("epoch"), "train_loss": _round(e.get("loss")), "val_accuracy": _round(e.get("val_accuracy")),
         "val_macro_f1": _round(e.get("val_macro_f1")), "seconds": _round(e.get("seconds"), 1)}
        for e in metrics.get("train", {}).get("history") or []
    ]


def _round(value, digits: int = 4):
    return None if value is None else round(float(value), digits)


def job_cost(cfg: PipelineConfig, running_seconds: float) -> tuple[float | None, str]:
    """(USD, how it was priced) for a job that ran `running_seconds` (all attempts, Vertex's RUNNING time) at the
    config's list price (tasks/pricing.py); (None, "not priced (why)") where the table has no price: never a guess."""
    try:
        hourly = cfg.hourly_usd()
    except pricing.UnknownPrice as exc:
        return None, f"not priced (no sourced price for {'; '.join(exc.missing) or exc} in {pricing.THIS_FILE})"
    cost = pricing.job_cost_usd(hourly, running_seconds)
    return round(cost, 6), f"${cost:.4f} ({running_seconds:.0f}s RUNNING at ${hourly:.4f}/h, list price {pricing.CHECKED})"


def cost_markdown(costs: dict[str, tuple[float | None, str]]) -> tuple[str, float | None]:
    """The summary's cost section and the run's total (None unless every job is priced)."""
    priced = [usd for usd, _ in costs.values() if usd is not None]
    total = round(sum(priced), 6) if len(priced) == len(costs) else None
    lines = ["### Cost (Vertex RUNNING time x list price)", ""]
    lines += [f"- **{model}**: {note}" for model, (_, note) in sorted(costs.items())]
    if total is not None:
        lines.append(f"- **total**: ${total:.4f}")
    else:
        lines.append(f"- **total**: not priced ({len(costs) - len(priced)} of {len(costs)} job(s) have no price)")
    return "\n".join(lines), total


def confusion_markdown(model: str, metrics: dict) -> str:
    labels = metrics["labels"]
    matrix = metrics["test"]["confusion_matrix"]
    lines = [
        f"### {model}: test confusion matrix (rows: true, columns: predicted)",
        "",
        "| true \\ predicted | " + " | ".join(labels) + " |",
        "|---" * (len(labels) + 1) + "|",
    ]
    lines += [f"| **{label}** | " + " | ".join(str(n) for n in row) + " |" for label, row in zip(labels, matrix)]
    per_class = metrics["test"].get("per_class", {})
    if per_class:
        lines += ["", "| class | precision | recall | f1 | support |", "|---|---|---|---|---|"]
        lines += [
            f"| {label} | {c['precision']:.3f} | {c['recall']:.3f} | {c['f1']:.3f} | {c['support']} |"
            for label, c in per_class.items()
        ]
    return "\n".join(lines)


def best_model(metrics_by_model: dict[str, dict]) -> str:
    return max(metrics_by_model, key=lambda model: metrics_by_model[model]["test"]["macro_f1"])


def should_promote(candidate_macro_f1: float, champion: dict | None) -> bool:
    """Challenger wins only by beating the champion's test macro-F1 (ties keep the champion)."""
    return champion is None or candidate_macro_f1 > float(champion["test_macro_f1"])


def links_markdown(cfg: PipelineConfig, outcomes: dict[str, JobOutcome], metrics_by_model: dict[str, dict]) -> str:
    lines = ["### Links", ""]
    for model, outcome in sorted(outcomes.items()):
        lines.append(f"- **{model}** Vertex job: [{outcome.job_name.rsplit('/', 1)[-1]}]({outcome.console_url})")
        lines.append(f"  - model: `{BucketLayout.model_dir(outcome.output_uri)}`")
        wandb_url = metrics_by_model.get(model, {}).get("wandb", {}).get("url")
        lines.append(f"  - wandb: {wandb_url}" if wandb_url else f"  - wandb: offline run (project `{cfg.wandb.project}`)")
    return "\n".join(lines)


# --- I/O ----------------------------------------------------------------------------------------------------------
def promote_if_better(storage: StorageClient, layout: BucketLayout, record: dict) -> tuple[bool, dict | None]:
    """Write `record` as champion if it beats the current one; returns (promoted, champion before)."""
    uri = layout.champion
    for _ in range(5):
        champion, generation = gcs.read_json_versioned(storage, uri)
        if not should_promote(record["test_macro_f1"], champion):
            return False, champion
        try:
            gcs.write_json(storage, uri, record, if_generation_match=generation)
            return True, champion
        except gcs.GenerationMismatchError:
            continue  # another run promoted meanwhile: compare against the new champion
    raise StorageError(f"could not update {uri}: it kept changing under us; run again")


@task(name="report-results", cache_policy=NO_CACHE)
def report_results(
    cfg: PipelineConfig,
    storage: StorageClient,
    layout: BucketLayout,
    outcomes: dict[str, JobOutcome],
    *,
    inputs_key: str,
    data_fingerprint: str,
    trainer_sha256: str,
    run_key: str,
) -> dict:
    """Publish metrics, confusion matrices and links as artifacts; promote the best model if it beats the champion.

    `storage` is the flow run's client (NO_CACHE: a client cannot be hashed into a cache key).
    """
    metrics_by_model = {}
    for model, outcome in outcomes.items():
        uri = layout.metrics(outcome.output_uri)
        metrics = gcs.read_json(storage, uri)
        if metrics is None:
            raise StorageError(f"{model}: the job succeeded but {uri} is missing; see {outcome.console_url}")
        metrics_by_model[model] = metrics
    costs = {model: job_cost(cfg, outcome.running_seconds) for model, outcome in outcomes.items()}
    rows = results_rows(metrics_by_model, {model: usd for model, (usd, _) in costs.items()})
    create_table_artifact(key="finsent-metrics", table=rows, description="Test metrics per model (cost_usd: "
                          "Vertex RUNNING time x list price; empty: not priced, see the summary)")
    for model, metrics in metrics_by_model.items():
        create_markdown_artifact(key=f"finsent-confusion-{model}", markdown=confusion_markdown(model, metrics))
        publish_curves(storage, model, metrics, outcomes[model].output_uri)

    winner = best_model(metrics_by_model)
    record = {
        "model": winner,
        "model_uri": layout.model_dir(outcomes[winner].output_uri),
        "test_macro_f1": metrics_by_model[winner]["test"]["macro_f1"],
        "test_accuracy": metrics_by_model[winner]["test"]["accuracy"],
        "inputs_key": inputs_key,
        "data_fingerprint": data_fingerprint,
        "trainer_sha256": trainer_sha256,
        "run_key": run_key,
        "vertex_job": outcomes[winner].job_name,
        "promoted_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    promoted, previous = promote_if_better(storage, layout, record)
    verdict = (
        f"**{winner}** (test macro-F1 {record['test_macro_f1']:.4f}) is the new champion"
        if promoted
        else f"champion kept: {previous['model']} at {float(previous['test_macro_f1']):.4f} macro-F1 "
        f"beats or ties {winner} at {record['test_macro_f1']:.4f}"
    )
    cost_section, total_usd = cost_markdown(costs)
    create_markdown_artifact(
        key=SUMMARY_ARTIFACT, markdown=f"## finsent run {run_key}\n\n{verdict}\n\n{cost_section}\n\n"
        f"{links_markdown(cfg, outcomes, metrics_by_model)}"
    )
    cost = {"per_model": {model: {"usd": usd, "note": note, "running_seconds": round(outcomes[model].running_seconds, 1)}
                          for model, (usd, note) in costs.items()}, "total_usd": total_usd}
    return {"metrics": rows, "champion_promoted": promoted, "winner": winner, "verdict": verdict, "cost": cost}


def publish_curves(storage: StorageClient, model: str, metrics: dict, output_uri: str) -> None:
    """The model's per-epoch table artifact and its curves: curves.svg beside the model, and a markdown artifact
    showing the chart and its sparklines. The SVG file is a view: a failed upload is a warning, not a failed run."""
    history = metrics.get("train", {}).get("history") or []
    create_table_artifact(key=f"finsent-epochs-{model}", table=epoch_rows(metrics),
                          description=f"{model}: per-epoch train loss and validation figures")
    svg_uri = BucketLayout.curves(output_uri)
    svg = curves_svg(history, f"{model}: training curves") if history else None
    if svg:
        try:
            gcs.write_bytes(storage, svg_uri, svg.encode(), content_type="image/svg+xml")
        except Exception as exc:  # noqa: BLE001 - the chart is also in the artifact below
            get_run_logger().warning(f"[{model}] could not upload {svg_uri} ({type(exc).__name__}: {exc})")
            svg_uri = None
    create_markdown_artifact(key=f"finsent-curves-{model}", markdown=curves_markdown(model, history, svg_uri, svg=svg))


@task(name="report-skipped")
def report_skipped(previous: dict, *, data_fingerprint: str, trainer_sha256: str) -> str:
    """Say in the run's summary why nothing was trained: an earlier run trained these very inputs."""
    message = (
        f"Skipped: data {data_fingerprint[:12]}, trainer {trainer_sha256[:12]} and settings are unchanged "
        f"since run {previous['run_key']} (pass force=true to train anyway)."
    )
    get_run_logger().info(message)
    create_markdown_artifact(key=SUMMARY_ARTIFACT, markdown=f"## finsent\n\n{message}")
    return message
