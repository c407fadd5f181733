"""Local emulators for the services finsent talks to: Vertex AI CustomJobs and GCS (loopback only).

- `emulators.gcs.FakeGcs`: fake-gcs-server from Python; `python -m emulators.gcs`.
- `emulators.vertex.VertexEmulator`: the v1 CustomJob REST emulator in a subprocess; `python -m emulators.vertex`.
- `python -m emulators up`: both, printing the environment to use. See docs/emulators.md.
"""
