"""The subset of AIP-160 list filters Vertex documents for CustomJobs, joined with AND.

Supported terms: `labels.KEY="V"`, `labels.KEY:*`, `labels.KEY!="V"`, `state=JOB_STATE_X` (or `!=`),
`display_name="..."` (`=`, `!=`, `:` substring), `create_time>"RFC3339"` (and `<`, `>=`, `<=`). OR, NOT and
parentheses answer 400 INVALID_ARGUMENT.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Callable

from emulators.vertex.errors import InvalidArgument

_TERM = re.compile(
    r'^\s*(?P<field>labels\.(?:"[^"]+"|[\w-]+)|state|display_name|displayName|create_time|createTime)\s*'
    r'(?P<op>!=|>=|<=|=|:|>|<)\s*(?P<value>"(?:[^"\\]|\\.)*"|[^\s"]+)\s*$'
)

Predicate = Callable[[dict], bool]


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def _ts(value: str) -> dt.datetime:
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidArgument(f"Invalid timestamp {value!r} in filter.") from None


def _compare(op: str, left, right) -> bool:
    return {"=": left == right, "!=": left != right, ">": left > right, "<": left < right,
            ">=": left >= right, "<=": left <= right}[op]


def _term(text: str) -> Predicate:
    match = _TERM.match(text)
    if not match:
        raise InvalidArgument(f"Unsupported filter term {text.strip()!r}. Supported: labels.KEY=\"V\", labels.KEY:*, "
                              "state=JOB_STATE_X, display_name=\"...\", create_time>\"...\", joined with AND.")
    field, op, raw = match["field"], match["op"], match["value"]
    value = _unquote(raw)
    if field.startswith("labels."):
        key = _unquote(field[len("labels."):])
        if op == ":" and value == "*":
            return lambda job: key in (job.get("labels") or {})
        if op in ("=", ":"):
            return lambda job: (job.get("labels") or {}).get(key) == value
        if op == "!=":
            return lambda job: (job.get("labels") or {}).get(key) != value
    elif field == "state":
        if op in ("=", "!="):
            return lambda job: _compare(op, job.get("state"), value)
    elif field in ("display_name", "displayName"):
        if op == ":":
            return lambda job: value in job.get("displayName", "")
        if op in ("=", "!="):
            return lambda job: _compare(op, job.get("displayName", ""), value)
    else:
        if op not in (":",):
            bound = _ts(value)
            return lambda job: _compare(op, _ts(job["createTime"]), bound)
    raise InvalidArgument(f"Operator {op!r} is not supported for {field} in filter {text.strip()!r}.")


def parse_filter(text: str | None) -> Predicate:
    """Compile a filter string to a predicate over CustomJob resources (empty filter matches all)."""
    if not text or not text.strip():
        return lambda job: True
    if re.search(r"\bOR\b|\bNOT\b|[()]", text):
        raise InvalidArgument(f"Filter {text!r} uses OR, NOT or parentheses, which the emulator does not support.")
    predicates = [_term(part) for part in re.split(r"\s+AND\s+", text.strip())]
    return lambda job: all(p(job) for p in predicates)
