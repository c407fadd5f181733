"""The Vertex emulator driven only through the real REST JobServiceClient and the high-level aiplatform SDK."""

from __future__ import annotations

import json
import os
import re
import time

import pytest
from google.api_core import exceptions
from google.auth.credentials import AnonymousCredentials

from emulator_testkit import PARENT, PROJECT, image_spec, make_client, pid_alive, read_gcs_text, wait_for_state

TERMINAL = {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"}


def assert_invalid_argument(exc: exceptions.GoogleAPICallError) -> None:
    """The REST client maps errors by HTTP status only: a 400 is `BadRequest` (InvalidArgument's parent class,
    raised as such only over gRPC), so the google.rpc status is checked in the response body."""
    assert exc.code == 400
    assert exc.response.json()["error"]["status"] == "INVALID_ARGUMENT"


def test_job_installs_sdist_runs_module_and_writes_to_model_dir(job_client, make_job, vertex_admin):
    spec = make_job("write", ["--epochs", "2"])
    created = job_client.create_custom_job(parent=PARENT, custom_job=spec)
    assert created.state.name == "JOB_STATE_QUEUED"
    assert re.fullmatch(rf"{PARENT}/customJobs/\d{{19}}", created.name)
    seen = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job = job_client.get_custom_job(name=created.name)
        if not seen or seen[-1] != job.state.name:
            seen.append(job.state.name)
        if job.state.name in TERMINAL:
            break
        time.sleep(0.05)
    assert seen == ["JOB_STATE_QUEUED", "JOB_STATE_PENDING", "JOB_STATE_RUNNING", "JOB_STATE_SUCCEEDED"], seen
    assert job.start_time and job.end_time and not job.error.message
    base = spec["job_spec"]["base_output_directory"]["output_uri_prefix"]
    result = json.loads(read_gcs_text(f"{base}/model/result.json"))
    assert result["args"] == ["--epochs", "2"]
    env = result["env"]
    assert env["AIP_MODEL_DIR"] == f"{base}/model/"
    assert env["AIP_CHECKPOINT_DIR"] == f"{base}/checkpoints/"
    assert env["AIP_TENSORBOARD_LOG_DIR"] == f"{base}/logs/"
    assert env["CLOUD_ML_JOB_ID"] == created.name.rsplit("/", 1)[-1]
    assert env["GREETING"] == "hello"
    assert env["TF_CONFIG"] is None  # one replica
    assert json.loads(env["CLUSTER_SPEC"])["task"] == {"type": "workerpool0", "index": 0}
    assert env["STORAGE_EMULATOR_HOST"] == os.environ["STORAGE_EMULATOR_HOST"]
    # the sdist the image's entrypoint installed (pip --target), not a source checkout
    assert re.search(r"/finsent-packages-[^/]+/site/emujob/write\.py$", result["module"]), result["module"]
    # The echoed spec: enum names/ints round-trip, int64 as strings parsed back.
    pool = job.job_spec.worker_pool_specs[0]
    assert pool.replica_count == 1 and pool.machine_spec.machine_type == "n1-standard-4"
    log = vertex_admin.job_log(created.name)
    assert "[workerpool0-0] done" in log
    assert job.web_access_uris["emulator-log"].endswith(f"/emulator/v1/jobs/{env['CLOUD_ML_JOB_ID']}/log")


def test_failing_module_ends_failed_with_vertex_message_and_log_tail(job_client, make_job):
    created = job_client.create_custom_job(parent=PARENT, custom_job=make_job("fail"))
    job = wait_for_state(job_client, created.name, TERMINAL)
    assert job.state.name == "JOB_STATE_FAILED"
    assert job.error.code == 3
    message = job.error.message
    assert message.startswith("The replica workerpool0-0 exited with a non-zero status of 1.")
    assert "epoch 2: loss=nan" in message
    assert "finsent-trainer: error: loss became NaN at epoch 2" in message


def test_cancel_kills_the_process_tree_and_ends_cancelled(job_client, make_job, vertex_admin):
    created = job_client.create_custom_job(parent=PARENT, custom_job=make_job("sleep", ["600"]))
    wait_for_state(job_client, created.name, {"JOB_STATE_RUNNING"})
    deadline = time.monotonic() + 20
    while "child=" not in (log := vertex_admin.job_log(created.name)) and time.monotonic() < deadline:
        time.sleep(0.05)
    pid, child = map(int, re.search(r"pid=(\d+) child=(\d+)", log).groups())
    assert vertex_admin.job(created.name)["emulator"]["replicas"][0]["pid"] == pid
    assert pid_alive(pid) and pid_alive(child)
    job_client.cancel_custom_job(name=created.name)
    assert job_client.get_custom_job(name=created.name).state.name in {"JOB_STATE_CANCELLING", "JOB_STATE_CANCELLED"}
    job = wait_for_state(job_client, created.name, TERMINAL, timeout=20)
    assert job.state.name == "JOB_STATE_CANCELLED"
    assert job.error.code == 1
    assert not pid_alive(pid) and not pid_alive(child)
    with pytest.raises(exceptions.BadRequest, match="JOB_STATE_CANCELLED"):
        job_client.cancel_custom_job(name=created.name)


def test_cancel_while_queued(job_client, make_job):
    created = job_client.create_custom_job(parent=PARENT, custom_job=make_job("sleep", ["600"]))
    job_client.cancel_custom_job(name=created.name)
    job = wait_for_state(job_client, created.name, TERMINAL, timeout=20)
    assert job.state.name == "JOB_STATE_CANCELLED" and job.error.code == 1
    assert not job.start_time  # never ran


def test_get_unknown_job_is_not_found(job_client):
    with pytest.raises(exceptions.NotFound, match="does not exist"):
        job_client.get_custom_job(name=f"{PARENT}/customJobs/123")
    with pytest.raises(exceptions.NotFound):
        job_client.cancel_custom_job(name=f"{PARENT}/customJobs/123")


def test_list_filters_by_label_state_and_display_name_with_paging(job_client, make_job):
    specs = [make_job("write", display_name=f"listing-{i}") for i in range(3)]
    shared = specs[0]["labels"]["run"]
    for spec in specs:
        spec["labels"]["batch"] = shared
    names = [job_client.create_custom_job(parent=PARENT, custom_job=s).name for s in specs]
    for name in names:
        wait_for_state(job_client, name, TERMINAL)

    def listed(filter_text: str, page_size: int = 0) -> list[str]:
        request = {"parent": PARENT, "filter": filter_text, "page_size": page_size}
        return sorted(j.name for j in job_client.list_custom_jobs(request=request))

    assert listed(f'labels.batch="{shared}"') == sorted(names)
    assert listed(f'labels.batch="{shared}"', page_size=2) == sorted(names)  # the pager follows nextPageToken
    first_page = job_client.list_custom_jobs(request={"parent": PARENT, "filter": f"labels.batch={shared}",
                                                      "page_size": 2})
    assert len(first_page.custom_jobs) == 2 and first_page.next_page_token
    assert listed(f'labels.batch="{shared}" AND display_name="listing-1"') == [names[1]]
    assert listed(f'labels.batch="{shared}" AND state=JOB_STATE_SUCCEEDED') == sorted(names)
    assert listed(f'labels.batch="{shared}" AND state!=JOB_STATE_SUCCEEDED') == []
    assert set(names) <= set(listed("labels.batch:*"))
    assert listed('labels.batch="nothing-like-this"') == []
    with pytest.raises(exceptions.BadRequest, match="OR") as excinfo:
        listed(f'labels.batch="{shared}" OR state=JOB_STATE_FAILED')
    assert_invalid_argument(excinfo.value)


def test_delete_returns_done_operation_and_refuses_running_jobs(job_client, make_job):
    running = job_client.create_custom_job(parent=PARENT, custom_job=make_job("sleep", ["600"]))
    with pytest.raises(exceptions.BadRequest, match="cancel it first"):
        job_client.delete_custom_job(name=running.name)
    job_client.cancel_custom_job(name=running.name)
    wait_for_state(job_client, running.name, TERMINAL, timeout=20)
    operation = job_client.delete_custom_job(name=running.name)
    assert operation.done()
    operation.result(timeout=5)
    with pytest.raises(exceptions.NotFound):
        job_client.get_custom_job(name=running.name)


def _python_package(job: dict) -> dict:
    """Turn the job's pool into a pythonPackageSpec one (the newest prebuilt TF CPU image); return that spec."""
    pool = job["job_spec"]["worker_pool_specs"][0]
    container = pool.pop("container_spec")
    env = {e["name"]: e["value"] for e in container["env"]}
    pool["python_package_spec"] = {
        "executor_image_uri": "us-docker.pkg.dev/vertex-ai/training/tf-cpu.2-17.py310:latest",
        "package_uris": [env["FINSENT_PACKAGE_URIS"]], "python_module": env["FINSENT_PYTHON_MODULE"],
    }
    return pool["python_package_spec"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda j: j["job_spec"]["worker_pool_specs"][0].update(
            machine_spec={"machine_type": "n1-standard-4", "accelerator_type": "NVIDIA_TESLA_T4"}),
         "Accelerator count must be set"),
        (lambda j: j["job_spec"]["worker_pool_specs"][0].update(
            machine_spec={"machine_type": "n1-standard-4", "accelerator_count": 1}),
         "Accelerator type must be set"),
        (lambda j: j["job_spec"]["worker_pool_specs"][0].update(
            machine_spec={"machine_type": "a2-highgpu-1g", "accelerator_type": "NVIDIA_TESLA_T4", "accelerator_count": 1}),
         'Accelerator "NVIDIA_TESLA_T4" is not supported for machine type "a2-highgpu-1g"'),
        (lambda j: j["job_spec"]["worker_pool_specs"][0].update(
            machine_spec={"machine_type": "g2-standard-8", "accelerator_type": "NVIDIA_TESLA_A100", "accelerator_count": 1}),
         "Supported accelerators: NVIDIA_L4"),
        (lambda j: _python_package(j).pop("package_uris"),
         "python_package_spec.package_uris; Message: Required field is not set."),
        (lambda j: _python_package(j).pop("python_module"),
         "python_package_spec.python_module; Message: Required field is not set."),
        (lambda j: _python_package(j).pop("executor_image_uri"),
         "executor_image_uri; Message: Required field is not set."),
        # https://cloud.google.com/vertex-ai/docs/training/pre-built-containers: tf-cpu.2-17.py310 "End of
        # availability" Jul 11, 2026; custom_job.proto: "You must use an image from this list."
        (lambda j: _python_package(j), "tf-cpu.2-17.py310:latest reached its end of availability on 2026-07-11."),
        (lambda j: _python_package(j).update(executor_image_uri="gcr.io/me/trainer:1"),
         "Executor image gcr.io/me/trainer:1 is not a pre-built training container"),
        (lambda j: j["job_spec"]["worker_pool_specs"][0]["container_spec"].pop("image_uri"),
         "container_spec.image_uri; Message: Required field is not set."),
        (lambda j: j["job_spec"].update(scheduling={"strategy": "FLEX_START"}) or
         j["job_spec"]["worker_pool_specs"][0].update(
            machine_spec={"machine_type": "n1-standard-4", "accelerator_type": "NVIDIA_TESLA_T4", "accelerator_count": 1}),
         "FLEX_START is not supported for accelerator NVIDIA_TESLA_T4"),
        (lambda j: j["labels"].update({"Flow-Run": "x"}), "Label keys must start with a lowercase letter"),
    ],
    ids=["type-without-count", "count-without-type", "t4-on-a2", "a100-on-g2", "no-package", "no-module",
         "no-executor", "executor-past-eoa", "not-prebuilt", "no-container-image", "flex-start-t4", "bad-label"],
)
def test_invalid_specs_are_rejected_with_invalid_argument(job_client, make_job, change, message):
    spec = make_job("write")
    change(spec)
    with pytest.raises(exceptions.BadRequest, match=re.escape(message)) as excinfo:
        job_client.create_custom_job(parent=PARENT, custom_job=spec)
    assert_invalid_argument(excinfo.value)
    assert excinfo.value.details[0]["@type"] == "type.googleapis.com/google.rpc.BadRequest"
    listed = job_client.list_custom_jobs(request={"parent": PARENT, "filter": f'labels.run="{spec["labels"]["run"]}"'})
    assert list(listed) == []


