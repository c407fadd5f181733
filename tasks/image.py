"""finsent's training image: the files it is built from, its tag, and where the flow expects it.

Vertex offers no prebuilt TensorFlow or PyTorch training image after 2026-10-23 (tasks/catalog.py), so the jobs
run in our own image (a CustomJob `containerSpec`), built from trainer/container/: the Dockerfile, the exact pins
(requirements.lock, made by `make lock`) and the entrypoint that installs each run's trainer sdist
(run_package.py). The tag is a digest of those three files: an image built from other files has another tag, so a
job never runs on dependencies other than the ones this checkout tested. Pure apart from reading those files.

    python -m tasks.image PROJECT REGION     # prints the image URI `make image` pushes and the flow uses
"""

from __future__ import annotations

import functools
import hashlib
import sys
from pathlib import Path

CONTAINER_DIR = Path(__file__).resolve().parent.parent / "trainer" / "container"
IMAGE_FILES = ("Dockerfile", "requirements.lock", "run_package.py")
IMAGE_NAME = "finsent-trainer"
#: The Artifact Registry (Docker) repository the image is pushed to, in the project and region of the jobs.
REPOSITORY = "finsent"
TAG_HEX = 12
#: The job's containerSpec.env names the entrypoint reads (trainer/container/run_package.py).
PACKAGE_URIS_ENV = "FINSENT_PACKAGE_URIS"
PYTHON_MODULE_ENV = "FINSENT_PYTHON_MODULE"


@functools.cache
def image_tag() -> str:
    """sha256 over the image's files, first TAG_HEX hex digits."""
    digest = hashlib.sha256()
    for name in IMAGE_FILES:
        digest.update(name.encode() + b"\0" + (CONTAINER_DIR / name).read_bytes() + b"\0")
    return digest.hexdigest()[:TAG_HEX]


def default_image_uri(project: str, region: str) -> str:
    """Artifact Registry URI of this checkout's image: REGION-docker.pkg.dev/PROJECT/finsent/finsent-trainer:TAG."""
    return f"{region}-docker.pkg.dev/{project}/{REPOSITORY}/{IMAGE_NAME}:{image_tag()}"


def is_finsent_image(image_uri: str) -> bool:
    """Whether `image_uri` names finsent's image (any registry, project or tag)."""
    return image_uri.rsplit("/", 1)[-1].split(":", 1)[0].split("@", 1)[0] == IMAGE_NAME


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: python -m tasks.image PROJECT REGION")
    print(default_image_uri(sys.argv[1], sys.argv[2]))
