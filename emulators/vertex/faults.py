"""Injected faults: per-method HTTP errors, delays, commit-then-drop on create, and spot-like preemption.

Rules are consumed in the order given: each request takes the first matching rule with uses left.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass

from emulators.vertex.errors import InvalidArgument

METHODS = ("create", "get", "list", "cancel", "delete")


@dataclass
class FaultRule:
    """One rule. `times` <= 0 means forever.

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
    def parse(cls, data: dict) -> "FaultRule":
        if not isinstance(data, dict):
            raise InvalidArgument(f"fault rule must be an object, got {data!r}")
        unknown = set(data) - {"method", "status", "times", "commit_then_drop", "delay_seconds", "message"}
        if unknown:
            raise InvalidArgument(f"unknown fault rule keys: {sorted(unknown)}")
        method = data.get("method")
        if method not in METHODS:
            raise InvalidArgument(f"fault rule method must be one of {METHODS}, got {method!r}")
        rule = cls(
            method=method,
            status=data.get("status"),
            times=int(data.get("times", 1)),
            commit_then_drop=bool(data.get("commit_then_drop", False)),
            delay_seconds=float(data.get("delay_seconds", 0.0)),
            message=data.get("message"),
        )
        if rule.commit_then_drop and method != "create":
            raise InvalidArgument("commit_then_drop only applies to method 'create'")
        if rule.commit_then_drop and rule.status is None:
            rule.status = 503
        if rule.status is not None and not 400 <= int(rule.status) <= 599:
            raise InvalidArgument(f"fault status must be an HTTP error status (400-599), got {rule.status!r}")
        if rule.status is None and not rule.delay_seconds:
            raise InvalidArgument("a fault rule needs 'status', 'commit_then_drop' or 'delay_seconds'")
        return rule


@dataclass
class PreemptRule:
    """Preempt each running job's replicas `after_seconds` after they started, `times` times in total."""

    after_seconds: float
    times: int = 1
    used: int = 0

    @classmethod
    def parse(cls, data: dict) -> "PreemptRule":
        if not isinstance(data, dict) or "after_seconds" not in data:
            raise InvalidArgument(f"preempt must be an object with after_seconds, got {data!r}")
        return cls(after_seconds=float(data["after_seconds"]), times=int(data.get("times", 1)))


class Faults:
    """Thread-safe fault configuration shared by the routes (HTTP faults) and the job driver (preemption)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []
        self._preempt: PreemptRule | None = None

    def configure(self, payload: dict) -> None:
        """Add rules from `{"rules": [...], "preempt": {...}}` (a bare rule object is accepted too)."""
        if "method" in payload:
            payload = {"rules": [payload]}
        rules = [FaultRule.parse(r) for r in payload.get("rules", [])]
        preempt = PreemptRule.parse(payload["preempt"]) if payload.get("preempt") else None
        with self._lock:
            self._rules.extend(rules)
            if preempt is not None:
                self._preempt = preempt

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()
            self._preempt = None

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

    def snapshot(self) -> dict:
        with self._lock:
            return {
                "rules": [asdict(r) for r in self._rules],
                "preempt": asdict(self._preempt) if self._preempt else None,
            }