def test_unknown_location_is_rejected(job_client, make_job):
    with pytest.raises(exceptions.BadRequest, match="us-centrall1") as excinfo:
        job_client.create_custom_job(parent=f"projects/{PROJECT}/locations/us-centrall1", custom_job=make_job("write"))
    assert_invalid_argument(excinfo.value)


def test_valid_gpu_specs_are_accepted(job_client, make_job):
    for machine in ({"machine_type": "n1-standard-8", "accelerator_type": "NVIDIA_TESLA_T4", "accelerator_count": 2},
                    {"machine_type": "a2-ultragpu-1g", "accelerator_type": "NVIDIA_A100_80GB", "accelerator_count": 1},
                    {"machine_type": "a3-highgpu-8g", "accelerator_type": "NVIDIA_H100_80GB", "accelerator_count": 8}):
        job = job_client.create_custom_job(parent=PARENT, custom_job=make_job("write", machine_spec=machine))
        assert job.job_spec.worker_pool_specs[0].machine_spec.accelerator_type.name == machine["accelerator_type"]
        assert job.job_spec.worker_pool_specs[0].machine_spec.accelerator_count == machine["accelerator_count"]
        wait_for_state(job_client, job.name, TERMINAL)


def test_multi_replica_job_gets_tf_config(job_client, make_job, vertex_admin):
    spec = make_job("write")
    worker = json.loads(json.dumps(spec["job_spec"]["worker_pool_specs"][0]))
    worker["replica_count"] = 2
    spec["job_spec"]["worker_pool_specs"].append(worker)
    created = job_client.create_custom_job(parent=PARENT, custom_job=spec)
    job = wait_for_state(job_client, created.name, TERMINAL)
    assert job.state.name == "JOB_STATE_SUCCEEDED", job.error
    replicas = vertex_admin.job(created.name)["emulator"]["replicas"]
    assert [r["replica"] for r in replicas] == ["workerpool0-0", "workerpool1-0", "workerpool1-1"]
    # All three wrote the same file; the last writer's TF_CONFIG is one of the three tasks.
    base = spec["job_spec"]["base_output_directory"]["output_uri_prefix"]
    tf_config = json.loads(json.loads(read_gcs_text(f"{base}/model/result.json"))["env"]["TF_CONFIG"])
    assert set(tf_config["cluster"]) == {"chief", "worker"} and len(tf_config["cluster"]["worker"]) == 2
    assert tf_config["task"]["type"] in {"chief", "worker"}


