"""Raw bytes -> text: refuse HTML pages, take the wanted member out of a zip, then find the character encoding."""

from __future__ import annotations

import codecs
import io
import unicodedata
import zipfile
from pathlib import Path

import chardet

from tasks.errors import DataError


def looks_like_html(raw: bytes) -> bool:
    head = raw[:2048].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return head.startswith((b"<!doctype html", b"<html", b"<head", b"<?xml")) or b"<html" in head[:512]


def _is_zip(raw: bytes) -> bool:
    return raw[:4] in (b"PK\x03\x04", b"PK\x05\x06")


def _pick_member(archive: zipfile.ZipFile, wanted: str, source: str) -> str:
    members = [
        info.filename
        for info in archive.infolist()
        if not info.is_dir() and not info.filename.startswith("__MACOSX/") and not Path(info.filename).name.startswith("._")
    ]
    matches = [m for m in members if m == wanted or Path(m).name == wanted]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        listing = ", ".join(Path(m).name for m in members) or "none"
        raise DataError(f"{source} has no member {wanted!r} (members: {listing}): set data.phrasebank_file to one of them")
    raise DataError(f"{source} has several members named {wanted!r} ({matches}): give the full path in data.phrasebank_file")


def unpack(raw: bytes, member_name: str, source: str) -> tuple[bytes, str | None]:
    """(payload, zip member or None): a zip yields its member `member_name`, anything else is its own payload."""
    if not _is_zip(raw):
        return raw, None
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as archive:
            member = _pick_member(archive, member_name, source)
            payload = archive.read(member)
    except zipfile.BadZipFile as exc:
        raise DataError(f"{source} is a damaged zip ({exc}): download it again or check data.uri") from None
    if not payload.strip():
        raise DataError(f"{source} member {member} is empty: choose another data.phrasebank_file")
    return payload, member


def _normal_codec(name: str) -> str:
    return codecs.lookup(name).name


def _control_ratio(text: str) -> float:
    sample = text[:200_000]
    if not sample:
        return 0.0
    bad = sum(1 for ch in sample if ch not in "\t\r\n" and unicodedata.category(ch) in ("Cc", "Cs", "Co", "Cn"))
    return bad / len(sample)


def decode_text(raw: bytes, source: str) -> tuple[str, str, float]:
    """Decode bytes to text; returns (text, codec name, confidence).

    Strict UTF-8 wins when it decodes (chardet can misname short UTF-8 text); otherwise chardet's guess, with
    cp1252 as the fallback for a low-confidence guess (the usual encoding of Western financial text). Text that
    only decodes into control characters is binary, not data.
    """
    if raw.startswith(codecs.BOM_UTF8):
        candidates = [("utf-8-sig", 1.0)]
    else:
        candidates = [("utf-8", 1.0)]
        guess = chardet.detect(raw[:1_000_000])
        encoding, confidence = guess.get("encoding"), float(guess.get("confidence") or 0.0)
        if encoding:
            try:
                candidates.append((_normal_codec(encoding), confidence))
            except LookupError:
                pass
            if confidence < 0.2:
                candidates.append(("cp1252", confidence))
    for codec, confidence in candidates:
        try:
            text = raw.decode(codec)
        except (UnicodeDecodeError, LookupError):
            continue
        if "\x00" in text or _control_ratio(text) > 0.01:
            continue
        return text, _normal_codec(codec), round(confidence, 3)
    raise DataError(
        f"cannot decode {source} as text (no encoding fits; binary or corrupt file?): check that data.uri points at a CSV or the PhraseBank zip"
    )
