"""The CI regression gate: the edge-asr run of a result against the same run of a stored baseline.

RTF and WER each fail when current > baseline * (1 + margin). A WER check may also ask for a minimum
difference in points (`wer_floor_points`), because one word on a small clip set moves WER by about a
point; by default the margin alone decides for both, as `--max-regression 10%` says. Differences that
make the comparison doubtful (settings, bundle files, machine) are warnings, not failures: the gate
cannot tell which side is right, the reader can.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from edge_asr.benchmarks.report import ResultError

SYSTEM = "edge-asr"
COMPARED_SETTINGS = ("mode", "clip_set", "clips", "threads", "streams")


@dataclass
class GateResult:
    passed: bool
    lines: list[str] = field(default_factory=list)  # one per check, ending "ok" or "REGRESSION"
    warnings: list[str] = field(default_factory=list)


def parse_margin(text: str) -> float:
    """"10%" and "10" as 0.10, "0.1" as 0.1: a bare number of 1 or more is a percentage, below 1 a fraction."""
    number = text.strip().removesuffix("%")
    try:
        value = float(number)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"A regression margin is a percentage such as 10% or a fraction such as 0.1, not {text!r}.")
    return value / 100 if text.strip().endswith("%") or value >= 1 else value


def compare(current: dict, baseline: dict, margin: float, wer_floor_points: float = 0.0) -> GateResult:
    now, then = _edge_run(current, "current result"), _edge_run(baseline, "baseline")
    rtf_regressed, rtf_line = _rtf_check(now["rtf"], then["rtf"], margin)
    wer_regressed, wer_line = _wer_check(now.get("wer"), then.get("wer"), margin, wer_floor_points)
    return GateResult(passed=not (rtf_regressed or wer_regressed), lines=[rtf_line, wer_line],
                      warnings=_warnings(current, baseline))


def _edge_run(doc: dict, which: str) -> dict:
    run = next((r for r in doc.get("runs") or [] if r.get("system") == SYSTEM), None)
    if run is None:
        raise ResultError(f"The {which} has no {SYSTEM} run, so the gate has nothing to compare.")
    return run


def _verdict(regressed: bool) -> str:
    return "REGRESSION" if regressed else "ok"


def _rtf_check(now: float, then: float, margin: float) -> tuple[bool, str]:
    regressed = now > then * (1 + margin)
    change = f"{(now / then - 1) * 100:+.1f} %" if then else "n/a"
    return regressed, (f"RTF {now:.4f} vs baseline {then:.4f}: {change} "
                       f"(limit {margin * 100:+g} %) {_verdict(regressed)}")


def _wer_check(now: float | None, then: float | None, margin: float, floor: float) -> tuple[bool, str]:
    """WER in points, since a baseline of 0 % has no relative change; the limit is the margin or the floor."""
    if now is None or then is None:
        side = "current result" if now is None else "baseline"
        return False, f"WER not checked: the {side} has no WER (its clips had no reference texts)."
    limit = max(then * margin, floor)
    regressed = now - then > limit
    return regressed, (f"WER {now:.2f} % vs baseline {then:.2f} %: {now - then:+.2f} points "
                       f"(limit {limit:+.2f} points) {_verdict(regressed)}")


def _warnings(current: dict, baseline: dict) -> list[str]:
    warnings = []
    settings = _differences(current.get("settings"), baseline.get("settings"), COMPARED_SETTINGS)
    if settings:
        warnings.append(f"The settings differ from the baseline's ({settings}), so the runs did not do the same work.")
    files_now, files_then = (((d.get("bundle") or {}).get("files_sha256") or {}) for d in (current, baseline))
    changed = sorted(n for n in files_now.keys() | files_then.keys() if files_now.get(n) != files_then.get(n))
    if changed:
        warnings.append(f"The bundle's files differ from the baseline's ({', '.join(changed)}), "
                        "so a change may come from the model rather than the runtime.")
    machine = _differences(current.get("machine"), baseline.get("machine"), ("cpu_model", "board"))
    if machine:
        warnings.append(f"The baseline comes from another machine ({machine}); "
                        "comparing timings across machines is meaningless.")
    return warnings


def _differences(now: dict | None, then: dict | None, keys: tuple[str, ...]) -> str:
    """"threads 2 vs 4, clips 6 vs 5" for the keys whose values differ; empty when none do."""
    now, then = now or {}, then or {}
    return ", ".join(f"{k} {now.get(k)} vs {then.get(k)}" for k in keys if now.get(k) != then.get(k))
