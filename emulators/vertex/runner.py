"""How a CustomJob's replicas run. `SubprocessRunner` runs them for real; `InstantRunner` fakes them.

What SubprocessRunner emulates and what it does not:
- It downloads `packageUris` from the GCS emulator (STORAGE_EMULATOR_HOST, anonymous credentials), makes a venv
  from the emulator's own interpreter that also sees the host's site-packages, and installs the sdists with
  `pip install --no-deps --no-build-isolation --no-index --ignore-installed`: fast, and it reuses what the host
  already has. The executor image (`executorImageUri`) is NOT emulated and dependency resolution is skipped: a
  requirement missing on the host fails at import time in the job, not at install time.
- Each replica is `python -m <pythonModule> <args>` in its own process group (session), so cancel and
  preemption kill the whole tree. `containerSpec` pools run `command + args` on the host; the image is ignored.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import threading
import time
import venv
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from trainer.errors import StorageError
from trainer.storage import parse_gs_uri

from emulators._proc import kill_group
from emulators.vertex.errors import JobSetupError
from emulators.vertex.spec import active_pools

LogFn = Callable[[str], None]


def proc_start_ticks(pid: int) -> int | None:
    """Start time of `pid` in clock ticks since boot (field 22 of /proc/PID/stat), or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


class ReplicaProcess(Protocol):
    pid: int | None

    def poll(self) -> int | None: ...

    def kill(self, grace: float) -> int: ...


@dataclass
class Prepared:
    """What `prepare` made for a job: the interpreter replicas run with."""

    python: str
    workdir: Path


class Runner(Protocol):
    def prepare(self, job: dict, workdir: Path, log: LogFn) -> Prepared: ...

    def start(self, prepared: Prepared, pool: dict, env: dict[str, str], log_path: Path) -> ReplicaProcess: ...


class _Subprocess:
    """A replica process; the leader of its own process group."""

    def __init__(self, popen: subprocess.Popen) -> None:
        self.popen = popen
        self.pid = popen.pid

    def poll(self) -> int | None:
        code = self.popen.poll()
        if code is not None and code < 0:
            return 128 - code  # killed by a signal: report it the way a container runtime does (137 = SIGKILL)
        return code

    def kill(self, grace: float) -> int:
        kill_group(self.popen, grace)
        return self.poll() or 0


