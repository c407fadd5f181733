"""A local Vertex AI v1 CustomJob REST emulator (see docs/emulators.md).

Layout: `routes.py` (HTTP, JSON, Google error envelope; one handler per route), `service.py` (the API:
create/get/list/cancel/delete and the admin views), `driver.py` (a thread per job through its states, replicas,
restart recovery), `replica_env.py` (the env vars Vertex gives a replica), `job_files.py` (work dirs and logs),
`state.py` (records, JobState, transitions, store), `spec.py` (normalise and validate specs against
`tasks/catalog.py`), `runner.py` (SubprocessRunner / InstantRunner), `faults.py`, `filters.py`, `errors.py`,
`server.py` (CLI), `launcher.py` (`VertexEmulator`, `AdminClient`).
"""

from emulators.vertex.launcher import AdminClient, VertexEmulator

__all__ = ["AdminClient", "VertexEmulator"]
