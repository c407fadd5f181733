"""Injected faults (see docs/emulators.md, "Fault rules"): the payload shapes, their checks, and their countdowns.

- `rules`: per request (HTTP errors, delays, commit-then-drop on create), consumed in the order given: each request
  takes the first matching rule with uses left.
- `preempt`: spot-like preemption, counted per preemption.
- `fail` and `hold`: claimed by each new job at create (the next `times` jobs), kept on its record.
- `cancel_outcome`: claimed by each accepted cancel (the next `times` cancels).

Every key of a payload, at any depth, is checked: an unknown key, a missing required one or a wrong type or value
raises InvalidArgument (HTTP 400) naming it, so a misspelled fault cannot let a test pass without injecting anything.
`times` <= 0 means forever everywhere.
"""

from __future__ import annotations

import copy
import threading
from dataclasses import asdict, dataclass
from typing import Callable

from emulators.vertex.errors import InvalidArgument

#: The API methods a rule can target: the CustomJob API's, and Cloud Logging's entries:list ("list_log_entries").
METHODS = ("create", "get", "list", "cancel", "delete", "list_log_entries")
#: States a `hold` keeps a job in: QUEUED before it starts (a quota wait), PAUSED/UPDATING once it runs.
HOLD_STATES = ("QUEUED", "PAUSED", "UPDATING")
#: Where a cancel that loses the race ends (job_state.proto: CANCELLING may end SUCCEEDED, FAILED or CANCELLED).
CANCEL_OUTCOMES = ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED")
#: Top-level keys of `POST /emulator/v1/faults` (a bare rule object, with `method`, is accepted too).
PAYLOAD_KEYS = ("rules", "preempt", "fail", "hold", "cancel_outcome")

