"""The result document of `edge-asr bench`: JSON to keep and compare, Markdown to read, a PNG to look at.

The JSON is the record (versioned by SCHEMA, so that an older edge-asr refuses a newer result rather
than misreading it); Markdown and the plot are views of it. A figure that was not measured reads "–"
and a power source that could not be read says "unavailable" with its reason: never 0, which would
read as a measurement.
"""
from __future__ import annotations

import json
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_asr.runtime.errors import EdgeAsrError

SCHEMA = "edge-asr-bench/1"
MISSING = "–"


class ResultError(EdgeAsrError, ValueError):
    """A result file this edge-asr cannot read or compare; the message is one sentence."""


def write_json(doc: dict, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return path


def load_result(path: str | Path) -> dict:
    """A result document, checked for what every reader relies on: its schema and its runs."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ResultError(f"There is no result file at {path}.") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ResultError(f"{path} cannot be read ({err}).") from None
    except json.JSONDecodeError as err:
        raise ResultError(f"{path} is not JSON ({err.msg} at line {err.lineno}), so it is no bench result.") from None
    schema = doc.get("schema") if isinstance(doc, dict) else None
    if schema != SCHEMA:
        raise ResultError(_schema_problem(path, schema))
    if not isinstance(doc.get("runs"), list):
        raise ResultError(f"{path} has no \"runs\" list, so it holds no measurements.")
    return doc


def _schema_problem(path: str | Path, schema: object) -> str:
    family, _, version = str(schema).rpartition("/")
    ours, _, our_version = SCHEMA.rpartition("/")
    if family == ours and version.isdigit() and int(version) > int(our_version):
        return f"{path} is {schema}, newer than this edge-asr reads ({SCHEMA}); upgrade edge-asr to read it."
    return f"{path} is not an edge-asr bench result (schema {schema!r}, expected {SCHEMA})."


def write_outputs(doc: dict, out_dir: Path, stem: str = "bench") -> dict[str, Path]:
    """STEM.json, STEM.md and STEM.png (without matplotlib, no PNG) in out_dir; returns what it wrote."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {"json": write_json(doc, out_dir / f"{stem}.json")}
    written["md"] = out_dir / f"{stem}.md"
    written["md"].write_text(markdown(doc), encoding="utf-8")
    png = plot(doc, out_dir / f"{stem}.png")
    if png is not None:
        written["png"] = png
    return written


# --- Markdown ----------------------------------------------------------------------------------------

Column = tuple[str, Callable[[dict], str]]


def markdown(doc: dict) -> str:
    """The document as Markdown blocks: header, the table of runs with its notes, ratios, RTF per clip."""
    runs = doc["runs"]
    notes: dict[str, int] = {}  # footnote text -> number, for power sources that could not be read
    table, clips = markdown_table(_columns(doc, notes), runs), _clip_table(runs)
    blocks = [
        [f"# edge-asr bench, {doc.get('created', MISSING)}"], [_header(doc)], table,
        [f"[^{n}]: {text}" for text, n in notes.items()], _power_sources(runs),
        [f"- {_ratio_line(peer, ratio)}" for peer, ratio in (doc.get("ratios") or {}).items()],
        ["## RTF per clip"] if clips else [], clips,
    ]
    return "\n\n".join("\n".join(block) for block in blocks if block) + "\n"


def _header(doc: dict, machine_after: str = "; ") -> str:
    s, machine = doc.get("settings") or {}, doc.get("machine") or {}
    where = ", ".join(x for x in (machine.get("cpu_model"), machine.get("board")) if x) or "unknown machine"
    return (f"{s.get('mode', MISSING)} mode, {_count(s.get('clips'), 'clip')} ({s.get('clip_set', MISSING)}), "
            f"{format_number(s.get('audio_s'), '.1f')} s of audio, {_count(s.get('threads'), 'thread')}, "
            f"median of {_count(s.get('repeats'), 'repeat')}, {_count(s.get('streams'), 'stream')}"
            f"{machine_after}{where}")


def _count(n: int | None, noun: str) -> str:
    return f"{MISSING if n is None else n} {noun}{'' if n == 1 else 's'}"


def format_number(value: float | None, spec: str, scale: float = 1.0) -> str:
    return MISSING if value is None else format(value * scale, spec)


def _field(key: str, spec: str) -> Callable[[dict], str]:
    return lambda run: format_number(run.get(key), spec)


def _columns(doc: dict, notes: dict[str, int]) -> list[Column]:
    runs = doc["runs"]
    columns: list[Column] = [
        ("system", lambda r: r["system"]), ("config", lambda r: r.get("config", "")),
        ("RTF", _field("rtf", ".4f")), ("seconds", _field("seconds", ".3f")), ("load s", _field("load_s", ".2f")),
        ("encoder s", _field("encoder_s", ".3f")), ("decoder s", _field("decoder_s", ".3f")),
        ("tokens/s", _field("tokens_per_s", ".0f")), ("peak RSS MB", _field("peak_rss_mb", ".0f")),
    ]
    if any(r.get("gpu_peak_mb") is not None for r in runs):
        columns.append(("GPU MB", _field("gpu_peak_mb", ".0f")))
    columns.append(("WER %", _field("wer", ".2f")))
    if (doc.get("settings") or {}).get("mode") == "stream" or any(r.get("latency") for r in runs):
        columns += LATENCY_COLUMNS
        columns.append(("kept up", _kept_up))
    for source in dict.fromkeys(p["source"] for r in runs for p in r.get("power") or []):
        columns += _power_columns(source, notes)
    return columns


def _latency(key: str) -> Callable[[dict], str]:
    return lambda run: format_number((run.get("latency") or {}).get(key), ".0f", 1000.0)


LATENCY_COLUMNS: list[Column] = [(f"{p} ms", _latency(f"{p}_s")) for p in ("p50", "p90", "p99")]


@dataclass(frozen=True)
class LatencyFigures:
    """Percentiles of the latencies from end of speech to final text, and whether the streams kept up with
    real time (the latencies mean little where they did not); asdict() gives a document's "latency"."""

    p50_s: float
    p90_s: float
    p99_s: float
    max_s: float
    values_s: list[float]
    kept_up: bool


def latency_figures(values: list[float], kept_up: bool) -> LatencyFigures | None:
    if not values:
        return None
    return LatencyFigures(float(np.percentile(values, 50)), float(np.percentile(values, 90)),
                          float(np.percentile(values, 99)), max(values), values, kept_up)


def _kept_up(run: dict) -> str:
    """Whether the stream kept pace with real time: the latencies mean little where it did not."""
    return {True: "yes", False: "no"}.get((run.get("latency") or {}).get("kept_up"), MISSING)


def _power(run: dict, source: str) -> dict | None:
    return next((p for p in run.get("power") or [] if p["source"] == source), None)


def _power_columns(source: str, notes: dict[str, int]) -> list[Column]:
    def mean(run: dict) -> str:
        p = _power(run, source) or {}
        if p.get("available", True):
            return format_number(p.get("mean_w"), ".2f")
        note = notes.setdefault(f"{source} unavailable: {p['reason']}", len(notes) + 1)
        return f"unavailable[^{note}]"

    def reading(key: str, spec: str) -> Callable[[dict], str]:
        return lambda run: format_number((_power(run, source) or {}).get(key), spec)

    return [(f"{source} mean W", mean), (f"{source} peak W", reading("peak_w", ".2f")),
            (f"{source} J/audio s", reading("joules_per_audio_s", ".3f"))]


def _power_sources(runs: list[dict]) -> list[str]:
    """What each power column measures, which a source's name alone ("rapl") does not say."""
    sources = {p["source"]: p["describes"] for r in runs for p in r.get("power") or [] if p["available"]}
    return ["Power: " + "; ".join(f"{s} measures {d}" for s, d in sources.items()) + "."] if sources else []


def markdown_table(columns: list[Column], rows: list) -> list[str]:
    lines = ["| " + " | ".join(title for title, _ in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    return lines + ["| " + " | ".join(cell(row).replace("|", "\\|") for _, cell in columns) + " |" for row in rows]


def _ratio_line(peer: str, ratio: dict) -> str:
    return (f"edge-asr / {peer}: time {format_number(ratio.get('seconds'), '.2f')}×, "
            f"peak RSS {format_number(ratio.get('peak_rss'), '.2f')}×, "
            f"WER {format_number(ratio.get('wer_points'), '+.2f')} points")


def _clip_table(runs: list[dict]) -> list[str]:
    names = list(dict.fromkeys(c["name"] for r in runs for c in r.get("clips", [])))
    if not names:
        return []
    rtf = [{c["name"]: c.get("rtf") for c in r.get("clips", [])} for r in runs]
    columns: list[Column] = [("clip", lambda name: name)]
    columns += [(label, lambda name, i=i: format_number(rtf[i].get(name), ".4f")) for i, label in enumerate(_labels(runs))]
    return markdown_table(columns, names)


def _labels(runs: list[dict]) -> list[str]:
    """Each run's system, with its configuration where two runs share a system."""
    systems = [r["system"] for r in runs]
    return [s if systems.count(s) == 1 else f"{s}, {r.get('config', '')}" for s, r in zip(systems, runs, strict=True)]


# --- Plot --------------------------------------------------------------------------------------------

def plot(doc: dict, path: str | Path) -> Path | None:
    """RTF per run (bars, clips as points) and the latency (or per-clip RTF) spread; None without matplotlib.

    matplotlib.figure.Figure saves through the Agg canvas without pyplot, so no backend is chosen
    globally and no display is needed."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    runs = doc["runs"]
    names = [textwrap.fill(label, 20) for label in _labels(runs)]  # a tick label as wide as its bar
    clip_rtfs = [[c["rtf"] for c in r.get("clips", []) if c.get("rtf") is not None] for r in runs]
    title, unit, spread = _spread(runs, names, clip_rtfs)
    figure = Figure(figsize=(max(8.0, 2.5 * len(runs)), 4.5), layout="constrained")
    axes = figure.subplots(1, 2 if spread else 1, squeeze=False)[0]
    positions = range(1, len(runs) + 1)
    axes[0].bar(positions, [r["rtf"] for r in runs], color="tab:blue", alpha=0.6)
    for x, values in zip(positions, clip_rtfs, strict=True):
        axes[0].scatter([x] * len(values), values, color="black", s=12, zorder=3)
    axes[0].set(title="Real-time factor (lower is faster)", ylabel="RTF", xticks=list(positions), xticklabels=names)
    if spread:
        axes[1].boxplot([values for _, values in spread], tick_labels=[name for name, _ in spread])
        axes[1].set(title=title, ylabel=unit)
    figure.suptitle(_header(doc, machine_after="\n"), fontsize="small")
    figure.savefig(path, format="png", dpi=120)
    return Path(path)


Boxes = list[tuple[str, list[float]]]  # (tick label, values) per box


def _spread(runs: list[dict], names: list[str], clip_rtfs: list[list[float]]) -> tuple[str, str, Boxes]:
    """The right panel: latencies in ms where any run has them (stream mode), else each run's per-clip RTFs."""
    latencies = [(name, [v * 1000 for v in r["latency"]["values_s"]])
                 for name, r in zip(names, runs, strict=True) if (r.get("latency") or {}).get("values_s")]
    if latencies:
        return "Latency to final text", "ms", latencies
    return "RTF per clip", "RTF", [(name, values) for name, values in zip(names, clip_rtfs, strict=True) if values]
