"""Alerts computed from what devices report: rules in a registry, thresholds in one YAML file.

A rule looks at a device's newest telemetry (or, for ``offline``, at the clock) and says
breached or not, or nothing when the device does not report what the rule needs. An alert is
a row in the database: opened the first time a rule is breached, resolved the first time it
is not, whichever ingest process sees it (the database keeps one open alert per (device,
rule)). Each open and resolve is published to MQTT and, if configured, POSTed to a webhook
from a background thread (a slow webhook never slows ingest).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import urllib.request
from collections.abc import Callable
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from sync.console.records import sources_down
from sync.console.store import TELEMETRY, Store, drift_psi, finite
from sync.errors import ConfigError

log = logging.getLogger("sync.console.alerts")


@dataclass(frozen=True)
class Verdict:
    breached: bool
    value: float
    threshold: float
    message: str


@dataclass(frozen=True)
class Context:
    """What a rule may know besides the telemetry: the device's row and recent history."""

    baseline_ms: float | None = None
    outbox_history: Callable[[], tuple[float, ...]] = tuple  # newest first; asked only if needed


@dataclass(frozen=True)
class AlertNotice:
    """What is published when an alert opens or resolves."""

    event: str  # "open" | "resolved"
    device: str
    rule: str
    at: float
    value: float | None = None
    threshold: float | None = None
    message: str = ""


def _num(values: dict[str, Any], key: str) -> float | None:
    return finite(values.get(key))  # None for a 400-digit integer, not OverflowError


def _latency(v: dict[str, Any], ctx: Context, p: dict[str, Any]) -> Verdict | None:
    p95 = _num(v, "latency_p95_ms")
    base = _num(v, "latency_baseline_ms") or ctx.baseline_ms
    if p95 is None or not base:
        return None
    limit = p["factor"] * base
    return Verdict(p95 > limit, p95, limit,
                   f"p95 latency {p95:.1f} ms > {p['factor']:g}x baseline {base:.1f} ms")


def _throughput(v: dict[str, Any], ctx: Context, p: dict[str, Any]) -> Verdict | None:
    fps, capacity = _num(v, "fps"), _num(v, "capacity_fps")
    if fps is None or not capacity:
        return None
    limit = p["min_fraction"] * capacity
    return Verdict(fps < limit, fps, limit,
                   f"{fps:.1f} fps < {p['min_fraction']:.0%} of capacity {capacity:.1f} fps")


def _error_rate(v: dict[str, Any], ctx: Context, p: dict[str, Any]) -> Verdict | None:
    rate = _num(v, "error_rate")
    errors, frames = _num(v, "inference_errors"), _num(v, "frames")
    if rate is None and errors is not None and frames:
        rate = errors / frames
    if rate is None:
        return None
    return Verdict(rate > p["max"], rate, p["max"],
                   f"inference error rate {rate:.2%} > {p['max']:.0%}")


def _drift(v: dict[str, Any], ctx: Context, p: dict[str, Any]) -> Verdict | None:
    psi = drift_psi(v)
    if psi is None:
        return None
    return Verdict(psi > p["max"], psi, p["max"], f"input drift PSI {psi:.2f} > {p['max']:g}")


def _quality(v: dict[str, Any], ctx: Context, p: dict[str, Any]) -> Verdict | None:
    rate = _num(v, "quality_anomaly_rate")
    if rate is None:
        return None
    return Verdict(rate > p["max"], rate, p["max"],
                   f"{rate:.1%} of frames blank, frozen or badly exposed > {p['max']:.0%}")


def _outbox(v: dict[str, Any], ctx: Context, p: dict[str, Any]) -> Verdict | None:
    depth = _num(v, "outbox_depth")
    if depth is None:
        return None
    if depth < p["min_depth"]:  # no history needed (and no query) to say "not growing"
        return Verdict(False, depth, p["min_depth"], f"outbox at {depth:.0f} messages")
    depths = ctx.outbox_history()[: p["samples"]]
    if len(depths) < p["samples"]:
        return None
    growing = all(a > b for a, b in zip(depths, depths[1:])) and depths[0] >= p["min_depth"]
    return Verdict(growing, depths[0], p["min_depth"],
                   f"outbox grew for {p['samples']} reports, now {depths[0]:.0f} messages")


def _sources_down(v: dict[str, Any], ctx: Context, p: dict[str, Any]) -> Verdict | None:
    down = sources_down(v)
    if down is None:
        return None
    names = ", ".join(down)
    return Verdict(len(down) > p["max"], len(down), p["max"],
                   f"{len(down)} source(s) down: {names:.300}")


