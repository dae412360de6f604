"""Where a server's engine time went during a load-test trial, read from its /metrics counters
(`edge_asr_engine_{seconds,calls,rows}_total{op=...}`, runtime/serving/metrics.py) before and after.

The split is what says whether batching can pay on a machine: only the decoder steps share an engine
call across streams, so the steps' share of the engine time bounds what batching can save, and rows
over calls is the batch the steps actually carried.
"""
from __future__ import annotations

import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from edge_asr.runtime.engines.timed import ENGINE_OPS

SCRAPE_TIMEOUT_S = 5.0
_SAMPLE = re.compile(r'^edge_asr_engine_(seconds|calls|rows)_total\{op="(\w+)"\} (\S+)$', re.MULTILINE)


def metrics_url(ws_url: str) -> str:
    """The server's /metrics beside its WebSocket address: ws://host:port/ -> http://host:port/metrics."""
    parts = urlsplit(ws_url)
    return urlunsplit(("https" if parts.scheme == "wss" else "http", parts.netloc, "/metrics", "", ""))


def parse_engine_counters(text: str) -> dict[str, dict[str, float]]:
    """{op: {"seconds": s, "calls": n, "rows": n}} from a Prometheus text exposition; {} if it has none."""
    counters: dict[str, dict[str, float]] = {}
    for name, op, value in _SAMPLE.findall(text):
        counters.setdefault(op, {})[name] = float(value)
    return counters


def scrape_engine(ws_url: str, token: str | None) -> dict[str, dict[str, float]] | None:
    """The engine counters now, or None when the server does not publish them (or cannot be read)."""
    request = urllib.request.Request(metrics_url(ws_url), headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=SCRAPE_TIMEOUT_S) as response:
            return parse_engine_counters(response.read().decode()) or None
    except (urllib.error.URLError, OSError, UnicodeDecodeError):
        return None


@dataclass(frozen=True)
class EngineSplit:
    """A trial's engine time, calls and rows by kind of call (ENGINE_OPS), each kind's share of that time,
    the engine's busy share of the wall time, and the rows a decoder step and an encoder call carried;
    None where there was nothing to divide by. asdict() gives a load-test trial's "engine"."""

    seconds: dict[str, float]
    calls: dict[str, int]
    rows: dict[str, int]
    share: dict[str, float | None]
    busy: float | None
    rows_per_step: float | None
    rows_per_encode: float | None
    ms_per_step_row: float | None


def engine_split(before: dict | None, after: dict | None, wall_s: float) -> EngineSplit | None:
    """Where the engine time between two scrapes went; None when either scrape failed."""
    if not before or not after or any(op not in before or op not in after for op in ENGINE_OPS):
        return None
    delta = {op: {k: after[op][k] - before[op].get(k, 0.0) for k in after[op]} for op in ENGINE_OPS}
    total = sum(d["seconds"] for d in delta.values())
    steps = delta["step"]
    return EngineSplit(
        seconds={op: d["seconds"] for op, d in delta.items()},
        calls={op: int(d["calls"]) for op, d in delta.items()},
        rows={op: int(d["rows"]) for op, d in delta.items()},
        share={op: d["seconds"] / total if total > 0 else None for op, d in delta.items()},
        busy=total / wall_s if wall_s > 0 else None,
        rows_per_step=steps["rows"] / steps["calls"] if steps["calls"] else None,
        rows_per_encode=delta["encode"]["rows"] / delta["encode"]["calls"] if delta["encode"]["calls"] else None,
        ms_per_step_row=1000 * steps["seconds"] / steps["rows"] if steps["rows"] else None,
    )
