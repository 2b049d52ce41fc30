"""Load on `relearn serve` with the demo's deployable: throughput, latency, a promotion mid-run, batching.

    python bench/serve_load.py [--requests 64] [--max-tokens 24] [--json FILE]

Needs `make demo` first (export/onnx-int8, models/target, models/adapter, data/splits; --target,
--adapter and --deployable point at another model's). The demo's
version is blocked by its relearning gate, so this registers the demo's deployable twice in a
scratch MLflow store (a temporary SQLite file; gates reduced to one that passes, approved by the
script) and promotes version 1. The server is the real CLI (`relearn serve`, a separate process);
the clients are threads here sending streamed OpenAI chat requests with the demo's eval questions.

It prints, for concurrency 1, 8 and 32 (--requests each, at most): requests/s, output tokens/s,
p50/p95 end-to-end latency and p50 time to first token. During the concurrency-8 level the
production alias moves to version 2: every request must succeed (`failed_during_swap`), and the
answering version must change. Then concurrency 16 with dynamic batching against a server with
serve.max_batch_size 1 (`batching_speedup_c16`, output tokens/s ratio), and the per-token latency
(time per output token after the first, at concurrency 1) of the ONNX int8 deployable against the
torch fp32 base + adapter. Last, the output guard's cost: the same c=1 load against a server with
serve.guard off and one with it on (each version carries the guard of the demo's forget split, as the
register stage attaches it), alternated twice (`guard_tpot_overhead`: guarded / unguarded per-token
latency - 1, aim <= 0.05), and the guard's own CPU time per streamed delta, timed in this process on
the answers the server gave (`guard_us_per_delta`).

Continuous batching (`--only continuous` runs just this part): the torch backend at concurrency 16
with requests of mixed lengths (max_tokens cycling 2x, 1/4, 1/4 and 1/2 of --max-tokens), once with
serve.scheduling continuous and once static: `continuous_over_static_c16` (output tokens/s ratio,
aim >= 1.3) and `ttft_p95_ratio_c16` (p95 time to first token, continuous / static, aim <= 0.5).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
import yaml

ROOT = Path(__file__).resolve().parents[1]
MODEL = "relearn-serve-bench"


# ---------------------------------------------------------------------------------- set-up
def register_demo(store: Path, target: Path, adapter: Path, deployable: Path) -> list[str]:
    """Two approved versions of a target + adapter with an int8 deployable (the demo's by default);
    production -> 1. The gates are reduced to one that passes: this measures serving, not forgetting."""
    from relearn.params import load_params
    from relearn.registry import versions

    p = load_params(ROOT / "params.yaml")
    p.register.gates = {"always": {"metric": "unlearned.kfr", "min": 0.0}}
    made = []
    for _ in range(2):
        result = versions.register_version(
            model_name=MODEL, experiment="serve-bench", params=p, metrics={"unlearned": {"kfr": 1.0}},
            base_model_dir=target, adapter_dir=adapter,
            generation={"prompt_format": p.model.prompt.to_dict(), "max_new_tokens": p.evaluate.max_new_tokens,
                        "batch_size": p.evaluate.batch_size},
            dataset_hashes={}, counts={}, git_commit=None)
        versions.attach_artifacts(MODEL, result["version"], deployable, "deployable")
        with tempfile.TemporaryDirectory() as tmp:
            versions.attach_artifacts(MODEL, result["version"], demo_guard().save(tmp), "guard")
        versions.project_client().set_model_version_tag(MODEL, result["version"], versions.APPROVAL_TAG,
                                                        versions.APPROVED)
        made.append(result["version"])
    versions.promote(MODEL, made[0])
    return made


def demo_guard():
    """The guard the register stage would attach: the demo's forget split (forget + forget_eval), less what retain states."""
    from relearn.data.splits import read_splits
    from relearn.serving.guard import build_guard

    splits = read_splits(ROOT / "data/splits", ("forget", "forget_eval", "retain"))
    return build_guard(splits["forget"] + splits["forget_eval"], keep=splits["retain"])


def guard_cpu(guard, answers: list[str]) -> dict:
    """The guard's CPU time per streamed delta (about one token: 4 characters) and per whole answer."""
    from relearn.serving.guard import StreamGuard

    deltas, start = 0, time.perf_counter()
    for text in answers:
        stream = StreamGuard(guard, "")
        for i in range(0, len(text), 4):
            stream.feed(text[i:i + 4])
            deltas += 1
        stream.finish()
    streamed = time.perf_counter() - start
    start = time.perf_counter()
    for text in answers:
        guard.redact(text, "")
    whole = time.perf_counter() - start
    return {"us_per_delta": round(1e6 * streamed / max(deltas, 1), 1),
            "us_per_answer": round(1e6 * whole / max(len(answers), 1), 1), "answers": len(answers)}


def server_params(work: Path, port: int, **serve) -> Path:
    """The params file of one `relearn serve` of this bench: the scratch registry's model and `serve`."""
    settings = {"port": port, "poll_seconds": 0.5, "max_tokens": 64, "max_queue": 256,
                "cache_dir": str(work / "cache"), **serve}
    params = work / f"params-{port}.yaml"
    # YAML, not formatted lines: a bare `off` (serve.guard) would read as false
    params.write_text(yaml.safe_dump({"register": {"model_name": MODEL}, "serve": settings}), encoding="utf-8")
    return params


class Server:
    """`relearn serve` in a subprocess with its own params file."""

    def __init__(self, work: Path, port: int, **serve):
        params = server_params(work, port, **serve)
        self.url = f"http://127.0.0.1:{port}"
        self.log = open(work / f"serve-{port}.log", "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "relearn.cli", "serve", "--params", str(params)],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=os.environ.copy(), cwd=work)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"relearn serve exited with {self.proc.returncode}; see {self.log.name}")
            try:
                if requests.get(f"{self.url}/ready", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise SystemExit(f"relearn serve did not get ready; see {self.log.name}")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


# ---------------------------------------------------------------------------------- load
def one_request(session: requests.Session, url: str, question: str, max_tokens: int) -> dict:
    start = time.perf_counter()
    first = None
    usage, version, status, error = None, "", 0, ""
    try:
        with session.post(f"{url}/v1/chat/completions", stream=True, timeout=120,
                          json={"messages": [{"role": "user", "content": question}], "max_tokens": max_tokens,
                                "stream": True, "stream_options": {"include_usage": True}}) as r:
            status, version = r.status_code, r.headers.get("X-Relearn-Model-Version", "")
            for line in r.iter_lines(decode_unicode=True):
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    error = chunk["error"]["message"]
                elif chunk.get("usage"):
                    usage = chunk["usage"]
                elif first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    first = time.perf_counter()
    except requests.RequestException as e:
        error = f"{type(e).__name__}: {e}"
    end = time.perf_counter()
    tokens = usage["completion_tokens"] if usage else 0
    ok = status == 200 and not error and usage is not None
    return {"ok": ok, "status": status, "error": error, "version": version, "latency": end - start,
            "ttft": (first - start) if first else None, "tokens": tokens,
            "tpot": (end - first) / (tokens - 1) if first and tokens > 1 else None, "start": start, "end": end}


def level(url: str, questions: list[str], concurrency: int, n: int, max_tokens, midway=None) -> dict:
    """n requests from `concurrency` threads (max_tokens: one number, or a list cycled over the requests);
    `midway()` is called once half of them have finished."""
    results: list[dict] = []
    lock = threading.Lock()
    fired = threading.Event()
    local = threading.local()

    def work(i: int) -> None:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        budget = max_tokens[i % len(max_tokens)] if isinstance(max_tokens, list) else max_tokens
        r = one_request(local.session, url, questions[i % len(questions)], budget)
        with lock:
            results.append(r)
            if midway and len(results) >= n // 2 and not fired.is_set():
                fired.set()
                threading.Thread(target=midway).start()

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(work, range(n)))
    wall = time.perf_counter() - start
    ok = [r for r in results if r["ok"]]
    latencies = sorted(r["latency"] for r in ok)
    ttfts = [r["ttft"] for r in ok if r["ttft"] is not None]
    tpots = [r["tpot"] for r in ok if r["tpot"] is not None]
    return {
        "concurrency": concurrency, "requests": n, "failed": n - len(ok), "seconds": round(wall, 2),
        "req_per_s": round(len(ok) / wall, 2), "output_tok_per_s": round(sum(r["tokens"] for r in ok) / wall, 1),
        "p50_latency_s": round(_pct(latencies, 50), 4), "p95_latency_s": round(_pct(latencies, 95), 4),
        "p50_ttft_s": round(_pct(sorted(ttfts), 50), 4) if ttfts else None,
        "p95_ttft_s": round(_pct(sorted(ttfts), 95), 4) if ttfts else None,
        "p50_tpot_ms": round(1000 * statistics.median(tpots), 2) if tpots else None,
        "versions": sorted({r["version"] for r in results}),
        "errors": sorted({f"{r['status']} {r['error']}" for r in results if not r["ok"]})[:5],
        "_results": results,
    }


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    k = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return values[k]


def questions_of_the_demo() -> list[str]:
    out = []
    for split in ("retain_eval", "forget_eval"):
        with open(ROOT / "data/splits" / f"{split}.jsonl", encoding="utf-8") as f:
            out += [json.loads(line)["question"] for line in f if line.strip()]
    return out


def _row(r: dict) -> str:
    return (f"  c={r['concurrency']:<3} {r['requests']:>4} req  {r['req_per_s']:>7.2f} req/s  "
            f"{r['output_tok_per_s']:>8.1f} tok/s  p50 {r['p50_latency_s']:.3f} s  p95 {r['p95_latency_s']:.3f} s  "
            f"ttft p50 {r['p50_ttft_s']} s  tpot p50 {r['p50_tpot_ms']} ms  failed {r['failed']}  "
            f"versions {','.join(r['versions'])}")


# ---------------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=64, help="Requests per concurrency level (at most).")
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--max-batch-size", type=int, default=16)
    ap.add_argument("--target", default=str(ROOT / "models/target"), help="Base model directory of the versions.")
    ap.add_argument("--adapter", default=str(ROOT / "models/adapter"), help="Their LoRA adapter.")
    ap.add_argument("--deployable", default=str(ROOT / "export/onnx-int8"),
                    help="Their ONNX deployable (an export stage's onnx-int8 directory with prompt_format.json).")
    ap.add_argument("--json", dest="json_path", default=None)
    ap.add_argument("--only", choices=["all", "continuous"], default="all",
                    help="continuous: only the continuous-against-static batching comparison")
    args = ap.parse_args()
    for needed in (args.deployable, args.target, args.adapter, ROOT / "data/splits/retain_eval.jsonl"):
        if not Path(needed).exists():
            raise SystemExit(f"{needed} is missing: run `make demo` first")

    from relearn.registry.versions import promote
    from relearn.serving.server import free_port

    work = Path(tempfile.mkdtemp(prefix="relearn-serve-bench-"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work}/mlflow.db"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    first, second = register_demo(work, Path(args.target), Path(args.adapter), Path(args.deployable))
    questions = questions_of_the_demo()
    n, mt = args.requests, args.max_tokens
    print(f"[serve-bench] scratch store {work}; {len(questions)} questions; max_tokens {mt}; {os.cpu_count()} CPUs",
          flush=True)

    report: dict = {"levels": [], "max_tokens": mt, "deployable": str(args.deployable)}
    continuous_batching(work, questions, n, mt, args.max_batch_size, report)
    if args.only == "continuous":
        return write(report, args.json_path)
    server = Server(work, free_port(), max_batch_size=args.max_batch_size, max_wait_ms=10)
    try:
        level(server.url, questions, 4, 8, mt)  # warm-up
        swap = {}

        def move_alias():
            swap["at"] = time.perf_counter()
            promote(MODEL, second)

        for c in (1, 8, 32):
            r = level(server.url, questions, c, n if c > 1 else max(8, n // 4), mt,
                      midway=move_alias if c == 8 else None)
            if c == 8:
                after = [x for x in r["_results"] if x["version"] == second]
                report["failed_during_swap"] = r["failed"]
                report["swap_seen_after_s"] = round(min(x["end"] for x in after) - swap["at"], 2) if after else None
                report["versions_during_swap"] = r["versions"]
            print(_row(r), flush=True)
            report["levels"].append({k: v for k, v in r.items() if not k.startswith("_")})
        batched = level(server.url, questions, 16, n, mt)
    finally:
        server.close()
    print(f"[serve-bench] alias moved to version {second} during c=8: failed requests {report['failed_during_swap']}, "
          f"first answer from version {second} {report['swap_seen_after_s']} s after the promotion", flush=True)

    server = Server(work, free_port(), max_batch_size=1, max_wait_ms=0)
    try:
        level(server.url, questions, 4, 8, mt)
        single = level(server.url, questions, 16, n, mt)
    finally:
        server.close()
    report["c16_batched"] = {k: v for k, v in batched.items() if not k.startswith("_")}
    report["c16_one_at_a_time"] = {k: v for k, v in single.items() if not k.startswith("_")}
    report["batching_speedup_c16"] = round(batched["output_tok_per_s"] / max(single["output_tok_per_s"], 1e-9), 2)
    print(_row(batched) + "  (dynamic batching)", flush=True)
    print(_row(single) + "  (max_batch_size 1)", flush=True)
    print(f"[serve-bench] batching speedup at c=16: {report['batching_speedup_c16']}x (aim >= 3)", flush=True)

    server = Server(work, free_port(), backend="torch", max_batch_size=args.max_batch_size)
    try:
        level(server.url, questions, 1, 4, mt)
        torch_c1 = level(server.url, questions, 1, max(8, n // 4), mt)
    finally:
        server.close()
    onnx_c1 = report["levels"][0]
    report["tpot_ms"] = {"onnx_int8": onnx_c1["p50_tpot_ms"], "torch_fp32": torch_c1["p50_tpot_ms"]}
    report["onnx_int8_over_torch_fp32_tpot"] = round(onnx_c1["p50_tpot_ms"] / torch_c1["p50_tpot_ms"], 3) \
        if onnx_c1["p50_tpot_ms"] and torch_c1["p50_tpot_ms"] else None
    print(_row(torch_c1) + "  (torch fp32 base + adapter)", flush=True)
    print(f"[serve-bench] per-token latency at c=1: ONNX int8 {onnx_c1['p50_tpot_ms']} ms, torch fp32 "
          f"{torch_c1['p50_tpot_ms']} ms (ratio {report['onnx_int8_over_torch_fp32_tpot']})", flush=True)

    # the output guard: the same c=1 load with serve.guard off and on, alternated
    tpots: dict[str, list[float]] = {"off": [], "redact": []}
    answers: list[str] = []
    for mode in ("off", "redact", "off", "redact"):
        server = Server(work, free_port(), guard=mode, max_batch_size=args.max_batch_size)
        try:
            level(server.url, questions, 1, 4, mt)
            r = level(server.url, questions, 1, max(8, n // 4), mt)
            tpots[mode].append(r["p50_tpot_ms"])
            if mode == "off" and not answers:
                answers = [requests.post(f"{server.url}/v1/chat/completions", timeout=60, json={
                    "messages": [{"role": "user", "content": q}], "max_tokens": mt}).json()["choices"][0]["message"]
                    ["content"] for q in questions]
        finally:
            server.close()
    off, on = statistics.fmean(tpots["off"]), statistics.fmean(tpots["redact"])
    report["guard_tpot_ms"] = {"off": tpots["off"], "redact": tpots["redact"]}
    report["guard_tpot_overhead"] = round(on / off - 1, 4)
    guard = demo_guard()
    cost = guard_cpu(guard, answers)
    report["guard_us_per_delta"], report["guard_us_per_answer"] = cost["us_per_delta"], cost["us_per_answer"]
    print(f"[serve-bench] output guard ({len(guard.facts)} facts): per-token latency at c=1 {off:.2f} ms off, "
          f"{on:.2f} ms on (overhead {100 * report['guard_tpot_overhead']:+.1f}%, aim <= 5%); its own CPU time "
          f"{cost['us_per_delta']} us per streamed delta, {cost['us_per_answer']} us per whole answer", flush=True)
    write(report, args.json_path)


def continuous_batching(work: Path, questions: list[str], n: int, mt: int, max_batch_size: int, report: dict) -> None:
    """The torch backend at c=16 with mixed lengths, serve.scheduling continuous against static."""
    from relearn.serving.server import free_port

    mixed = [2 * mt, max(2, mt // 4), max(2, mt // 4), max(2, mt // 2)]
    runs = {}
    for mode in ("continuous", "static", "continuous", "static"):  # alternated: the machine's drift hits both
        server = Server(work, free_port(), backend="torch", scheduling=mode, max_batch_size=max_batch_size)
        try:
            level(server.url, questions, 4, 8, mixed)
            runs.setdefault(mode, []).append(level(server.url, questions, 16, n, mixed))
        finally:
            server.close()
    tok = {m: statistics.fmean(r["output_tok_per_s"] for r in rs) for m, rs in runs.items()}
    ttft = {m: statistics.fmean(r["p95_ttft_s"] for r in rs) for m, rs in runs.items()}
    report["c16_mixed"] = {m: [{k: v for k, v in r.items() if not k.startswith("_")} for r in rs]
                           for m, rs in runs.items()}
    report["continuous_over_static_c16"] = round(tok["continuous"] / max(tok["static"], 1e-9), 2)
    report["ttft_p95_ratio_c16"] = round(ttft["continuous"] / max(ttft["static"], 1e-9), 3)
    for mode, rs in runs.items():
        for r in rs:
            print(_row(r) + f"  (torch, {mode}, max_tokens {mixed})", flush=True)
    print(f"[serve-bench] continuous batching at c=16, mixed lengths: {report['continuous_over_static_c16']}x the "
          f"static output tokens/s (aim >= 1.3), p95 time to first token {report['ttft_p95_ratio_c16']}x "
          "(aim <= 0.5)", flush=True)


def write(report: dict, path: str | None) -> None:
    if path:
        Path(path).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"[serve-bench] wrote {path}", flush=True)


if __name__ == "__main__":
    main()