Rule = Callable[[dict[str, Any], Context, dict[str, Any]], "Verdict | None"]
_POSITIVE = {"type": "number", "exclusiveMinimum": 0}
_FRACTION = {"type": "number", "minimum": 0, "maximum": 1}
# name -> (evaluate, schema of its parameters); `offline` is checked by the clock, not here.
TELEMETRY_RULES: dict[str, tuple[Rule, dict[str, Any]]] = {
    "latency_p95": (_latency, {"factor": _POSITIVE}),
    "throughput": (_throughput, {"min_fraction": _FRACTION}),
    "error_rate": (_error_rate, {"max": _FRACTION}),
    "drift_psi": (_drift, {"max": _POSITIVE}),
    "data_quality": (_quality, {"max": _FRACTION}),
    "outbox_growing": (_outbox, {"samples": {"type": "integer", "minimum": 2, "maximum": 100},
                                 "min_depth": {"type": "number", "minimum": 0}}),
    "sources_down": (_sources_down, {"max": {"type": "integer", "minimum": 0}}),
}
OFFLINE_SCHEMA = {"minutes": _POSITIVE}


def _schema() -> dict[str, Any]:
    def rule(params: dict[str, Any]) -> dict[str, Any]:
        return {"type": "object", "additionalProperties": False,
                "properties": {"enabled": {"type": "boolean"}, **params}}  # fmt: skip

    props = {name: rule(params) for name, (_, params) in TELEMETRY_RULES.items()}
    props["offline"] = rule(OFFLINE_SCHEMA)
    return {"type": "object", "additionalProperties": False, "properties": props}


def default_rules() -> dict[str, dict[str, Any]]:
    text = (resources.files("sync.console") / "alerts.yaml").read_text("utf-8")
    return yaml.safe_load(text)


