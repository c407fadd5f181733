"""What names one training run: the run key as a GCP label, shared by its Vertex jobs and its output folder.

Pure and import-light, so the bucket layout and the Vertex runner can both use it. A rerun with the same run key
finds its jobs by these labels (create has no request id) and resumes in the same output folder.
"""

from __future__ import annotations

LABEL_RUN = "finsent-run"
LABEL_MODEL = "finsent-model"
LABEL_ATTEMPT = "finsent-attempt"


def label_value(text: str) -> str:
    """GCP label values: lowercase letters, digits, '-' and '_', at most 63 characters."""
    cleaned = "".join(c if c.isalnum() or c in "-_" else "-" for c in text.lower())
    return cleaned[:63]


def run_label(run_key: str) -> str:
    """The run's label value: its jobs carry it and its output folder is named by it."""
    return label_value(run_key)


def run_labels(run_key: str) -> dict[str, str]:
    """The label every job of one training run carries (what a rerun reattaches by and a cancel selects by)."""
    return {LABEL_RUN: run_label(run_key)}


def job_labels(run_key: str, model: str, attempt: int) -> dict[str, str]:
    return run_labels(run_key) | {LABEL_MODEL: model, LABEL_ATTEMPT: str(attempt)}