_REQUIRED = object()


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_seconds(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0


def _one_of(values: tuple[str, ...]) -> tuple[str, Callable[[object], bool]]:
    return f"one of {', '.join(values)}", lambda v: v in values


_TIMES = ("an integer (<= 0: forever)", _is_int, 1)
_SECONDS = ("a number >= 0", _is_seconds)
#: key -> (what it must be, check, default or _REQUIRED)
RULE_FIELDS = {
    "method": (*_one_of(METHODS), _REQUIRED),
    "status": ("an HTTP error status 400-599", lambda v: v is None or (_is_int(v) and 400 <= v <= 599), None),
    "times": _TIMES,
    "commit_then_drop": ("true or false", lambda v: isinstance(v, bool), False),
    "delay_seconds": (*_SECONDS, 0.0),
    "message": ("a string", lambda v: v is None or isinstance(v, str), None),
}
PREEMPT_FIELDS = {"after_seconds": (*_SECONDS, _REQUIRED), "times": _TIMES}
FAIL_FIELDS = {
    "after_seconds": (*_SECONDS, 0.0),
    "code": ("a google.rpc code 1-16", lambda v: _is_int(v) and 1 <= v <= 16, _REQUIRED),
    "message": ("a non-empty string", lambda v: isinstance(v, str) and v != "", _REQUIRED),
    "times": _TIMES,
}
HOLD_FIELDS = {"state": (*_one_of(HOLD_STATES), _REQUIRED), "seconds": (*_SECONDS, _REQUIRED), "times": _TIMES}
CANCEL_OUTCOME_FIELDS = {"state": (*_one_of(CANCEL_OUTCOMES), _REQUIRED), "times": _TIMES}


def check_fields(data: object, where: str, fields: dict[str, tuple]) -> dict:
    """`data` checked against `fields` ({key: (what, check, default)}), defaults filled in; InvalidArgument naming
    the first unknown, missing or wrong key."""
    if not isinstance(data, dict):
        raise InvalidArgument(f"{where} must be a JSON object, got {data!r}")
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise InvalidArgument(f"unknown key {unknown[0]!r} in {where} (known keys: {', '.join(fields)})")
    out = {}
    for key, (what, check, default) in fields.items():
        if key not in data:
            if default is _REQUIRED:
                raise InvalidArgument(f"{where}.{key} is required: {what}")
            out[key] = default
        elif check(data[key]):
            out[key] = data[key]
        else:
            raise InvalidArgument(f"{where}.{key} must be {what}, got {data[key]!r}")
    return out


@dataclass
class FaultRule:
    """One per-request rule. `times` <= 0 means forever.

    - `status`: answer this HTTP status (Google error envelope) instead of serving the call.
    - `commit_then_drop` (create only): create and start the job, then answer `status` (default 503).
    - `delay_seconds`: sleep before serving (combine with the client's timeout to simulate a hang).
    """

    method: str
    status: int | None = None
    times: int = 1
    commit_then_drop: bool = False
    delay_seconds: float = 0.0
    message: str | None = None
    used: int = 0

    @property
    def exhausted(self) -> bool:
        return self.times > 0 and self.used >= self.times

    @classmethod
    def parse(cls, data: object, where: str = "rule") -> "FaultRule":
        rule = cls(**check_fields(data, where, RULE_FIELDS))
        if rule.commit_then_drop and rule.method != "create":
            raise InvalidArgument(f"{where}.commit_then_drop only applies to method 'create'")
        if rule.commit_then_drop and rule.status is None:
            rule.status = 503
        if rule.status is None and not rule.delay_seconds:
            raise InvalidArgument(f"{where} needs 'status', 'commit_then_drop' or 'delay_seconds'")
        return rule


@dataclass
class PreemptRule:
    """Preempt each running job's replicas `after_seconds` after they started, `times` times in total."""

    after_seconds: float
    times: int = 1
    used: int = 0

    @classmethod
    def parse(cls, data: object) -> "PreemptRule":
        return cls(**check_fields(data, "preempt", PREEMPT_FIELDS))


def _take(armed: dict | None) -> dict | None:
    """One use of an armed per-job fault (a dict with `times` and `used`): its settings, or None when spent."""
    if armed is None or (armed["times"] > 0 and armed["used"] >= armed["times"]):
        return None
    armed["used"] += 1
    return {k: v for k, v in armed.items() if k not in ("times", "used")}


class Faults:
    """Thread-safe fault configuration shared by the routes (HTTP faults, cancel outcomes) and the job driver."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []
        self._preempt: PreemptRule | None = None
        self._per_job: dict[str, dict | None] = {"fail": None, "hold": None, "cancel_outcome": None}

    def configure(self, payload: object) -> None:
        """Add rules and arm faults from a payload (PAYLOAD_KEYS; a bare rule object is accepted too). All or
        nothing: the payload is checked whole before anything changes. `preempt`, `fail`, `hold` and
        `cancel_outcome` replace the armed one of their kind."""
        if isinstance(payload, dict) and "method" in payload:
            payload = {"rules": [payload]}
        if not isinstance(payload, dict):
            raise InvalidArgument(f"the faults payload must be a JSON object, got {payload!r}")
        unknown = sorted(set(payload) - set(PAYLOAD_KEYS))
        if unknown:
            raise InvalidArgument(f"unknown key {unknown[0]!r} in the faults payload "
                                  f"(known keys: {', '.join(PAYLOAD_KEYS)}, or a bare rule with 'method')")
        raw_rules = payload.get("rules") or []
        if not isinstance(raw_rules, list):
            raise InvalidArgument(f"rules must be a list of rule objects, got {raw_rules!r}")
        rules = [FaultRule.parse(r, f"rules[{i}]") for i, r in enumerate(raw_rules)]
        preempt = PreemptRule.parse(payload["preempt"]) if payload.get("preempt") is not None else None
        per_job = {key: {**check_fields(payload[key], key, fields), "used": 0}
                   for key, fields in (("fail", FAIL_FIELDS), ("hold", HOLD_FIELDS),
                                       ("cancel_outcome", CANCEL_OUTCOME_FIELDS))
                   if payload.get(key) is not None}
        with self._lock:
            self._rules.extend(rules)
            if preempt is not None:
                self._preempt = preempt
            self._per_job.update(per_job)

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()
            self._preempt = None
            self._per_job = dict.fromkeys(self._per_job)

    def take(self, method: str) -> FaultRule | None:
        """Consume and return the first rule with uses left that matches `method`."""
        with self._lock:
            for rule in self._rules:
                if rule.method == method and not rule.exhausted:
                    rule.used += 1
                    return rule
        return None

    def take_preempt(self, running_seconds: float) -> bool:
        """True (and one use consumed) if a replica running for `running_seconds` is to be preempted now."""
        with self._lock:
            rule = self._preempt
            if rule is None or running_seconds < rule.after_seconds:
                return False
            if rule.times > 0 and rule.used >= rule.times:
                return False
            rule.used += 1
            return True

    def claim_for_new_job(self) -> dict:
        """The `fail` and `hold` a job being created takes (one use each): {"fail": {...}, "hold": {...}}, only
        the armed ones. The job keeps them on its record, so they survive an emulator restart."""
        with self._lock:
            claimed = {key: _take(self._per_job[key]) for key in ("fail", "hold")}
        return {k: v for k, v in claimed.items() if v is not None}

    def claim_cancel_outcome(self) -> dict | None:
        """The `cancel_outcome` an accepted cancel takes (one use): {"state": ...}, or None."""
        with self._lock:
            return _take(self._per_job["cancel_outcome"])

    def snapshot(self) -> dict:
        """What is armed: `GET /emulator/v1/faults`."""
        with self._lock:
            return {
                "rules": [asdict(r) for r in self._rules],
                "preempt": asdict(self._preempt) if self._preempt else None,
                **copy.deepcopy(self._per_job),
            }


def quota_metric(job: dict) -> str:
    """The Vertex training quota metric a normalised CustomJob draws on: its first GPU's, else CPUs'.

    Real metric names, as users report them in 429 and job errors: ..._nvidia_t4_gpus, ..._nvidia_l4_gpus,
    ..._nvidia_k80_gpus (GoogleCloudPlatform/stable-diffusion-on-gcp#12, vertex-ai-samples#700), ..._cpus (the same
    errors quoted in projects' notes). H100s count as `nvidia_h100` (the memory size is not in the name: third-party
    quota notes; unconfirmed by a Google page); other types are the enum name lower-cased without `tesla_`.
    """
    for pool in (job.get("jobSpec") or {}).get("workerPoolSpecs") or []:
        gpu = ((pool or {}).get("machineSpec") or {}).get("acceleratorType")
        if gpu and gpu != "ACCELERATOR_TYPE_UNSPECIFIED":
            name = {"NVIDIA_H100_80GB": "NVIDIA_H100", "NVIDIA_H100_MEGA_80GB": "NVIDIA_H100_MEGA"}.get(gpu, gpu)
            return f"aiplatform.googleapis.com/custom_model_training_{name.lower().replace('tesla_', '')}_gpus"
    return "aiplatform.googleapis.com/custom_model_training_cpus"


def quota_exceeded_message(job: dict) -> str:
    """Vertex's answer to a create over quota (HTTP 429, RESOURCE_EXHAUSTED), verbatim but for the metric:
    GoogleCloudPlatform/stable-diffusion-on-gcp issue #12 (`gcloud ai custom-jobs create`, 2023-12-03)."""
    return f"The following quota metrics exceed quota limits: {quota_metric(job)}"
