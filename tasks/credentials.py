"""Where GCP credentials come from: one place, shared by the GCS and Vertex modules.

Order: the emulators (anonymous, never real credentials near a fake endpoint), a prefect-gcp `GcpCredentials` block
named in the config, then application-default credentials. Credentials objects are returned, never their secrets.
"""

from __future__ import annotations

from google.auth.credentials import AnonymousCredentials, Credentials

from tasks.config import PipelineConfig
from tasks.errors import ConfigError


def gcp_credentials(cfg: PipelineConfig) -> Credentials:
    """Credentials for `cfg`, or a `ConfigError` that says how to provide them."""
    if cfg.anonymous_credentials:
        return AnonymousCredentials()
    if cfg.gcp_credentials_block:
        from prefect_gcp import GcpCredentials

        try:
            block = GcpCredentials.load(cfg.gcp_credentials_block)
        except ValueError as exc:
            raise ConfigError(
                f"no GcpCredentials block named {cfg.gcp_credentials_block!r}: create it in the Prefect UI "
                "(Blocks > GCP Credentials) or fix gcp_credentials_block"
            ) from exc
        return block.get_credentials_from_service_account()
    return application_default_credentials()


def application_default_credentials() -> Credentials:
    """ADC (gcloud login, GOOGLE_APPLICATION_CREDENTIALS, or the metadata server), or a ConfigError saying how."""
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    try:
        credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
    except DefaultCredentialsError:
        raise ConfigError(
            "no GCP credentials: run `gcloud auth application-default login`, set "
            "GOOGLE_APPLICATION_CREDENTIALS, or name a GcpCredentials block in gcp_credentials_block"
        ) from None
    return credentials
