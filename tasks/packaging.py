"""Reproducible sdist of `trainer/`: the same source gives the same bytes, so the same sha256 and GCS path.

Steps: copy the sources without caches, build outputs or secret files into a temporary folder; build the sdist
with the `build` API and SOURCE_DATE_EPOCH fixed; rewrite the tar.gz with sorted members, fixed times/owners/modes
and gzip mtime 0; refuse it if the value of any secret-looking environment variable appears inside.
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

from tasks import gcs
from tasks.errors import ConfigError
from trainer.storage import atomic_write_bytes

if TYPE_CHECKING:
    from google.cloud.storage import Client as StorageClient

    from tasks.layout import BucketLayout

__all__ = ["SOURCE_DATE_EPOCH", "TrainerPackage", "build_trainer_sdist", "package_trainer", "secret_env_values", "upload_package"]

# 1980-01-01: the earliest time every archive format (zip included) can store.
SOURCE_DATE_EPOCH = 315532800
CACHE_ENV = "FINSENT_CACHE_DIR"

# Never copied into the build: caches, build outputs, test artefacts, local runs and files that hold secrets.
EXCLUDE = (
    "__pycache__", "*.pyc", "*.pyo", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".ipynb_checkpoints",
    "*.egg-info", "build", "dist", ".coverage", ".coverage.*", "htmlcov", ".tox", ".nox",
    ".git", ".venv", "venv", "wandb", "artifacts", "*.log",
    ".env", ".env.*", ".netrc", "*.pem", "*.key", "*.p12", "*credentials*.json", "*service*account*.json",
    "*-key.json", "*_key.json",
)  # fmt: skip

_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)
_MIN_SECRET_LEN = 8


@dataclass(frozen=True)
class TrainerPackage:
    """The built sdist: local path, sha256 of its bytes and its file name."""

    path: Path
    sha256: str
    filename: str


def secret_env_values(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment variables whose name looks secret (…KEY, …TOKEN, …SECRET, …PASSWORD), with usable values."""
    environ = os.environ if environ is None else environ
    return {
        name: value
        for name, value in environ.items()
        if _SECRET_NAME.search(name) and len(value) >= _MIN_SECRET_LEN and not value.startswith("/")
    }


def _ignore(directory: str, names: Sequence[str]) -> set[str]:
    return {name for name in names if any(fnmatch.fnmatch(name, pattern) for pattern in EXCLUDE)}


def _runner(cmd: Sequence[str], cwd: str | None = None, extra_environ: Mapping[str, str] | None = None) -> None:
    """Run a build-backend hook without the caller's secrets in its environment, output captured."""
    secrets = secret_env_values()
    env = {name: value for name, value in os.environ.items() if name not in secrets}
    env.update(extra_environ or {})
    env["SOURCE_DATE_EPOCH"] = str(SOURCE_DATE_EPOCH)
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ConfigError(f"building the trainer sdist failed ({tail[0]}): run `python -m build --sdist trainer` for the full log")


def _normalise(sdist: bytes) -> bytes:
    """Same files -> same bytes: sorted members, fixed mtime/owner/mode, no pax extras, gzip mtime 0, no name."""
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(sdist), mode="r:gz") as src:
        members = sorted(src.getmembers(), key=lambda m: m.name)
        with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=9) as gz:
            with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as dst:
                for member in members:
                    if not (member.isfile() or member.isdir()):
                        continue  # links and devices have no place in an sdist
                    info = tarfile.TarInfo(member.name)
                    info.type = member.type
                    info.mtime = SOURCE_DATE_EPOCH
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    executable = member.isdir() or member.mode & 0o100
                    info.mode = 0o755 if executable else 0o644
                    if member.isfile():
                        info.size = member.size
                        dst.addfile(info, src.extractfile(member))
                    else:
                        dst.addfile(info)
    return out.getvalue()


def _leaked_secrets(sdist: bytes) -> list[tuple[str, str]]:
    secrets = secret_env_values()
    if not secrets:
        return []
    leaks = []
    with tarfile.open(fileobj=io.BytesIO(sdist), mode="r:gz") as archive:
        for member in archive.getmembers():
            if not member.isfile():
                continue
            content = archive.extractfile(member).read()
            leaks += [(name, member.name) for name, value in secrets.items() if value.encode() in content]
    return leaks


def cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where built sdists are kept between runs: $FINSENT_CACHE_DIR/sdist, else $XDG_CACHE_HOME (~/.cache)/finsent/sdist."""
    environ = os.environ if environ is None else environ
    if environ.get(CACHE_ENV):
        return Path(environ[CACHE_ENV]) / "sdist"
    return Path(environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "finsent" / "sdist"


def source_digest(trainer_dir: Path) -> str:
    """sha256 of everything a build reads: each file the build copies (its path, executable bit and bytes), the build
    backend and frontend versions, the Python, and this module (its normalisation). Same digest -> same sdist bytes,
    so a build is done once per change of any of these."""
    from importlib.metadata import version

    digest = hashlib.sha256()
    for root, dirs, files in os.walk(trainer_dir):
        dirs[:] = sorted(set(dirs) - _ignore(root, dirs))
        for name in sorted(set(files) - _ignore(root, files)):
            path = Path(root, name)
            digest.update(f"{path.relative_to(trainer_dir).as_posix()}\0{os.access(path, os.X_OK)}\0".encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    tools = f"setuptools {version('setuptools')} build {version('build')} python {sys.version_info[:2]}"
    digest.update(tools.encode() + hashlib.sha256(Path(__file__).read_bytes()).digest())
    return digest.hexdigest()


def _build(trainer_dir: Path) -> tuple[str, bytes]:
    """(file name, normalised bytes) of a fresh sdist build of `trainer_dir`."""
    import build

    with tempfile.TemporaryDirectory(prefix="finsent-sdist-") as tmp:
        source = Path(tmp) / "src"
        shutil.copytree(trainer_dir, source, ignore=_ignore)
        builder = build.ProjectBuilder(source, python_executable=sys.executable, runner=_runner)
        try:
            built = Path(builder.build("sdist", Path(tmp) / "dist"))
        except build.BuildBackendException as exc:
            raise ConfigError(f"building the trainer sdist failed ({exc}): run `python -m build --sdist {trainer_dir}` for the full log") from None
        return built.name, _normalise(built.read_bytes())


def _cached_build(trainer_dir: Path, cache: Path | None) -> tuple[str, bytes]:
    """The sdist of `trainer_dir` from `cache` (one folder per source digest holding the sdist), else built and kept
    there. A cache entry that cannot be read is rebuilt; a cache that cannot be written only costs the next build."""
    if cache is None:
        return _build(trainer_dir)
    entry = cache / source_digest(trainer_dir)
    found = sorted(entry.glob("*.tar.gz")) if entry.is_dir() else []
    if len(found) == 1:
        try:
            data = found[0].read_bytes()
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
                archive.getmembers()  # a whole archive, not a torn file
            return found[0].name, data
        except (OSError, tarfile.TarError, EOFError):
            pass
    name, data = _build(trainer_dir)
    try:
        entry.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(entry / name, data)
    except OSError:
        pass
    return name, data


def build_trainer_sdist(trainer_dir: Path, out_dir: Path, cache: Path | None = None) -> TrainerPackage:
    """Build a byte-reproducible sdist of `trainer_dir` into `out_dir`, or take it from `cache` when the same sources
    were built before (`source_digest`).

    Args:
        trainer_dir: Path. The trainer project (pyproject.toml, requirements.txt, src/).
        out_dir: Path. Where the .tar.gz goes (created if missing).
        cache: Path or None. Built sdists by source digest (`cache_dir()` in the flow); None: always build.

    Returns:
        TrainerPackage. Path, sha256 and file name of the sdist.

    Raises:
        ConfigError: no pyproject.toml, the build failed, or a secret from the environment ended up inside (checked
            on every run, a cached sdist included: the secrets are this run's environment's).
    """
    trainer_dir = Path(trainer_dir)
    if not (trainer_dir / "pyproject.toml").is_file():
        raise ConfigError(f"{trainer_dir} has no pyproject.toml: point the packaging task at the trainer project")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name, data = _cached_build(trainer_dir, cache)

    leaks = _leaked_secrets(data)
    if leaks:
        names = ", ".join(sorted({f"${name} in {member}" for name, member in leaks}))
        raise ConfigError(f"refusing to ship the trainer sdist: it contains the value of {names}; remove it from {trainer_dir}")
    sha256 = hashlib.sha256(data).hexdigest()
    target = out_dir / name
    atomic_write_bytes(target, data)
    return TrainerPackage(path=target, sha256=sha256, filename=target.name)


def upload_package(storage: StorageClient, layout: BucketLayout, package: TrainerPackage) -> tuple[str, int]:
    """Upload the sdist to its content-addressed name; returns (object URI, bytes uploaded: 0 when it was there)."""
    uri = layout.package(package.sha256, package.filename)
    uploaded = gcs.upload_if_absent(storage, package.path, uri)
    return uri, package.path.stat().st_size if uploaded else 0


# --- Prefect task -----------------------------------------------------------------------------------------------
from prefect import get_run_logger, task  # noqa: E402  (the functions above need no Prefect)
from prefect.cache_policies import NO_CACHE  # noqa: E402


@task(name="package-trainer", cache_policy=NO_CACHE)
def package_trainer(trainer_dir: Path, out_dir: Path) -> TrainerPackage:
    """Build the trainer sdist reproducibly, once per source change (no retries: a failed build fails the same way
    again)."""
    package = build_trainer_sdist(Path(trainer_dir), Path(out_dir), cache=cache_dir())
    get_run_logger().info("Trainer sdist %s sha256 %s", package.filename, package.sha256)
    return package