class SubprocessRunner:
    """Run replicas as real local processes. See the module docstring for what is (not) emulated.

    Args:
        data_dir: where cached venvs live (`venvs/<sha256 of the sdists>`).
        cache_venvs: reuse one venv per distinct set of package bytes (same bytes -> same install).
    """

    def __init__(self, data_dir: Path, cache_venvs: bool = True) -> None:
        self.data_dir = Path(data_dir)
        self.cache_venvs = cache_venvs
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def prepare(self, job: dict, workdir: Path, log: LogFn) -> Prepared:
        uris: list[str] = []
        for _, pool in active_pools(job):
            for uri in (pool.get("pythonPackageSpec") or {}).get("packageUris") or []:
                if uri not in uris:
                    uris.append(uri)
        if not uris:
            return Prepared(python=sys.executable, workdir=workdir)
        packages_dir = workdir / "packages"
        packages_dir.mkdir(parents=True, exist_ok=True)
        paths = [self._download(uri, packages_dir, i, log) for i, uri in enumerate(uris)]
        digest = hashlib.sha256()
        for path in paths:
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        key = digest.hexdigest()[:32]
        env_dir = self.data_dir / "venvs" / key if self.cache_venvs else workdir / "venv"
        with self._lock_for(str(env_dir)):
            if not (env_dir / ".ready").exists():
                self._make_venv(env_dir, paths, log)
            else:
                log(f"Reusing environment {env_dir} (same package bytes)")
        return Prepared(python=str(env_dir / "bin" / "python"), workdir=workdir)

    def _lock_for(self, key: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(key, threading.Lock())

    def _download(self, uri: str, dest_dir: Path, index: int, log: LogFn) -> Path:
        try:
            bucket_name, blob_name = parse_gs_uri(uri)
        except StorageError:
            raise JobSetupError(f"Package URI {uri} is not a gs:// URI.") from None
        dest = dest_dir / f"{index}-{Path(blob_name).name}"
        log(f"Downloading {uri}")
        try:
            from google.auth.credentials import AnonymousCredentials
            from google.cloud import storage

            client = storage.Client(credentials=AnonymousCredentials(), project="emulator")
            client.bucket(bucket_name).blob(blob_name).download_to_filename(str(dest))
        except Exception as exc:  # NotFound, connection refused, ...: the job fails like a bad package URI on Vertex
            dest.unlink(missing_ok=True)
            raise JobSetupError(f"Failed to download package {uri} from {os.environ.get('STORAGE_EMULATOR_HOST', 'GCS')}: "
                                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
        return dest

    def _make_venv(self, env_dir: Path, packages: list[Path], log: LogFn) -> None:
        # A venv made from a venv does not see the outer venv's packages (--system-site-packages means the *base*
        # interpreter's), so a .pth line adds the emulator's own site-packages, .pth files included. The job's own
        # site-packages comes first on sys.path, so the installed sdist shadows any host copy.
        if env_dir.exists():
            shutil.rmtree(env_dir)
        log(f"Creating environment {env_dir} (host packages visible; executor image not emulated)")
        venv.EnvBuilder(system_site_packages=True, with_pip=False, symlinks=True).create(env_dir)
        python = env_dir / "bin" / "python"
        purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                 capture_output=True, text=True, check=True).stdout.strip()
        host_dirs = [p for p in dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])]
        lines = "".join(f"import site; site.addsitedir({d!r})\n" for d in host_dirs)
        Path(purelib, "_emulator_host_site_packages.pth").write_text(lines)
        cmd = [str(python), "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
               "--ignore-installed", "--disable-pip-version-check", "--no-input", "--progress-bar", "off",
               *map(str, packages)]
        log("Running " + " ".join(cmd))
        result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PIP_NO_CACHE_DIR": "1"})
        for line in (result.stdout + result.stderr).splitlines():
            log(f"pip: {line}")
        if result.returncode != 0:
            shutil.rmtree(env_dir, ignore_errors=True)
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-5:])
            raise JobSetupError(f"Installing the training package failed (pip exit status {result.returncode}):\n{tail}")
        (env_dir / ".ready").write_text("ok\n")

    def start(self, prepared: Prepared, pool: dict, env: dict[str, str], log_path: Path) -> ReplicaProcess:
        python_spec = pool.get("pythonPackageSpec")
        if python_spec:
            cmd = [prepared.python, "-m", python_spec["pythonModule"], *python_spec.get("args", [])]
        else:
            container = pool["containerSpec"]
            cmd = [*container.get("command", []), *container.get("args", [])]
            if not cmd:
                raise JobSetupError("containerSpec without command: container images are not emulated.")
        cwd = log_path.parent / log_path.stem
        cwd.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log_file:
            popen = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log_file,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        return _Subprocess(popen)


class _FakeReplica:
    def __init__(self, seconds: float, exit_code: int) -> None:
        self.pid = None
        self._end = time.monotonic() + seconds
        self._exit_code = exit_code
        self._killed: int | None = None

    def poll(self) -> int | None:
        if self._killed is not None:
            return self._killed
        return self._exit_code if time.monotonic() >= self._end else None

    def kill(self, grace: float) -> int:
        self._killed = 143
        return 143


class InstantRunner:
    """No processes: a replica "runs" EMULATOR_RUN_SECONDS (spec env, default 0) and exits EMULATOR_EXIT_CODE."""

    def prepare(self, job: dict, workdir: Path, log: LogFn) -> Prepared:
        return Prepared(python=sys.executable, workdir=workdir)

    def start(self, prepared: Prepared, pool: dict, env: dict[str, str], log_path: Path) -> ReplicaProcess:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a") as log:
            log.write("InstantRunner: no process started\n")
        return _FakeReplica(float(env.get("EMULATOR_RUN_SECONDS", "0")), int(env.get("EMULATOR_EXIT_CODE", "0")))
