"""tasks/dataset/: real PhraseBank and Kaggle files, every bad input, https and gs:// sources, the upload."""

from __future__ import annotations

import csv
import json
import random
import socket
from pathlib import Path

import pytest

from tasks.config import LABELS, DataConfig
from tasks import gcs
from tasks.dataset import (
    SPLITS,
    DataUnavailableError,
    fetch_dataset,
    load_prepared,
    prepare_dataset,
    upload_dataset,
)
from tasks.errors import DataError
from tasks.transient import retry_if_transient
from tests.tasks.conftest import KAGGLE_CSV, failed_state, make_zip, phrasebank_text, phrasebank_zip


def read_split(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def assert_nothing_written(work_dir: Path) -> None:
    """A refused input leaves no split file or manifest anywhere a data set could be picked up."""
    datasets = work_dir / "datasets"
    leftovers = [p for p in datasets.rglob("*") if p.is_file()] if datasets.exists() else []
    assert leftovers == []


def write(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


class TestRealPhraseBank:
    @pytest.fixture
    def prepared(self, require_phrasebank, tmp_path):
        return prepare_dataset(DataConfig(uri=str(require_phrasebank)), tmp_path / "work")

    def test_counts_after_dedupe(self, prepared):
        rows = prepared.manifest["rows"]
        # 4846 lines; 8 duplicated texts: 6 exact pairs (one copy dropped each), 2 with conflicting labels (all 4 dropped)
        assert rows == {
            "rows_read": 4846,
            "empty_texts_dropped": 0,
            "duplicates_dropped": 6,
            "conflicting_duplicates_dropped": 4,
            "conflicting_texts": 2,
            "rows_kept": 4836,
        }
        counts = prepared.manifest["counts"]
        assert counts["all"] == {"negative": 604, "neutral": 2871, "positive": 1361, "total": 4836}
        assert [counts[s]["total"] for s in SPLITS] == [3482, 387, 967]
        assert prepared.manifest["source"]["encoding"] == "iso8859-1"
        assert prepared.manifest["source"]["member"] == "FinancialPhraseBank-v1.0/Sentences_50Agree.txt"
        assert prepared.manifest["source"]["sha256"] == "0e1a06c4900fdae46091d031068601e3773ba067c7cecb5b0da1dcba5ce989a6"

    def test_split_files_follow_the_trainer_contract(self, prepared):
        texts: dict[str, set[str]] = {}
        for split in SPLITS:
            path = prepared.path(split)
            assert path.read_bytes().startswith(b"text,label\n")
            rows = read_split(path)
            assert {r["label"] for r in rows} == set(LABELS)
            assert len(rows) == prepared.manifest["counts"][split]["total"]
            texts[split] = {r["text"] for r in rows}
        assert not texts["train"] & texts["test"] and not texts["train"] & texts["validation"]
        assert not texts["validation"] & texts["test"]
        # decoded as latin-1, not dropped or replaced: the source spells Åland as "+\xe0land"
        assert any("Finnish Bank of +àland" in t for split in SPLITS for t in texts[split])
        assert not any("\ufffd" in t for split in SPLITS for t in texts[split])

    def test_split_is_stratified(self, prepared):
        counts = prepared.manifest["counts"]
        for label in LABELS:
            total = counts["all"][label]
            assert abs(counts["test"][label] - 0.2 * total) <= 1
            assert abs(counts["validation"][label] - 0.1 * (total - counts["test"][label])) <= 1
            assert sum(counts[s][label] for s in SPLITS) == total

    def test_fingerprint_is_stable_and_depends_on_seed(self, prepared, require_phrasebank, tmp_path):
        again = prepare_dataset(DataConfig(uri=str(require_phrasebank)), tmp_path / "other-work")
        assert again.fingerprint == prepared.fingerprint
        assert again.path("train").read_bytes() == prepared.path("train").read_bytes()
        reseeded = prepare_dataset(DataConfig(uri=str(require_phrasebank), seed=7), tmp_path / "other-work")
        assert reseeded.fingerprint != prepared.fingerprint
        assert prepared.directory.name == prepared.fingerprint

    def test_manifest_on_disk_is_the_returned_one(self, prepared):
        on_disk = json.loads((prepared.directory / "manifest.json").read_text())
        assert on_disk == prepared.manifest
        assert load_prepared(prepared.directory) == prepared
        assert on_disk["split"] == {"seed": 42, "test_fraction": 0.2, "validation_fraction": 0.1, "stratified": True}

    def test_raw_bytes_cached_by_content_hash(self, prepared, tmp_path):
        cached = tmp_path / "work" / "cache" / prepared.manifest["source"]["sha256"]
        assert cached.stat().st_size == prepared.manifest["source"]["bytes"]


class TestKaggleCsv:
    @pytest.fixture
    def kaggle(self) -> Path:
        if not KAGGLE_CSV.exists():
            pytest.skip(f"Kaggle CSV not found at {KAGGLE_CSV} (expected in ../shared/data)")
        return KAGGLE_CSV

    @pytest.mark.parametrize("has_header", [False, None], ids=["explicit", "sniffed"])
    def test_columns_by_index(self, kaggle, tmp_path, has_header):
        cfg = DataConfig(uri=str(kaggle), text_column=1, label_column=0, has_header=has_header)
        prepared = prepare_dataset(cfg, tmp_path)
        assert prepared.manifest["source"]["format"] == "csv"
        assert prepared.manifest["rows"]["rows_read"] == 4846
        assert prepared.manifest["counts"]["all"] == {"negative": 604, "neutral": 2871, "positive": 1361, "total": 4836}
        first = read_split(prepared.path("train"))[0]
        assert first["text"].startswith("According to Gran")

    def test_default_column_names_explain_how_to_fix(self, kaggle, tmp_path):
        with pytest.raises(DataError, match=r"data.text_column='text' names a column but the CSV has no header .*give 0-based column indexes and has_header=False"):
            prepare_dataset(DataConfig(uri=str(kaggle)), tmp_path)
        assert_nothing_written(tmp_path)


class TestParsing:
    def test_split_on_last_at(self, tmp_path):
        uri = write(tmp_path, "pb.zip", phrasebank_zip())
        prepared = prepare_dataset(DataConfig(uri=uri), tmp_path / "w")
        texts = [r["text"] for r in read_split(prepared.path("train"))]
        assert all("ir@corp" in t and not t.endswith(tuple(LABELS)) for t in texts)

    def test_plain_phrasebank_text_file(self, tmp_path):
        uri = write(tmp_path, "Sentences.txt", phrasebank_text().encode("latin-1"))
        prepared = prepare_dataset(DataConfig(uri=uri), tmp_path / "w")
        assert prepared.manifest["source"]["format"] == "phrasebank"
        assert prepared.manifest["counts"]["all"]["total"] == 30

    def test_csv_header_without_the_named_column(self, tmp_path):
        uri = write(tmp_path, "d.csv", b"sentence,sentiment\nUp,positive\n")
        with pytest.raises(DataError, match=r"CSV has no column named 'text' \(header: \['sentence', 'sentiment'\]\)"):
            prepare_dataset(DataConfig(uri=uri, has_header=True), tmp_path / "w")

    def test_csv_with_header_and_label_map(self, tmp_path):
        rows = ["sentence;score"] + [f"Stock {i} moved 'café';{i % 3}" for i in range(30)]
        uri = write(tmp_path, "d.csv", ("\n".join(rows) + "\n").encode("utf-8"))
        cfg = DataConfig(uri=uri, text_column="Sentence", label_column="SCORE", label_map={"0": "negative", "1": "neutral", "2": "positive"})
        prepared = prepare_dataset(cfg, tmp_path / "w")
        assert prepared.manifest["source"]["encoding"] == "utf-8"
        assert prepared.manifest["counts"]["all"] == {"negative": 10, "neutral": 10, "positive": 10, "total": 30}
        assert "café" in prepared.path("train").read_text(encoding="utf-8")

    def test_predefined_split_column(self, tmp_path):
        names = ["train"] * 6 + ["dev", "test", "TEST", "train"]
        rows = ["text,label,fold"] + [f"Line {i} {lab},{lab},{names[i % 10]}" for lab in LABELS for i in range(10)]
        uri = write(tmp_path, "d.csv", ("\n".join(rows) + "\n").encode())
        prepared = prepare_dataset(DataConfig(uri=uri, split_column="fold"), tmp_path / "w")
        assert [prepared.manifest["counts"][s]["total"] for s in SPLITS] == [21, 3, 6]
        assert prepared.manifest["split"] == {"predefined": True, "split_column": "fold"}
        assert read_split(prepared.path("validation"))[0] == {"text": "Line 6 negative", "label": "negative"}

    def test_predefined_split_with_unknown_names(self, tmp_path):
        rows = ["text,label,fold"] + [f"Line {i} {lab},{lab},{'holdout' if i == 0 else 'train'}" for lab in LABELS for i in range(5)]
        uri = write(tmp_path, "d.csv", ("\n".join(rows) + "\n").encode())
        with pytest.raises(DataError, match=r"unknown split names \['holdout'\] in data.split_column"):
            prepare_dataset(DataConfig(uri=uri, split_column="fold"), tmp_path / "w")
        assert_nothing_written(tmp_path / "w")

    def test_labels_are_case_insensitive(self, tmp_path):
        text = phrasebank_text().replace("@positive", "@Positive ").replace("@negative", "@NEGATIVE")
        prepared = prepare_dataset(DataConfig(uri=write(tmp_path, "p.txt", text.encode())), tmp_path / "w")
        assert prepared.manifest["counts"]["all"] == {"negative": 10, "neutral": 10, "positive": 10, "total": 30}

    def test_dedupe_counts(self, tmp_path):
        text = phrasebank_text() + "Same text@neutral\r\n" * 3 + "Torn text@neutral\r\nTorn text@positive\r\n"
        prepared = prepare_dataset(DataConfig(uri=write(tmp_path, "p.txt", text.encode())), tmp_path / "w")
        rows = prepared.manifest["rows"]
        assert (rows["duplicates_dropped"], rows["conflicting_duplicates_dropped"], rows["rows_kept"]) == (2, 2, 31)

    def test_crashed_half_written_folder_is_replaced(self, tmp_path):
        uri = write(tmp_path, "pb.zip", phrasebank_zip())
        first = prepare_dataset(DataConfig(uri=uri), tmp_path / "w")
        (first.directory / "manifest.json").unlink()  # as if the process died before the manifest
        (first.directory / "test.csv").write_text("garbage")
        assert load_prepared(first.directory) is None
        again = prepare_dataset(DataConfig(uri=uri), tmp_path / "w")
        assert again.fingerprint == first.fingerprint
        assert again.path("test").read_text().startswith("text,label")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


BAD_INPUTS = {
    "undecodable": (lambda: random.Random(7).randbytes(4096), {}, r"cannot decode .* as text"),
    "html-instead-of-zip": (
        lambda: b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>Access denied</body></html>",
        {},
        r"returned an HTML page, not a zip or CSV",
    ),
    "zip-without-member": (
        lambda: make_zip({"FinancialPhraseBank-v1.0/Sentences_AllAgree.txt": phrasebank_text().encode(), "__MACOSX/x/._y": b"j"}),
        {},
        r"has no member 'Sentences_50Agree.txt' \(members: Sentences_AllAgree.txt\): set data.phrasebank_file",
    ),
    "empty-file": (lambda: b"", {}, r"is empty \(0 bytes\)"),
    "blank-lines-only": (lambda: b"\r\n\r\n  \r\n", {}, r"is empty"),
    "unknown-labels": (
        lambda: (phrasebank_text() + "Shares soared@bullish\r\nShares sank@bearish\r\n").encode(),
        {},
        r"unknown labels 'bullish' \(1 rows\), 'bearish' \(1 rows\): map them with data.label_map",
    ),
    "single-class": (
        lambda: phrasebank_text(labels=("neutral",)).encode(),
        {},
        r"no negative or positive examples \(only neutral \(10\)\)",
    ),
    "too-few-of-a-class": (
        lambda: phrasebank_text(labels=("neutral", "positive")).encode() + b"Down@negative\r\n",
        {},
        r"too few rows of negative \(1\)",
    ),
}


class TestBadInput:
    @pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
    def test_refused_with_one_line_and_nothing_written(self, case, tmp_path):
        make, overrides, message = BAD_INPUTS[case]
        uri = write(tmp_path, "input.zip" if case.startswith(("html", "zip")) else "input.txt", make())
        with pytest.raises(DataError, match=message) as info:
            prepare_dataset(DataConfig(uri=uri, **overrides), tmp_path / "work")
        assert "\n" not in str(info.value)
        assert_nothing_written(tmp_path / "work")

    def test_missing_local_path(self, tmp_path):
        with pytest.raises(DataError, match=r"data file .*nope.zip does not exist: check data.uri / FINSENT_DATA_URI"):
            prepare_dataset(DataConfig(uri=str(tmp_path / "nope.zip")), tmp_path / "work")
        assert_nothing_written(tmp_path / "work")

    def test_unreachable_url(self, tmp_path):
        uri = f"http://127.0.0.1:{_closed_port()}/data.zip"
        with pytest.raises(DataUnavailableError, match=r"cannot reach http://127.0.0.1:\d+/data.zip \(ConnectError"):
            prepare_dataset(DataConfig(uri=uri), tmp_path / "work")
        assert_nothing_written(tmp_path / "work")

    def test_unsupported_scheme(self, tmp_path):
        with pytest.raises(DataError, match=r"unsupported data URI scheme 's3'"):
            prepare_dataset(DataConfig(uri="s3://bucket/data.zip"), tmp_path)


class TestHttpSource:
    def test_download_matches_local_and_hides_tokens(self, http_server, tmp_path):
        body = phrasebank_zip()
        url = http_server.add("/data.zip", body)
        remote = prepare_dataset(DataConfig(uri=url + "?token=s3cr3t-token"), tmp_path / "a")
        local = prepare_dataset(DataConfig(uri=write(tmp_path, "d.zip", body)), tmp_path / "b")
        assert remote.fingerprint == local.fingerprint
        assert remote.manifest["source"]["uri"] == url
        assert "s3cr3t-token" not in (remote.directory / "manifest.json").read_text()

    def test_html_error_page_with_200(self, http_server, tmp_path):
        url = http_server.add("/login.zip", b"<html><body>Please log in</body></html>", content_type="text/html")
        with pytest.raises(DataError, match=r"returned an HTML page"):
            prepare_dataset(DataConfig(uri=url), tmp_path)
        assert_nothing_written(tmp_path)

    def test_404_is_not_retried(self, http_server, tmp_path):
        with pytest.raises(DataError, match=r"answered HTTP 404 Not Found: check the URL") as info:
            prepare_dataset(DataConfig(uri=http_server.url + "/missing.zip"), tmp_path)
        assert not isinstance(info.value, DataUnavailableError)

    def test_503_is_transient(self, http_server, tmp_path):
        url = http_server.add("/busy.zip", b"busy", status=503)
        with pytest.raises(DataUnavailableError, match=r"answered HTTP 503 .*retry later"):
            prepare_dataset(DataConfig(uri=url), tmp_path)


class TestGsSource:
    def test_fetch_from_bucket(self, storage, gcs_bucket, tmp_path):
        storage.bucket(gcs_bucket).blob("raw/pb.zip").upload_from_string(phrasebank_zip())
        prepared = prepare_dataset(DataConfig(uri=f"gs://{gcs_bucket}/raw/pb.zip"), tmp_path, storage=storage)
        assert prepared.manifest["counts"]["all"]["total"] == 30
        with pytest.raises(DataError, match=rf"gs://{gcs_bucket}/raw/absent.zip does not exist"):
            prepare_dataset(DataConfig(uri=f"gs://{gcs_bucket}/raw/absent.zip"), tmp_path / "x", storage=storage)


class TestUpload:
    @pytest.fixture
    def prepared(self, tmp_path):
        return prepare_dataset(DataConfig(uri=write(tmp_path, "pb.zip", phrasebank_zip())), tmp_path / "work")

    def test_content_addressed_and_uploaded_once(self, storage, layout, gcs_bucket, prepared):
        folder, uploaded = upload_dataset(storage, layout, prepared)
        assert folder == layout.dataset_dir(prepared.fingerprint)
        assert uploaded == sum(p.stat().st_size for p in prepared.files)
        names = sorted(f"gs://{gcs_bucket}/{blob.name}" for blob in storage.list_blobs(gcs_bucket))
        assert names == sorted(layout.dataset_file(prepared.fingerprint, p.name) for p in prepared.files)
        assert upload_dataset(storage, layout, prepared) == (folder, 0)
        assert gcs.read_json(storage, layout.dataset_file(prepared.fingerprint, "manifest.json")) == prepared.manifest

    def test_manifest_goes_last_and_a_partial_upload_completes(self, storage, layout, prepared, monkeypatch):
        from google.api_core import exceptions as gexc

        real = gcs.upload_if_absent
        order = []

        def fail_on_manifest(client, local, uri):
            order.append(Path(uri).name)
            if uri.endswith("manifest.json"):
                raise gexc.ServiceUnavailable("injected")
            return real(client, local, uri)

        monkeypatch.setattr(gcs, "upload_if_absent", fail_on_manifest)
        with pytest.raises(gexc.ServiceUnavailable):
            upload_dataset(storage, layout, prepared)
        assert order == ["train.csv", "validation.csv", "test.csv", "manifest.json"]
        manifest_uri = layout.dataset_file(prepared.fingerprint, "manifest.json")
        assert not gcs.exists(storage, manifest_uri)  # incomplete: not a data set yet
        monkeypatch.setattr(gcs, "upload_if_absent", real)
        _, uploaded = upload_dataset(storage, layout, prepared)
        assert uploaded == (prepared.directory / "manifest.json").stat().st_size


class TestTask:
    def test_fn_runs_without_prefect_server(self, tmp_path):
        from prefect.logging import disable_run_logger

        uri = write(tmp_path, "pb.zip", phrasebank_zip())
        with disable_run_logger():
            prepared = fetch_dataset.fn(DataConfig(uri=uri), tmp_path / "w")
        assert prepared.directory.parent == tmp_path / "w" / "datasets"
        assert fetch_dataset.name == "fetch-dataset" and fetch_dataset.retries == 2
        assert fetch_dataset.retry_condition_fn is retry_if_transient

    def test_an_unreachable_source_is_retried_and_bad_data_is_not(self, http_server, tmp_path):
        def verdict(uri: str) -> bool:
            with pytest.raises(DataError) as info:
                prepare_dataset(DataConfig(uri=uri), tmp_path)
            return retry_if_transient(None, None, failed_state(info.value))

        assert verdict(http_server.add("/busy2.zip", b"busy", status=503)) is True
        assert verdict(http_server.url + "/missing.zip") is False
        assert verdict(write(tmp_path, "bad.csv", b"text,label\nx,maybe\n")) is False