def test_high_level_custom_job_runs_to_success(vertex_emulator, package_uri, job_bucket, monkeypatch):
    from google.cloud import aiplatform
    from google.cloud.aiplatform import jobs

    monkeypatch.setattr(jobs, "_JOB_WAIT_TIME", 0.2)  # the SDK polls every 5 s by default
    aiplatform.init(project=PROJECT, location="us-central1", api_endpoint=vertex_emulator.endpoint,
                    api_transport="rest", credentials=AnonymousCredentials(), staging_bucket=f"gs://{job_bucket}")
    job = aiplatform.CustomJob(
        display_name="sdk-job",
        worker_pool_specs=[{
            "machine_spec": {"machine_type": "n1-standard-4"},
            "replica_count": 1,
            "container_spec": image_spec(package_uri, "emujob.write"),
        }],
        base_output_dir=f"gs://{job_bucket}/sdk-run",
        labels={"suite": "sdk"},
    )
    job.run(sync=True, restart_job_on_worker_restart=True)
    assert job.state.name == "JOB_STATE_SUCCEEDED"
    assert json.loads(read_gcs_text(f"gs://{job_bucket}/sdk-run/model/result.json"))["env"]["CLOUD_ML_JOB_ID"]
    found = aiplatform.CustomJob.list(filter='labels.suite="sdk"')
    assert job.resource_name in [j.resource_name for j in found]


