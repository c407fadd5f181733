"""Does the trainer sdist install on a prebuilt Vertex TF image without replacing its TensorFlow?

Builds the sdist as the flow does for `tf-gpu.2-17.py310` (tensorflow-text pinned to the image's TF minor version)
and, for contrast, without the pin; asks pip (Python 3.10, dry run, PyPI reachable) which TensorFlow each one's
dependencies resolve to. The image's TF stays only if that is the image's minor version. Prints JSON; exits 1
when the pinned sdist would bring another TensorFlow.

A dry run into an empty venv only: it does not see how pip behaves with the image's TensorFlow already installed
(without the protobuf cap, pip 23 backtracked there for 20+ minutes) nor whether the trainer then runs. The slow test
tests/trainer/test_vertex_image.py installs the sdist on Python 3.10 + TF 2.17.1 for real and trains both models.

    .venv/bin/python bench/vertex_install_check.py [--python /path/to/python3.10]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tasks.config import DEFAULT_EXECUTOR_IMAGE, tf_version_of_image  # noqa: E402
from tasks.packaging import build_trainer_sdist  # noqa: E402

WATCHED = ("tensorflow", "tensorflow-text", "keras", "keras-hub", "numpy", "finsent-trainer")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default="/root/.pyenv/versions/3.10.13/bin/python", help="a Python 3.10")
    args = parser.parse_args()
    image_tf = tf_version_of_image(DEFAULT_EXECUTOR_IMAGE)
    with tempfile.TemporaryDirectory() as tmp:
        venv = Path(tmp) / "venv"
        subprocess.run([args.python, "-m", "venv", str(venv)], check=True)
        resolved = {}
        for label, tf_version in (("pinned", image_tf), ("unpinned", None)):
            package = build_trainer_sdist(ROOT / "trainer", Path(tmp) / label, tf_version=tf_version)
            resolved[label] = _resolve(venv / "bin" / "python", package.path, Path(tmp) / f"{label}.json")
    python = subprocess.run([args.python, "--version"], capture_output=True, text=True).stdout.strip()
    pinned_tf = resolved["pinned"].get("tensorflow") or ""
    result = {
        "image": DEFAULT_EXECUTOR_IMAGE,
        "image_tensorflow": image_tf,
        "python": python,
        "resolved": resolved,
        "keeps_image_tensorflow": pinned_tf.startswith(f"{image_tf}."),
    }
    print(json.dumps(result, indent=2))
    return 0 if result["keeps_image_tensorflow"] else 1


def _resolve(python: Path, sdist: Path, report: Path) -> dict[str, str | None]:
    """What `pip install SDIST` would install (dry run), for the packages that matter."""
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--dry-run", "--ignore-installed", "--report", str(report),
         str(sdist)],
        check=True,
    )  # fmt: skip
    chosen = {item["metadata"]["name"].lower(): item["metadata"]["version"] for item in json.loads(report.read_text())["install"]}
    return {name: chosen.get(name) for name in WATCHED}


if __name__ == "__main__":
    sys.exit(main())
