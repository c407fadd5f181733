"""How a CustomJob's replicas run. `SubprocessRunner` runs them for real; `InstantRunner` fakes them.

What SubprocessRunner emulates and what it does not:
- A replica is a local process in its own process group (session), so cancel and preemption kill the whole tree.
- Images are not pulled or run: a replica runs on the host's Python, which stands in for the image.
  finsent's image (`containerSpec.imageUri` named finsent-trainer, no `command`) runs its entrypoint,
  trainer/container/run_package.py, with the job's args and env: it downloads FINSENT_PACKAGE_URIS from the GCS
  emulator (STORAGE_EMULATOR_HOST) and installs them with `pip install --no-deps --no-index --target`, then runs
  FINSENT_PYTHON_MODULE. The image's pins are not emulated (the host's packages are what the job sees; the slow
  test tests/trainer/test_container_image.py runs the trainer in a venv of exactly the image's lock).
- A `pythonPackageSpec` (spec.py refuses images past their end of availability) runs through the same entrypoint,
  which does what a prebuilt executor does: packageUris -> FINSENT_PACKAGE_URIS, pythonModule -> the module.
- Any other `containerSpec` runs `command + args` on the host; one without `command` cannot run here.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from emulators._proc import kill_group
from emulators.vertex.errors import JobSetupError
from emulators.vertex.spec import active_pools
from tasks.image import CONTAINER_DIR, PACKAGE_URIS_ENV, PYTHON_MODULE_ENV, is_finsent_image

LogFn = Callable[[str], None]
#: The image's ENTRYPOINT (trainer/container/Dockerfile), run with the host's Python.
IMAGE_ENTRYPOINT = CONTAINER_DIR / "run_package.py"


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
    """Run replicas as real local processes. See the module docstring for what is (not) emulated."""

    def prepare(self, job: dict, workdir: Path, log: LogFn) -> Prepared:
        """Check every pool has a command the host can run (JobSetupError: the job fails before a replica starts)."""
        for _, pool in active_pools(job):
            replica_command(sys.executable, pool, {})
        return Prepared(python=sys.executable, workdir=workdir)

    def start(self, prepared: Prepared, pool: dict, env: dict[str, str], log_path: Path) -> ReplicaProcess:
        cmd, env = replica_command(prepared.python, pool, env)
        cwd = log_path.parent / log_path.stem
        cwd.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log_file:
            popen = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log_file,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        return _Subprocess(popen)


def replica_command(python: str, pool: dict, env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """The host command (and environment) that stands in for one replica of `pool`."""
    python_spec = pool.get("pythonPackageSpec")
    if python_spec:
        env = {**env, PACKAGE_URIS_ENV: ",".join(python_spec.get("packageUris") or []),
               PYTHON_MODULE_ENV: python_spec["pythonModule"]}
        return [python, str(IMAGE_ENTRYPOINT), *python_spec.get("args", [])], env
    container = pool["containerSpec"]
    if container.get("command"):
        return [*container["command"], *container.get("args", [])], env
    if is_finsent_image(container.get("imageUri", "")):
        return [python, str(IMAGE_ENTRYPOINT), *container.get("args", [])], env
    raise JobSetupError(f"containerSpec {container.get('imageUri')!r} without command: only finsent's image "
                        "(finsent-trainer) has an entrypoint the emulator can run.")


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
