"""The batch curve: every kind of engine call at each batch size, and the bound it puts on a load test."""
from __future__ import annotations

import json

import pytest

from edge_asr.benchmarks import batch_curve
from edge_asr.benchmarks.batch_curve import CurvePoint
from edge_asr.runtime.transcriber import Transcriber


@pytest.mark.slow
def test_curve_on_the_real_engine(tiny_bundle):
    engine = Transcriber(tiny_bundle, threads=2).engine
    results = batch_curve.measure(engine, frames=400, prompt_tokens=8,
                                  batches={"encode": (1, 2), "prompt": (1, 2), "step": (1, 2, 4)}, repeats=2)
    assert [(r.op, r.batch) for r in results] == [
        ("encode", 1), ("encode", 2), ("prompt", 1), ("prompt", 2), ("step", 1), ("step", 2), ("step", 4)]
    for row in results:
        assert row.ms_per_call > 0 and row.ms_per_row == pytest.approx(row.ms_per_call / row.batch)
        alone = next(r for r in results if r.op == row.op and r.batch == 1)
        assert row.row_cost == pytest.approx(row.ms_per_row / alone.ms_per_row)


def test_serving_bound_from_the_busiest_trial():
    results = [CurvePoint("step", 1, 2.0, 2.0, 1.0), CurvePoint("step", 8, 4.0, 0.5, 0.25),
               CurvePoint("encode", 2, 22.0, 11.0, 1.1)]
    loadtest = {"trials": [
        {"streams": 4, "engine": {"share": {"step": 0.2}, "rows_per_step": 1.0}},
        {"streams": 10, "engine": {"share": {"step": 0.4}, "rows_per_step": 1.5}},
        {"streams": 12, "engine": None},  # an external server without the counters
    ]}
    bound = batch_curve.serving_bound(results, loadtest)
    assert bound["streams"] == 10 and bound["saving_at"] == {1: 0.0, 8: pytest.approx(0.3)}
    assert batch_curve.serving_bound(results, {"trials": [{"streams": 2, "engine": None}]}) is None


def test_bad_arguments_get_one_sentence(tmp_path, capsys):
    not_a_loadtest = tmp_path / "bench.json"
    not_a_loadtest.write_text(json.dumps({"schema": "edge-asr-bench/1"}))
    assert batch_curve.main(["--bundle", str(tmp_path), "--loadtest", str(not_a_loadtest)]) == 1
    assert "is not an `edge-asr loadtest --json` result" in capsys.readouterr().err
    assert batch_curve.main(["--bundle", str(tmp_path), "--seconds", "31"]) == 1
    assert "--seconds must be within (0, 30]" in capsys.readouterr().err
    assert batch_curve.main(["--bundle", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("edge-asr: ") and len(err.strip().splitlines()) == 1
