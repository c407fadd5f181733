"""A local Vertex AI v1 CustomJob REST emulator (see docs/emulators.md).

Layout: `routes.py` (HTTP, JSON, Google error envelope), `backend.py` (the service and per-job drivers),
`state.py` (records, JobState, transitions, store), `spec.py` + `catalog.py` (normalise and validate specs),
`runner.py` (SubprocessRunner / InstantRunner), `faults.py`, `filters.py`, `errors.py`, `server.py` (CLI),
`launcher.py` (`VertexEmulator`, `AdminClient`).
"""

from emulators.vertex.launcher import AdminClient, VertexEmulator

__all__ = ["AdminClient", "VertexEmulator"]
