"""bench/throughput.py on a micro configuration: every measure gives a number, a missing SmolLM2 is skipped,
the ratios are the quotients of the numbers they come from, and the peak-memory probe sees an allocation."""
from __future__ import annotations

import json
import runpy
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")
BENCH = Path(__file__).resolve().parents[1] / "bench" / "throughput.py"
STEPS = ("sft", "relearn_adapter_off", "relearn_two_copy")
GENERATIONS = ("generation_batched", "generation_sequential")
RATIOS = ("relearn_over_sft_step", "memory_over_two_copy", "batched_over_sequential")


def test_throughput_micro(tmp_path, capsys):
    main = runpy.run_path(str(BENCH))["main"]
    params = tmp_path / "params.yaml"
    params.write_text("model: {hidden_size: 32, layers: 1, heads: 2, intermediate_size: 64, vocab_size: 300}\n"
                      "unlearn: {lora: {r: 4, alpha: 4}}\n")
    out = tmp_path / "throughput.json"
    # --peak-tflops gives an MFU on the CPU too, so its arithmetic is checked here
    result = main(["--params", str(params), "--models", "builtin,smollm2", "--smollm2", str(tmp_path / "none"),
                   "--steps", "1", "--batch", "2", "--max-length", "32", "--new-tokens", "4", "--threads", "1",
                   "--peak-tflops", "2", "--json", str(out)])
    printed = capsys.readouterr().out
    assert "make smollm2" in printed
    data = json.loads(out.read_text())
    assert data == json.loads(json.dumps(result))

    # the precision part
    rows = data["results"]
    assert [(r["model"], r["measure"]) for r in rows] == [
        ("builtin", "sft step"), ("builtin", "relearn step"), ("builtin", "generation")]
    assert all(r["fp32_tok_s"] > 0 and r["bf16_tok_s"] > 0 for r in rows)

    # the ratios part: only the model that exists, every figure positive
    assert data["cost_dtype"] == "float32" and data["peak_tflops"] == 2 and data["memory_method"]
    cost = data["cost"]
    assert list(cost) == ["builtin"] and set(cost["builtin"]) == {*STEPS, *GENERATIONS}
    for measure, row in cost["builtin"].items():
        assert row["tokens"] > 0 and row["seconds"] > 0 and row["matmul_params"] > 0
        assert row["tok_s"] == pytest.approx(row["tokens"] / row["seconds"])
        flops = (6 if measure in STEPS else 2) * row["matmul_params"] * row["tok_s"]
        assert row["mfu"] == pytest.approx(flops / 2e12)
        assert (row["peak_bytes"] > 0) if measure in STEPS else ("peak_bytes" not in row)
    b = cost["builtin"]
    assert b["relearn_adapter_off"]["tokens"] == b["relearn_two_copy"]["tokens"] > b["sft"]["tokens"]  # forget + retain

    ratios = data["ratios"]
    assert list(ratios) == ["builtin"] and set(ratios["builtin"]) == set(RATIOS)
    r = ratios["builtin"]
    assert r["relearn_over_sft_step"] == pytest.approx(b["relearn_adapter_off"]["seconds"] / b["sft"]["seconds"])
    assert r["memory_over_two_copy"] == pytest.approx(
        b["relearn_adapter_off"]["peak_bytes"] / b["relearn_two_copy"]["peak_bytes"])
    assert r["batched_over_sequential"] == pytest.approx(
        b["generation_batched"]["tok_s"] / b["generation_sequential"]["tok_s"])
    assert all(v > 0 for v in r.values())
    # the first model's ratios at the top level, for json["relearn_over_sft_step"]
    assert data["ratios_model"] == "builtin" and all(data[k] == r[k] for k in RATIOS)
    assert data["aims"] == {"relearn_over_sft_step": "<= 1.3", "memory_over_two_copy": "<= 0.6",
                            "batched_over_sequential": ">= 5"}
    passes = {"relearn_over_sft_step": r["relearn_over_sft_step"] <= 1.3,
              "memory_over_two_copy": r["memory_over_two_copy"] <= 0.6,
              "batched_over_sequential": r["batched_over_sequential"] >= 5}
    assert data["verdicts"] == {"builtin": {k: "PASS" if ok else "MISS" for k, ok in passes.items()}}
    for label in ("ReLearn step / SFT step", "adapter-off / two-copy", "batched / sequential"):
        line = next(x for x in printed.splitlines() if label in x)
        assert line.endswith(("PASS", "MISS"))


def test_throughput_precision_only(tmp_path):
    """--only precision leaves the ratios part out of the JSON."""
    main = runpy.run_path(str(BENCH))["main"]
    params = tmp_path / "params.yaml"
    params.write_text("model: {hidden_size: 32, layers: 1, heads: 2, intermediate_size: 64, vocab_size: 300}\n")
    result = main(["--params", str(params), "--models", "builtin", "--only", "precision", "--steps", "1",
                   "--batch", "2", "--max-length", "16", "--new-tokens", "2"])
    assert len(result["results"]) == 3 and "cost" not in result and "relearn_over_sft_step" not in result


@pytest.mark.parametrize("sample", [False, True], ids=["kernel-peak", "sampled"])
def test_peak_memory_sees_an_allocation(sample):
    """A 64 MiB tensor made and freed after reset() is in the CPU peak, and what was freed before it is not."""
    PeakMemory = runpy.run_path(str(BENCH))["PeakMemory"]
    before = torch.ones(16 * 2**20)  # 64 MiB held and freed before reset(): must not count
    del before
    memory = PeakMemory(torch.device("cpu"), sample=sample)
    memory.reset()
    x = torch.ones(16 * 2**20)
    time.sleep(0.05)  # the sampler reads every millisecond
    del x
    peak = memory.peak()
    assert 60 * 2**20 < peak < 100 * 2**20, (memory.method, peak)


def test_throughput_attack_only(tmp_path):
    """--only attack: each attacker's step with the attack's own estimate; the bf16 full attacker's
    estimate is half the fp32 one (8 against 16 bytes a weight) and the ratio is of the peaks shown."""
    main = runpy.run_path(str(BENCH))["main"]
    params = tmp_path / "params.yaml"
    params.write_text("model: {hidden_size: 32, layers: 1, heads: 2, intermediate_size: 64, vocab_size: 300}\n")
    result = main(["--params", str(params), "--models", "builtin", "--only", "attack", "--steps", "1",
                   "--batch", "2", "--max-length", "16", "--threads", "1"])
    assert "cost" not in result and result["results"] == []
    rows = result["attack"]["builtin"]
    for measure in ("attack_full_fp32", "attack_full_bf16", "attack_lora_bf16"):
        assert rows[measure]["tokens"] > 0 and rows[measure]["seconds"] > 0 and rows[measure]["peak_bytes"] > 0
    assert rows["attack_full_bf16"]["estimate_bytes"] * 2 == rows["attack_full_fp32"]["estimate_bytes"]
    assert rows["attack_lora_bf16"]["estimate_bytes"] < rows["attack_full_bf16"]["estimate_bytes"]
    assert rows["full_bf16_over_fp32_peak"] == pytest.approx(
        rows["attack_full_bf16"]["peak_bytes"] / rows["attack_full_fp32"]["peak_bytes"])
