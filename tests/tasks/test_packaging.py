"""tasks/packaging.py: same source -> same bytes; built once per source change; the tensorflow-text pin; no
secrets inside."""

from __future__ import annotations

import io
import tarfile
import uuid
from pathlib import Path

import pytest

from tasks.errors import ConfigError
from tasks import packaging
from tasks.packaging import build_trainer_sdist, cache_dir, package_trainer
from tests.tasks.conftest import REPO
from tests.tiny_project import write_tiny_project


@pytest.fixture
def tiny_trainer(tmp_path) -> Path:
    """A minimal project shaped like trainer/ (dependencies read from requirements.txt)."""
    modules = {"__init__.py": "VALUE = 1\n", "task.py": "print('train')\n"}
    return write_tiny_project(tmp_path / "tiny", "tiny-trainer", "0.0.1", "tiny", modules, requirements="numpy>=1.23\n")


def members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as archive:
        return {m.name: archive.extractfile(m).read() for m in archive.getmembers() if m.isfile()}


def touch_caches(root: Path) -> None:
    """What a developer's checkout accumulates between two builds."""
    (root / "src" / "tiny" / "__pycache__").mkdir(exist_ok=True)
    (root / "src" / "tiny" / "__pycache__" / "task.cpython-311.pyc").write_bytes(uuid.uuid4().bytes)
    (root / "build").mkdir(exist_ok=True)
    (root / "build" / "junk.txt").write_text(uuid.uuid4().hex)
    (root / ".pytest_cache").mkdir(exist_ok=True)
    for path in root.rglob("*"):
        path.touch()  # new mtimes everywhere


class TestReproducible:
    def test_same_source_same_bytes(self, tiny_trainer, tmp_path):
        first = build_trainer_sdist(tiny_trainer, tmp_path / "a")
        touch_caches(tiny_trainer)
        second = build_trainer_sdist(tiny_trainer, tmp_path / "b")
        assert first.sha256 == second.sha256
        assert first.path.read_bytes() == second.path.read_bytes()
        assert first.filename == "tiny_trainer-0.0.1.tar.gz" and first.path.name == first.filename
        assert not any("__pycache__" in n or "/build/" in n or ".pytest_cache" in n for n in members(second.path))

    def test_changed_source_changes_hash(self, tiny_trainer, tmp_path):
        first = build_trainer_sdist(tiny_trainer, tmp_path / "a")
        (tiny_trainer / "src" / "tiny" / "task.py").write_text("print('train harder')\n")
        assert build_trainer_sdist(tiny_trainer, tmp_path / "b").sha256 != first.sha256

    def test_archive_is_normalised(self, tiny_trainer, tmp_path):
        package = build_trainer_sdist(tiny_trainer, tmp_path)
        raw = package.path.read_bytes()
        assert raw[4:8] == b"\x00\x00\x00\x00"  # gzip header mtime 0
        with tarfile.open(fileobj=io.BytesIO(raw)) as archive:
            infos = archive.getmembers()
        assert [i.name for i in infos] == sorted(i.name for i in infos)
        assert {(i.mtime, i.uid, i.gid, i.uname, i.gname) for i in infos} == {(315532800, 0, 0, "", "")}

    def test_real_trainer_builds_reproducibly(self, tmp_path):
        trainer = REPO / "trainer"
        if not (trainer / "pyproject.toml").exists():
            pytest.skip("trainer/pyproject.toml not written yet")
        first = build_trainer_sdist(trainer, tmp_path / "a")
        second = build_trainer_sdist(trainer, tmp_path / "b")
        assert first.sha256 == second.sha256
        assert any(name.endswith("src/trainer/__init__.py") for name in members(first.path))


class TestSecrets:
    def test_env_secret_and_secret_files_stay_out(self, tiny_trainer, tmp_path, monkeypatch):
        secret = f"wandb-{uuid.uuid4().hex}"
        monkeypatch.setenv("WANDB_API_KEY", secret)
        (tiny_trainer / ".env").write_text(f"WANDB_API_KEY={secret}\n")
        (tiny_trainer / "sa-key.json").write_text('{"private_key": "-----BEGIN PRIVATE KEY-----"}')
        (tiny_trainer / "wandb").mkdir()
        (tiny_trainer / "wandb" / "settings").write_text(f"api_key={secret}\n")
        package = build_trainer_sdist(tiny_trainer, tmp_path / "out")
        raw = package.path.read_bytes()
        files = members(package.path)
        assert secret.encode() not in raw and not any(secret.encode() in body for body in files.values())
        assert not any(n.endswith((".env", "sa-key.json")) or "/wandb/" in n for n in files)

    def test_secret_in_source_is_refused(self, tiny_trainer, tmp_path, monkeypatch):
        secret = f"wandb-{uuid.uuid4().hex}"
        monkeypatch.setenv("WANDB_API_KEY", secret)
        (tiny_trainer / "src" / "tiny" / "settings.py").write_text(f"KEY = {secret!r}\n")
        with pytest.raises(ConfigError, match=r"contains the value of \$WANDB_API_KEY in .*settings.py"):
            build_trainer_sdist(tiny_trainer, tmp_path / "out")
        assert not list((tmp_path / "out").glob("*.tar.gz"))

    def test_missing_project(self, tmp_path):
        with pytest.raises(ConfigError, match=r"has no pyproject.toml"):
            build_trainer_sdist(tmp_path, tmp_path / "out")