def test_high_level_custom_job_failure_raises(vertex_emulator, package_uri, job_bucket, monkeypatch):
    from google.cloud import aiplatform
    from google.cloud.aiplatform import jobs

    monkeypatch.setattr(jobs, "_JOB_WAIT_TIME", 0.2)
    aiplatform.init(project=PROJECT, location="us-central1", api_endpoint=vertex_emulator.endpoint,
                    api_transport="rest", credentials=AnonymousCredentials(), staging_bucket=f"gs://{job_bucket}")
    job = aiplatform.CustomJob(
        display_name="sdk-fail",
        worker_pool_specs=[{
            "machine_spec": {"machine_type": "n1-standard-4"}, "replica_count": 1,
            "container_spec": image_spec(package_uri, "emujob.fail"),
        }],
    )
    with pytest.raises(RuntimeError, match="non-zero status of 1"):
        job.run(sync=True)
    assert job.state.name == "JOB_STATE_FAILED"


def test_max_running_keeps_extra_jobs_queued_like_a_gpu_quota(make_job, gcs_emulator):
    # "if your Google Cloud project does not have sufficient remaining custom training quotas for your job, then
    # Vertex AI keeps the job queued until you have sufficient quotas" (docs: "Understand the training service",
    # docs.cloud.google.com/vertex-ai/docs/training/understanding-training-service).
    from emulators.vertex import VertexEmulator

    with VertexEmulator(gcs_endpoint=gcs_emulator.endpoint, max_running=1) as emulator:
        client = make_client(emulator.endpoint)
        first = client.create_custom_job(parent=PARENT, custom_job=make_job("sleep", ["600"]))
        wait_for_state(client, first.name, {"JOB_STATE_RUNNING"})
        second = client.create_custom_job(parent=PARENT, custom_job=make_job("write"))
        time.sleep(1.5)  # several ticks: with a free slot it would have run and succeeded by now
        waiting = client.get_custom_job(name=second.name)
        assert waiting.state.name == "JOB_STATE_QUEUED" and not waiting.start_time
        assert [h["state"] for h in emulator.admin.job(second.name)["emulator"]["stateHistory"]] == ["JOB_STATE_QUEUED"]
        client.cancel_custom_job(name=first.name)
        assert wait_for_state(client, first.name, TERMINAL).state.name == "JOB_STATE_CANCELLED"
        assert wait_for_state(client, second.name, TERMINAL).state.name == "JOB_STATE_SUCCEEDED"
        assert [h["state"] for h in emulator.admin.job(second.name)["emulator"]["stateHistory"]] == [
            "JOB_STATE_QUEUED", "JOB_STATE_PENDING", "JOB_STATE_RUNNING", "JOB_STATE_SUCCEEDED"]


def test_a_container_the_emulator_cannot_run_fails_the_job_before_any_replica(job_client, make_job):
    """Images are not pulled here (docs/emulators.md): another image without a command ends FAILED, with why."""
    spec = make_job("write")
    spec["job_spec"]["worker_pool_specs"][0]["container_spec"] = {"image_uri": "gcr.io/someone/other:1"}
    job = job_client.create_custom_job(parent=PARENT, custom_job=spec)
    done = wait_for_state(job_client, job.name, TERMINAL, timeout=30)
    assert done.state.name == "JOB_STATE_FAILED" and "only finsent's image" in done.error.message, done.error
