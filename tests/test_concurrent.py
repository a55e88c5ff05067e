"""``bench --concurrent``: K runs training at once on one device, against one run alone."""

from __future__ import annotations

import json

import pytest

import tiny_model
from archbench.bench import BenchResult
from archbench.cli import main
from archbench.errors import ArchbenchError
from archbench.models.registry import MODELS
from archbench.scale import concurrent


def test_k_processes_train_at_once_and_the_table_adds_up(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(MODELS, tiny_model.NAME, tiny_model.SPEC)  # the processes get the spec from here
    out = tmp_path / "bench.json"
    args = ["bench", "tiny", "--concurrent", "1,2", "--synthetic", "--device", "cpu", "--batch-size", "20"]
    assert main([*args, "--train-subset", "40", "--test-subset", "20", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "tiny x1 at once: " in printed and "tiny x2 at once: " in printed
    assert "compare --executor ray --cpus-per-run" in printed
    rows = json.loads(out.read_text())["concurrent"]
    assert [r["runs"] for r in rows] == [1, 2]
    assert rows[0]["vs_one_run"] == 1.0
    for r in rows:
        assert r["aggregate_images_per_s"] == pytest.approx(r["runs"] * r["images_per_s_per_run"])
        assert r["aggregate_images_per_s"] > 0 and r["device"] == "cpu"
    assert rows[1]["vs_one_run"] == pytest.approx(rows[1]["aggregate_images_per_s"] / rows[0]["aggregate_images_per_s"])


def _result(images_per_s: float, peak: float | None = None) -> BenchResult:
    return BenchResult(
        model="m",
        pipeline="fast",
        device="NVIDIA H200",
        precision="bf16",
        step="graphs",
        train_images=50_000,
        test_images=10_000,
        epochs=2,
        train_s_per_epoch=50_000 / images_per_s,
        eval_s_per_epoch=1.0,
        images_per_s=images_per_s,
        warmup_s=0.0,
        peak_memory_mib=peak,
        train_tflops=1.0,
        percent_of_peak=None,
        peak_basis=None,
        final_train_loss=1.0,
        final_val_acc=50.0,
    )


def test_summary_and_advice_pick_the_k_with_the_most_images_per_second():
    rows = concurrent.summarize("m", {1: [_result(10_000, 900)], 4: [_result(6_000, 950)] * 4, 8: [_result(2_000)] * 8})
    assert [(r.runs, r.aggregate_images_per_s, r.vs_one_run) for r in rows] == [
        (1, 10_000, 1.0),
        (4, 24_000, 2.4),
        (8, 16_000, 1.6),
    ]
    assert rows[1].peak_memory_mib == 950 and rows[2].peak_memory_mib is None
    assert "with 4 run(s) at once (2.40× one run)" in concurrent.advice(rows, on_gpu=True)
    assert "--gpus-per-run 0.25" in concurrent.advice(rows, on_gpu=True)


@pytest.mark.parametrize("text", ["", "0,1", "2,2", "one", "1,-4"])
def test_bad_counts_are_refused(text):
    with pytest.raises(ArchbenchError, match="give distinct whole numbers >= 1"):
        concurrent.parse_counts(text)


def test_a_model_that_cannot_reach_another_process_is_one_line(monkeypatch, capsys):
    spec = tiny_model.TWINS["resnettiny"]  # built by a lambda: pickle refuses it
    monkeypatch.setitem(MODELS, spec.name, spec)
    args = ["bench", spec.name, "--concurrent", "1", "--synthetic", "--device", "cpu", "--train-subset", "20"]
    assert main([*args, "--test-subset", "20"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model 'resnettiny' cannot be sent to another process" in err[0]
