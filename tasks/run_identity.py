"""What names one training run: the run key as a GCP label, shared by its Vertex jobs and its output folder.

Pure and import-light, so the bucket layout and the Vertex runner can both use it. A rerun with the same run key
finds its jobs by these labels (create has no request id) and resumes in the same output folder.
"""

from __future__ import annotations

import hashlib

LABEL_RUN = "finsent-run"
LABEL_MODEL = "finsent-model"
LABEL_ATTEMPT = "finsent-attempt"
# A sweep trial's id (tasks/sweep.py, e.g. "t0-f95009"): each trial of a model is its own job, found by it.
LABEL_TRIAL = "finsent-trial"
# The Prefect flow run that created (and watches) the job: how the orphan reaper finds whether anyone still does.
# Not part of the job's identity: a rerun with the same run key (a new flow run) reattaches to the same job.
LABEL_FLOW_RUN = "finsent-flow-run"
IDENTITY_LABELS = (LABEL_RUN, LABEL_MODEL, LABEL_ATTEMPT, LABEL_TRIAL)

MAX_LABEL_LENGTH = 63
DIGEST_HEX = 10  # 40 bits of sha256: two run keys share a label with odds of about 1 in 10^12


def label_value(text: str) -> str:
    """GCP label values: lowercase letters, digits, '-' and '_', at most 63 characters. Lossy (case, punctuation,
    length), so it only ever names something together with a digest of the exact text, or a value already valid."""
    cleaned = "".join(c if c.isalnum() or c in "-_" else "-" for c in text.lower())
    return cleaned[:MAX_LABEL_LENGTH]


def run_label(run_key: str) -> str:
    """The run's label value: its jobs carry it and its output folder is named by it. Readable prefix plus a
    digest of the exact run key, so "Nightly/A" and "nightly-a" (one `label_value`) are two runs."""
    digest = hashlib.sha256(run_key.encode()).hexdigest()[:DIGEST_HEX]
    readable = label_value(run_key)[: MAX_LABEL_LENGTH - DIGEST_HEX - 1]
    return f"{readable}-{digest}" if readable else digest


def run_labels(run_key: str) -> dict[str, str]:
    """The label every job of one training run carries (what a rerun reattaches by and a cancel selects by)."""
    return {LABEL_RUN: run_label(run_key)}


def job_labels(run_key: str, model: str, attempt: int, flow_run_id: str | None = None, trial: str | None = None
               ) -> dict[str, str]:  # fmt: skip
    """A job's labels: its identity (run, model, attempt, and a sweep's trial) and, when a flow run creates it,
    that flow run."""
    labels = run_labels(run_key) | {LABEL_MODEL: model, LABEL_ATTEMPT: str(attempt)}
    if trial:
        labels[LABEL_TRIAL] = trial  # already a valid label value (tasks/sweep.py Trial.trial_id)
    if flow_run_id:
        labels[LABEL_FLOW_RUN] = label_value(flow_run_id)
    return labels


def identity(labels: dict[str, str]) -> dict[str, str]:
    """The labels that name the job (what a rerun reattaches by), without the creating flow run."""
    return {key: value for key, value in labels.items() if key in IDENTITY_LABELS}
