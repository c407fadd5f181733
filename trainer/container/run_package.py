"""Entrypoint of finsent's training image: install the job's Python packages, then run its module.

What Vertex's prebuilt executor images do for a `pythonPackageSpec` (download `packageUris`, pip-install them, run
`python -m <pythonModule> <args>`), done in our own image because no prebuilt TensorFlow or PyTorch training image
is available any more (tasks/catalog.py). The job's `containerSpec` configures it:

  env FINSENT_PACKAGE_URIS    gs:// URIs of sdists, comma-separated (the flow's content-addressed trainer sdist)
  env FINSENT_PYTHON_MODULE   the module to run (default: trainer.task)
  args                        the module's arguments

The image's dependencies are complete and exact (requirements.lock), so the packages install with --no-deps and
--no-index: a job start never resolves or downloads a version. The module replaces this process (exec), so the
SIGTERM Vertex sends on preemption reaches the trainer itself. Standard library + google-cloud-storage only: the
trainer is not installed yet when this runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

DEFAULT_MODULE = "trainer.task"


def _storage_client():
    from google.cloud import storage

    if os.environ.get("STORAGE_EMULATOR_HOST"):  # fake-gcs-server (the offline emulators): no credentials
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(credentials=AnonymousCredentials(), project="emulator")
    return storage.Client()


def download(uris: list[str], dest: Path) -> list[Path]:
    """Each gs:// URI to a file in `dest`; the first error names the URI."""
    client, paths = _storage_client(), []
    for index, uri in enumerate(uris):
        if not uri.startswith("gs://") or "/" not in uri[5:]:
            raise SystemExit(f"finsent image: FINSENT_PACKAGE_URIS entry {uri!r} is not gs://BUCKET/OBJECT")
        bucket, _, name = uri[5:].partition("/")
        path = dest / f"{index}-{Path(name).name}"
        print(f"finsent image: downloading {uri}", flush=True)
        client.bucket(bucket).blob(name).download_to_filename(str(path))
        paths.append(path)
    return paths


def install(packages: list[Path], target: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--no-build-isolation",
           "--disable-pip-version-check", "--no-input", "--progress-bar", "off", "--quiet", "--target", str(target),
           *map(str, packages)]
    print("finsent image: " + " ".join(cmd[1:]), flush=True)
    result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0:
        sys.stdout.write(result.stdout)
        raise SystemExit(f"finsent image: installing {', '.join(p.name for p in packages)} failed "
                         f"(pip exit status {result.returncode})")


def main(argv: list[str]) -> None:
    uris = [uri.strip() for uri in os.environ.get("FINSENT_PACKAGE_URIS", "").split(",") if uri.strip()]
    module = os.environ.get("FINSENT_PYTHON_MODULE", DEFAULT_MODULE)
    env = dict(os.environ)
    if uris:
        work = Path(tempfile.mkdtemp(prefix="finsent-packages-"))
        target = work / "site"
        install(download(uris, work), target)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(target), env.get("PYTHONPATH")]))
    os.execve(sys.executable, [sys.executable, "-m", module, *argv], env)


if __name__ == "__main__":
    main(sys.argv[1:])
