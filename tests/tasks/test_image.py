"""finsent's training image is defined once (trainer/container/) and agrees with the pins the tests run with."""

from __future__ import annotations

import re
from pathlib import Path

from tasks.image import CONTAINER_DIR, IMAGE_FILES, image_tag, is_finsent_image

REPO = Path(__file__).resolve().parents[2]
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)")


def pins(path: Path) -> dict[str, str]:
    """{normalised name: version} of the `name==version` lines of a requirements file."""
    found = {}
    for line in path.read_text().splitlines():
        match = _PIN.match(line)
        if match:
            found[re.sub(r"[-_.]+", "-", match[1]).lower()] = match[2]
    return found


def test_the_lock_holds_the_trainer_pins_and_the_versions_the_tests_run():
    lock, trainer = pins(CONTAINER_DIR / "requirements.lock"), pins(REPO / "trainer" / "requirements.txt")
    tested = pins(REPO / "constraints.txt")
    assert trainer and all(lock.get(name) == version for name, version in trainer.items()), {
        name: (version, lock.get(name)) for name, version in trainer.items() if lock.get(name) != version}
    # Every package of the image that the test venv also has is the same version (else: `make lock`).
    drift = {name: (version, tested[name]) for name, version in lock.items() if name in tested and tested[name] != version}
    assert not drift, f"image lock and constraints.txt disagree (run `make lock`): {drift}"
    # The CUDA build of JAX that the GPU needs, at the tested JAX version; TensorFlow is not in the image.
    assert lock["jax-cuda12-plugin"] == lock["jax"] == tested["jax"]
    assert not {"tensorflow", "tensorflow-text", "torch"} & set(lock)
    # Each entry is hashed: the image installs with --require-hashes.
    text = (CONTAINER_DIR / "requirements.lock").read_text()
    assert text.count("--hash=sha256:") >= len(lock)


def test_dockerfile_installs_the_lock_and_runs_the_entrypoint_the_emulator_runs():
    dockerfile = (CONTAINER_DIR / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-", dockerfile, re.M)
    assert "pip install --no-deps --require-hashes -r /opt/finsent/requirements.lock" in dockerfile
    assert 'ENTRYPOINT ["python", "/opt/finsent/run_package.py"]' in dockerfile
    assert "COPY run_package.py /opt/finsent/run_package.py" in dockerfile
    assert set(IMAGE_FILES) == {"Dockerfile", "requirements.lock", "run_package.py"}


def test_image_tag_names_the_image_files(tmp_path, monkeypatch):
    from tasks import image

    tag = image_tag()
    for name in IMAGE_FILES:
        (tmp_path / name).write_bytes((CONTAINER_DIR / name).read_bytes())
    monkeypatch.setattr(image, "CONTAINER_DIR", tmp_path)
    image.image_tag.cache_clear()
    try:
        assert image.image_tag() == tag  # same files, same tag
        (tmp_path / "requirements.lock").write_text("numpy==2.0.0\n")
        image.image_tag.cache_clear()
        assert image.image_tag() != tag  # other pins, other image
    finally:
        image.image_tag.cache_clear()


def test_finsent_image_is_known_by_its_name_only():
    assert is_finsent_image("us-central1-docker.pkg.dev/p/finsent/finsent-trainer:abc")
    assert is_finsent_image("gcr.io/p/finsent-trainer@sha256:00")
    assert not is_finsent_image("us-docker.pkg.dev/vertex-ai/training/tf-gpu.2-17.py310:latest")
    assert not is_finsent_image("gcr.io/p/finsent-trainer-old:1")
