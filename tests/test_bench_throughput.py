"""bench/throughput.py on a micro configuration: every measure gives a number, a missing SmolLM2 is skipped."""
from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")
BENCH = Path(__file__).resolve().parents[1] / "bench" / "throughput.py"


def test_throughput_micro(tmp_path, capsys):
    main = runpy.run_path(str(BENCH))["main"]
    params = tmp_path / "params.yaml"
    params.write_text("model: {hidden_size: 32, layers: 1, heads: 2, intermediate_size: 64, vocab_size: 300}\n"
                      "unlearn: {lora: {r: 4, alpha: 4}}\n")
    out = tmp_path / "throughput.json"
    result = main(["--params", str(params), "--models", "builtin,smollm2", "--smollm2", str(tmp_path / "none"),
                         "--steps", "1", "--batch", "2", "--max-length", "32", "--new-tokens", "4", "--json", str(out)])
    assert "make smollm2" in capsys.readouterr().out
    rows = json.loads(out.read_text())["results"]
    assert rows == result["results"]
    assert [(r["model"], r["measure"]) for r in rows] == [
        ("builtin", "sft step"), ("builtin", "relearn step"), ("builtin", "generation")]
    assert all(r["fp32_tok_s"] > 0 and r["bf16_tok_s"] > 0 for r in rows)