class TestCache:
    """An unchanged trainer is not rebuilt on every run (a build is a Python subprocess: ~0.4 s idle, >1 s loaded)."""

    def test_unchanged_sources_are_not_rebuilt_and_give_the_same_bytes(self, tiny_trainer, tmp_path, monkeypatch):
        first = build_trainer_sdist(tiny_trainer, tmp_path / "a", cache=tmp_path / "cache")
        touch_caches(tiny_trainer)  # new mtimes and build litter: not sources

        def no_build(_trainer_dir):
            raise AssertionError("rebuilt an unchanged trainer")

        monkeypatch.setattr(packaging, "_build", no_build)
        second = build_trainer_sdist(tiny_trainer, tmp_path / "b", cache=tmp_path / "cache")
        assert (second.sha256, second.filename) == (first.sha256, first.filename)
        assert second.path.read_bytes() == first.path.read_bytes()

    def test_a_changed_source_is_rebuilt(self, tiny_trainer, tmp_path):
        first = build_trainer_sdist(tiny_trainer, tmp_path / "a", cache=tmp_path / "cache")
        (tiny_trainer / "src" / "tiny" / "task.py").write_text("print('train harder')\n")
        second = build_trainer_sdist(tiny_trainer, tmp_path / "b", cache=tmp_path / "cache")
        assert second.sha256 != first.sha256
        assert any(body == b"print('train harder')\n" for body in members(second.path).values())
        # The same as building without a cache.
        assert build_trainer_sdist(tiny_trainer, tmp_path / "c").sha256 == second.sha256

    def test_a_torn_cache_entry_is_rebuilt(self, tiny_trainer, tmp_path):
        first = build_trainer_sdist(tiny_trainer, tmp_path / "a", cache=tmp_path / "cache")
        (cached,) = (tmp_path / "cache").glob("*/*.tar.gz")
        cached.write_bytes(cached.read_bytes()[:100])
        assert build_trainer_sdist(tiny_trainer, tmp_path / "b", cache=tmp_path / "cache").sha256 == first.sha256

    def test_a_cached_sdist_is_still_checked_for_this_runs_secrets(self, tiny_trainer, tmp_path, monkeypatch):
        secret = f"wandb-{uuid.uuid4().hex}"
        (tiny_trainer / "src" / "tiny" / "settings.py").write_text(f"KEY = {secret!r}\n")
        build_trainer_sdist(tiny_trainer, tmp_path / "a", cache=tmp_path / "cache")  # not a secret yet
        monkeypatch.setenv("WANDB_API_KEY", secret)
        with pytest.raises(ConfigError, match=r"contains the value of \$WANDB_API_KEY in .*settings.py"):
            build_trainer_sdist(tiny_trainer, tmp_path / "b", cache=tmp_path / "cache")
        assert not list((tmp_path / "b").glob("*.tar.gz"))

    def test_where_the_cache_lives(self, tmp_path):
        assert cache_dir({"FINSENT_CACHE_DIR": str(tmp_path)}) == tmp_path / "sdist"
        assert cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "finsent" / "sdist"


def test_task_fn(tiny_trainer, tmp_path):
    from prefect.logging import disable_run_logger

    with disable_run_logger():
        package = package_trainer.fn(tiny_trainer, tmp_path)
    assert package.path.exists() and package_trainer.name == "package-trainer"


def test_upload_package_is_content_addressed_and_uploaded_once(storage, layout, tmp_path):
    from tasks.packaging import TrainerPackage, upload_package

    path = tmp_path / "finsent_trainer-0.1.0.tar.gz"
    path.write_bytes(b"not really a tarball, but bytes are bytes" * 10)
    package = TrainerPackage(path=path, sha256="ab" * 32, filename=path.name)
    uri, uploaded = upload_package(storage, layout, package)
    assert uri == layout.package(package.sha256, package.filename)
    assert uploaded == path.stat().st_size
    assert upload_package(storage, layout, package) == (uri, 0)
