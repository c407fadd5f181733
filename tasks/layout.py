"""The bucket layout: the one place that spells the path of every object finsent writes or reads.

Inputs are content-addressed (an unchanged input has the same name, so it is never uploaded twice); a run's outputs
go under its run label; two small JSON documents record what was trained and which model is the champion.
`BucketLayout.tree()` draws the result (docs/design.md shows it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from tasks.run_identity import run_label
from trainer.progress import PROGRESS_FILE

if TYPE_CHECKING:
    from tasks.config import PipelineConfig


@dataclass(frozen=True)
class BucketLayout:
    """Object URIs under `gs://<bucket>/<prefix>/`."""

    bucket: str
    prefix: str = ""

    @classmethod
    def of(cls, cfg: PipelineConfig) -> BucketLayout:
        return cls(cfg.bucket, cfg.prefix)

    @property
    def root(self) -> str:
        """gs://bucket/prefix without a trailing slash (gs://bucket when the prefix is empty)."""
        prefix = self.prefix.strip("/")
        return f"gs://{self.bucket}/{prefix}" if prefix else f"gs://{self.bucket}"

    def _uri(self, *parts: str) -> str:
        return "/".join((self.root, *parts))

    # --- inputs (content-addressed) ---------------------------------------------------------------------------
    def dataset_dir(self, fingerprint: str) -> str:
        """The prepared data set's folder: the split files and manifest.json (what the trainer's data_uri names)."""
        return self._uri("data", fingerprint)

    def dataset_file(self, fingerprint: str, filename: str) -> str:
        return f"{self.dataset_dir(fingerprint)}/{filename}"

    def package(self, sha256: str, filename: str) -> str:
        """The trainer sdist, under the first 16 hex digits of its sha256."""
        return self._uri("packages", sha256[:16], filename)

    # --- outputs of a run -------------------------------------------------------------------------------------
    def run_output(self, run_key: str, model: str) -> str:
        """One model's job base output directory; Vertex puts `model/` and `checkpoints/` under it."""
        return self._run_output(run_label(run_key), model)

    def trial_output(self, run_key: str, model: str, trial: str) -> str:
        """One sweep trial's job base output directory (tasks/sweep.py), under the model's folder."""
        return self._trial_output(run_label(run_key), model, trial)

    def _run_output(self, run_label: str, model: str) -> str:
        return self._uri("runs", run_label, model)

    def _trial_output(self, run_label: str, model: str, trial: str) -> str:
        return f"{self._run_output(run_label, model)}/trials/{trial}"

    @staticmethod
    def model_dir(output_uri: str) -> str:
        """AIP_MODEL_DIR of a job whose base output directory is `output_uri` (Vertex's rule: `<base>/model/`)."""
        return f"{output_uri.rstrip('/')}/model/"

    @classmethod
    def metrics(cls, output_uri: str) -> str:
        """The trainer's metrics.json in that job's model folder."""
        return f"{cls.model_dir(output_uri)}metrics.json"

    @classmethod
    def progress(cls, output_uri: str) -> str:
        """The trainer's progress record in that job's model folder, read by the watch while the job runs."""
        return f"{cls.model_dir(output_uri)}{PROGRESS_FILE}"

    @classmethod
    def curves(cls, output_uri: str) -> str:
        """The training curves (SVG) the report draws from metrics.json's per-epoch history."""
        return f"{cls.model_dir(output_uri)}curves.svg"

    @staticmethod
    def checkpoint_dir(output_uri: str) -> str:
        """AIP_CHECKPOINT_DIR of that job: a resubmitted job resumes from here."""
        return f"{output_uri.rstrip('/')}/checkpoints/"

    # --- records ----------------------------------------------------------------------------------------------
    def trained_marker(self, inputs_key: str) -> str:
        """Written when a run on these inputs finished: an unchanged rerun is skipped."""
        return self._uri("trained", f"{inputs_key}.json")

    @property
    def champion(self) -> str:
        """The best model so far (replaced only by a better test macro-F1, generation-checked)."""
        return self._uri("champion.json")

    # --- the picture ------------------------------------------------------------------------------------------
    def tree(self) -> str:
        """The object tree, drawn from the methods above so that it cannot disagree with them."""
        from tasks.dataset.manifest import MANIFEST, SPLITS  # the data set folder's own file names

        data = self.dataset_dir("<fingerprint>")
        output = self._run_output("<run label>", "<model>")
        rows = [
            (self.root + "/", ""),
            (data + "/", "one prepared data set, named by its fingerprint"),
            *((f"{data}/{split}.csv", "") for split in SPLITS),
            (f"{data}/{MANIFEST}", "uploaded last: without it the folder is not a data set"),
            (self.package("<sha256[:16]>", "<sdist>"), "the trainer sdist, by the first 16 hex of its sha256"),
            (output + "/", "a job's base output directory (<run label>: the run key as a GCP label)"),
            (self.model_dir(output), "AIP_MODEL_DIR: the exported model"),
            (self.metrics(output), "read by the report"),
            (self.progress(output), "the job's progress, read by the watch while it runs"),
            (self.curves(output), "the training curves, drawn by the report"),
            (self.checkpoint_dir(output), "AIP_CHECKPOINT_DIR: a resubmitted job resumes here"),
            (self._trial_output("<run label>", "<model>", "<trial>") + "/", "a sweep trial's base output directory"),
            (self.trained_marker("<inputs key>"), "these inputs were trained: an unchanged rerun skips"),
            (self.champion, "the champion model"),
        ]
        base = len(self.root) + 1
        width = max(len(uri) - base for uri, _ in rows[1:]) + 2
        lines = [rows[0][0]]
        for uri, note in rows[1:]:
            name = uri[base:]
            lines.append(f"  {name:<{width}}{note}".rstrip())
        return "\n".join(lines)
