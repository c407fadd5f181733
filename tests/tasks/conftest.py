"""Helpers for the data, packaging and storage tests: small synthetic inputs and a loopback HTTP server."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from emulators.sample_data import make_zip  # noqa: F401  (test_dataset imports it from here)

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"
PHRASEBANK_ZIP = SHARED_DATA / "financial_phrasebank" / "FinancialPhraseBank-v1.0.zip"
KAGGLE_CSV = SHARED_DATA / "financial_news_kaggle" / "all-data.csv"


def failed_state(error: BaseException) -> SimpleNamespace:
    """What Prefect hands a `retry_condition_fn`: a state whose `result()` raises the task's exception."""

    def result():
        raise error

    return SimpleNamespace(result=result)


def phrasebank_text(per_class: int = 10, labels: tuple[str, ...] = ("negative", "neutral", "positive")) -> str:
    """Unique `sentence@label` lines, CRLF like the real files."""
    return "".join(
        f"Company {label[:3]}{i} reported results , e-mail ir@corp{i}.fi@{label}\r\n"
        for label in labels
        for i in range(per_class)
    )


def phrasebank_zip(text: str | None = None, member: str = "FinancialPhraseBank-v1.0/Sentences_50Agree.txt") -> bytes:
    body = (text if text is not None else phrasebank_text()).encode("latin-1")
    return make_zip({member: body, f"__MACOSX/FinancialPhraseBank-v1.0/._{Path(member).name}": b"\x00\x05junk"})


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: dict[str, tuple[int, str, bytes]] = {}

    def do_GET(self) -> None:  # noqa: N802 (stdlib name)
        status, content_type, body = self.routes.get(self.path.split("?")[0], (404, "text/html", b"<html>404</html>"))
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class LocalHttp:
    """stdlib HTTP server on 127.0.0.1 in a thread; `add(path, status, body)` registers a response."""

    def __init__(self) -> None:
        handler = type("Handler", (_Handler,), {"routes": {}})
        self.routes = handler.routes
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def add(self, path: str, body: bytes, status: int = 200, content_type: str = "application/octet-stream") -> str:
        self.routes[path] = (status, content_type, body)
        return self.url + path


@pytest.fixture(scope="module")
def http_server():
    server = LocalHttp()
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


@pytest.fixture
def require_phrasebank() -> Path:
    if not PHRASEBANK_ZIP.exists():
        pytest.skip(f"real Financial PhraseBank zip not found at {PHRASEBANK_ZIP} (expected in ../shared/data)")
    return PHRASEBANK_ZIP


@pytest.fixture
def storage(gcs_emulator):
    """A storage client on fake-gcs-server, built the way the flow builds it (anonymous against an emulator)."""
    from tasks import gcs
    from tasks.config import PipelineConfig

    return gcs.storage_client(PipelineConfig(project="test-project", bucket="unused"))


@pytest.fixture
def layout(gcs_bucket):
    from tasks.layout import BucketLayout

    return BucketLayout(gcs_bucket, "finsent")