def load_rules(path: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """The defaults overlaid by ``path``; a wrong name or value is one ``ConfigError`` line."""
    rules = default_rules()
    if path is None:
        return rules
    try:
        user = yaml.safe_load(Path(path).read_text("utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read alerts file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        what = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(f"alerts file {where}: not valid YAML: {what}") from None
    user = user or {}
    try:
        jsonschema.validate(user, _schema())
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "top level"
        raise ConfigError(
            f"alerts file {path}: {where}: {exc.message} (rules: "
            f"{', '.join([*TELEMETRY_RULES, 'offline'])}; see the default alerts.yaml)"
        ) from None
    for name, params in user.items():
        rules[name] = {**rules.get(name, {}), **params}
    return rules


class Notifier:
    """Publishes notices to MQTT and POSTs them to a webhook, off the caller's thread."""

    def __init__(self, publish: Callable[[AlertNotice], None] | None = None,
                 webhook: str | None = None, maxsize: int = 10_000) -> None:
        self.publish = publish
        self.webhook = webhook
        self.errors = 0
        self.sent = 0
        self._queue: queue.Queue[AlertNotice | None] = queue.Queue(maxsize=maxsize)
        self._thread = threading.Thread(target=self._run, name="console-notify", daemon=True)
        self._thread.start()

    def notify(self, notice: AlertNotice) -> None:
        try:
            self._queue.put_nowait(notice)
        except queue.Full:
            self.errors += 1
            log.error("alert notices are backing up; dropped %s %s/%s", notice.event,
                      notice.device, notice.rule)  # fmt: skip

    def _run(self) -> None:
        while (notice := self._queue.get()) is not None:
            for send in (self._mqtt, self._post):
                try:
                    send(notice)
                except Exception as exc:  # a bad webhook must not end notifications
                    self.errors += 1
                    log.warning("alert notice %s/%s not delivered: %r", notice.device,
                                notice.rule, exc)  # fmt: skip

    def _mqtt(self, notice: AlertNotice) -> None:
        if self.publish is not None:
            self.publish(notice)
            self.sent += 1

    def _post(self, notice: AlertNotice) -> None:
        if not self.webhook:
            return
        body = json.dumps(asdict(notice)).encode()
        req = urllib.request.Request(self.webhook, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(req, timeout=5) as resp:
            resp.read()

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued within ``timeout`` seconds; give up on the rest (a stuck
        webhook or broker never holds up shutdown)."""
        deadline = time.monotonic() + timeout
        with suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            log.warning("%d alert notices not sent at shutdown (webhook or broker too slow)",
                        self._queue.qsize())  # fmt: skip


@dataclass
class AlertEngine:
    store: Store
    rules: dict[str, dict[str, Any]]
    notifier: Notifier | None = None
    opened: int = 0
    resolved: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def enabled(self, name: str) -> dict[str, Any] | None:
        params = self.rules.get(name)
        return params if params is not None and params.get("enabled", True) else None

    def on_batch(self, batch: Any) -> None:
        """Ingest hook: evaluate each device's newest telemetry in a committed batch."""
        latest: dict[str, Any] = {}
        for m in batch.messages:
            if m.stream == TELEMETRY and (m.device not in latest or m.ts >= latest[m.device].ts):
                latest[m.device] = m
        if latest:
            self.evaluate({device: json.loads(m.payload) for device, m in latest.items()})

    def on_telemetry(self, device: str, values: dict[str, Any], at: float | None = None) -> None:
        self.evaluate({device: values}, at)

    def evaluate(self, reports: dict[str, Any], at: float | None = None) -> None:
        """Every telemetry rule on each device's newest report. Two queries per call, not per
        device (open alerts, baselines); the database is written only when a state changes.
        One device whose report breaks a rule is logged and skipped: the others are still
        evaluated, then the first failure is raised (the ingest counts it as a hook error)."""
        at = time.time() if at is None else at
        open_now = self.store.open_alert_keys()
        baselines = self.store.baselines(list(reports))
        failed: list[Exception] = []
        for device, values in reports.items():
            if not isinstance(values, dict):
                continue
            ctx = Context(baselines.get(device), lambda d=device: self._outbox_history(d))
            try:
                for name, (rule, _) in TELEMETRY_RULES.items():
                    params = self.enabled(name)
                    if params is not None:
                        self._apply(device, name, rule(values, ctx, params), at,
                                    (device, name) in open_now)  # fmt: skip
            except Exception as exc:
                log.warning("alert rules failed for %s: %r", device, exc)
                failed.append(exc)
        if failed:
            raise failed[0]

    def sweep(self, now: float | None = None) -> None:
        """The clock's rule: open ``offline`` for devices silent too long, resolve the rest."""
        params = self.enabled("offline")
        if params is None:
            return
        now = time.time() if now is None else now
        limit = params["minutes"] * 60
        open_now = self.store.open_alert_keys()
        for row in self.store.query("SELECT device, last_seen FROM devices"):
            seen = row["last_seen"]
            if seen is None:
                continue
            silent = max(0.0, now - seen)
            verdict = Verdict(silent > limit, silent / 60, params["minutes"],
                              f"nothing heard for {silent / 60:.1f} min "
                              f"(limit {params['minutes']:g} min)")  # fmt: skip
            self._apply(row["device"], "offline", verdict, now,
                        (row["device"], "offline") in open_now)  # fmt: skip

    def _outbox_history(self, device: str) -> tuple[float, ...]:
        params = self.enabled("outbox_growing")
        if params is None:
            return ()
        rows = self.store.query(
            "SELECT payload FROM messages WHERE device = ? AND stream = ? ORDER BY ts DESC"
            " LIMIT ?", (device, TELEMETRY, params["samples"]))
        depths = [_num(json.loads(r["payload"]), "outbox_depth") for r in rows]
        return tuple(d for d in depths if d is not None)

    def _apply(self, device: str, rule: str, verdict: Verdict | None, at: float,
               is_open: bool) -> None:  # fmt: skip
        """Open or resolve on a change; the database arbitrates between processes."""
        if verdict is None or verdict.breached == is_open:
            return
        with self._lock:
            if verdict.breached:
                # finite(): an infinite value (1e308 errors / 1e-308 frames) would make the
                # alert rows unreadable as JSON for the API
                if self.store.open_alert(device, rule, at, finite(verdict.value),
                                         finite(verdict.threshold), verdict.message):
                    self.opened += 1
                    self._notify("open", device, rule, at, verdict)
            elif self.store.resolve_alert(device, rule, at):
                self.resolved += 1
                self._notify("resolved", device, rule, at, verdict)

    def _notify(self, event: str, device: str, rule: str, at: float, v: Verdict) -> None:
        log.info("alert %s: %s %s (%s)", event, device, rule, v.message)
        if self.notifier is not None:
            self.notifier.notify(AlertNotice(event, device, rule, at, v.value, v.threshold,
                                             v.message))  # fmt: skip
