"""Merge, export to ONNX, quantize to int8, and check greedy-token parity.

Every step writes into a temporary directory beside its destination and renames it into place
only when the step succeeded (`relearn.io.atomic_dir`), so a crash never leaves half an export.

Layout written by `run_export(base, adapter, out)`:

    out/merged/     the target model with the adapter merged in (fp32 safetensors + tokenizer)
    out/onnx-fp32/  model.onnx (with past key/values) + config, generation config, tokenizer
    out/onnx-int8/  model_quantized.onnx (weight-only int8, `quantize_int8`) + the same companion files

`quantize_int4` (not part of `run_export`) writes model_int4.onnx, a weight-only 4-bit model
(MatMulNBits, like the int8 model), for the robustness checks of relearn.robustness.
"""
from __future__ import annotations

import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional, Sequence

from relearn.io import atomic_dir

if TYPE_CHECKING:
    from relearn.modeling.encoding import PromptFormat

FP32_FILE = "model.onnx"
INT8_FILE = "model_quantized.onnx"
INT4_FILE = "model_int4.onnx"
FP16_FILE = "model_fp16.onnx"
PROMPT_FORMAT_FILE = "prompt_format.json"  # relearn.modeling.encoding.PromptFormat.to_dict(), written by the export stage
CPU = "CPUExecutionProvider"
# Files that make a directory loadable by `ORTModelForCausalLM` + `AutoTokenizer` besides the ONNX graph
# (.jinja: the chat template, which transformers saves beside tokenizer_config.json).
COMPANION_SUFFIXES = (".json", ".txt", ".model", ".jinja")


# ------------------------------------------------------------------------------------ steps
def merge_adapter(base_dir: str | Path, adapter_dir: str | Path | None, out_dir: str | Path) -> Path:
    """Fold the LoRA adapter into the base weights; save model (fp32 safetensors) and tokenizer.
    Without an adapter (a distilled model) the model is saved as it is."""
    from relearn.modeling.model import load_with_adapter

    model, tokenizer = load_with_adapter(base_dir, adapter_dir, dtype="float32")
    merged = model.merge_and_unload() if adapter_dir is not None else model
    merged.eval()
    with atomic_dir(out_dir) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return Path(out_dir)


def export_onnx(merged_dir: str | Path, out_dir: str | Path) -> Path:
    """Export a model directory to one ONNX graph with past key/values; returns the model.onnx path."""
    from optimum.exporters.onnx import main_export

    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp, _quiet_tracing():
        main_export(str(merged_dir), output=tmp, task="text-generation-with-past",
                    do_validation=False, local_files_only=True)
        _copy_companions(Path(merged_dir), tmp)
    return out_dir / FP32_FILE


@contextmanager
def _quiet_tracing() -> Iterator[None]:
    """Hide the tracer's warnings about Python-side branches: the parity checks are the real test."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Exporting aten::index operator")
        yield


INT8_KEEP_FLOAT = ("lm_head",)
INT8_ACCURACY_LEVEL = 4  # MatMulNBits computes with int8 activations (see quantize_int8)


def output_head_nodes(model) -> list[str]:
    """Names of the MatMul/Gemm node that computes the logits (the output head, `lm_head`).

    Walks up from the graph output named `logits` (the first output when none is) through the
    nodes that only reshape, cast or add a bias, to the first MatMul or Gemm. Found in the graph,
    not by a hard-coded name, so any exporter's naming works.
    """
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    names = [o.name for o in graph.output]
    name = "logits" if "logits" in names else names[0]
    seen = set()
    while name in producer and name not in seen:
        seen.add(name)
        node = producer[name]
        if node.op_type in ("MatMul", "Gemm"):
            return [node.name]
        name = node.input[0]
    return []


def float_nodes(model, keep_float: Sequence[str]) -> list[str]:
    """The MatMul nodes that `keep_float` leaves unquantized: "lm_head" is the output head (found
    by `output_head_nodes`); any other entry selects the MatMuls whose node name contains it (e.g.
    "down_proj" matches "/model/layers.3/mlp/down_proj/MatMul")."""
    names = []
    for part in keep_float:
        if part == "lm_head":
            head = output_head_nodes(model)
            if not head:
                raise RuntimeError("keep_float: no output head (a MatMul/Gemm computing the logits) in the graph")
            names += head
        else:
            matched = [n.name for n in model.graph.node if n.op_type == "MatMul" and part in n.name]
            if not matched:
                raise ValueError(f"keep_float: no MatMul node name contains {part!r}")
            names += matched
    return sorted(set(names))


def quantize_int8(onnx_dir: str | Path, out_dir: str | Path, block_size: int = 32, symmetric: bool = False,
                  keep_float: Sequence[str] = INT8_KEEP_FLOAT, accuracy_level: Optional[int] = INT8_ACCURACY_LEVEL) -> Path:
    """Weight-only int8 of `onnx_dir/model.onnx` into a loadable model dir; returns the
    model_quantized.onnx path (load it with `load_onnx(out_dir, file_name=INT8_FILE)`).

    Every MatMul with a constant weight (attention and MLP projections) becomes a MatMulNBits
    node (bits=8) whose weight is stored as 8-bit integers with one fp32 scale (and, unless
    `symmetric`, one zero point) per block of `block_size` input features, as `quantize_int4`
    does with 4 bits. Activations stay fp32: ONNX Runtime's dynamic int8 (uint8 activations with
    one scale per tensor, the previous method) rounds away the small values beside a pretrained
    model's activation outliers: on SmolLM2-135M its greedy tokens agreed with fp32 on 12% of
    positions, per-channel weights with the head in fp32 on 20%, weight-only int8 on 87%
    (bench/export_int8.py, chat prompts).
    The embedding Gather stays fp32 (8-bit Gather is not supported), and so do the MatMuls that
    `keep_float` names (see `float_nodes`; by default the output head, where rounding flips the
    argmax between near-tied tokens; in a model with tied embeddings it reads the fp32
    embedding and is never quantized anyway). `accuracy_level` is MatMulNBits' compute precision:
    4 (the default, INT8_ACCURACY_LEVEL) quantizes the activations to int8 inside the kernel; None
    computes in fp32, dequantizing the weights at every call. On SmolLM2-135M (2 CPU cores, ONNX Runtime
    1.32, bench/export_candidates.py) 4 took 25 ms a token and None 222 (fp32 ONNX 40, torch fp32 66),
    both with the same greedy tokens as fp32 ONNX on the 32 parity questions.
    """
    import onnx

    graph = onnx.load(str(Path(onnx_dir) / FP32_FILE), load_external_data=False)
    exclude = float_nodes(graph, keep_float)
    del graph
    return _quantize_weights(onnx_dir, out_dir, INT8_FILE, bits=8, block_size=block_size, symmetric=symmetric,
                             accuracy_level=accuracy_level, exclude=exclude)



def quantize_int4(onnx_dir: str | Path, out_dir: str | Path, block_size: int = 32, symmetric: bool = False,
                  accuracy_level: Optional[int] = None) -> Path:
    """Weight-only 4-bit quantization of `onnx_dir/model.onnx` into a loadable model dir; returns
    the model_int4.onnx path (load it with `load_onnx(out_dir, file_name=INT4_FILE)`).

    onnxruntime's MatMulNBits quantizer (the "DEFAULT" round-to-nearest algorithm): every MatMul
    with a constant weight (attention and MLP projections, the output head) becomes a
    com.microsoft MatMulNBits node whose weight is stored as 4-bit integers in blocks of
    `block_size` consecutive input features, one fp32 scale per block and, unless `symmetric`
    (ORT's default is asymmetric), one 4-bit zero point per block. Activations stay fp32; the
    embedding Gather and the norms stay fp32 too. `block_size` must be a power of two >= 16 (the
    kernel's rule); an input width that is not a multiple of it is zero-padded to whole blocks.
    `accuracy_level` is MatMulNBits' compute-precision attribute (None: the kernel's default).
    """
    return _quantize_weights(onnx_dir, out_dir, INT4_FILE, bits=4, block_size=block_size, symmetric=symmetric,
                             accuracy_level=accuracy_level)


def _quantize_weights(onnx_dir: str | Path, out_dir: str | Path, file_name: str, bits: int, block_size: int,
                      symmetric: bool, accuracy_level: Optional[int], exclude: Sequence[str] = ()) -> Path:
    """MatMulNBits weight-only quantization of `onnx_dir/model.onnx` into `out_dir/file_name`."""
    import onnx

    if block_size < 16 or block_size & (block_size - 1):
        raise ValueError(f"block_size must be a power of two >= 16, got {block_size}")
    onnx_dir, out_dir = Path(onnx_dir), Path(out_dir)
    source = onnx_dir / FP32_FILE
    external = any(t.data_location == onnx.TensorProto.EXTERNAL
                   for t in _all_tensors(onnx.load(str(source), load_external_data=False)))
    MatMulNBitsQuantizer, DefaultWeightOnlyQuantConfig = _nbits_quantizer()
    config = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=symmetric,
                                          accuracy_level=accuracy_level, bits=bits)
    quantizer = MatMulNBitsQuantizer(onnx.load(str(source)), nodes_to_exclude=list(exclude), algo_config=config)
    quantizer.process()
    with atomic_dir(out_dir) as tmp:
        _copy_companions(onnx_dir, tmp)
        # a model that needed external data (> 2 GB) keeps it, in <file_name>.data
        quantizer.model.save_model_to_file(str(tmp / file_name), use_external_data_format=external)
        written = onnx.load(str(tmp / file_name), load_external_data=False)
        if not any(n.op_type == "MatMulNBits" for n in written.graph.node):
            raise RuntimeError(f"{bits}-bit quantization left no MatMulNBits node in {tmp / file_name}")
    return out_dir / file_name


def convert_fp16(onnx_dir: str | Path, out_dir: str | Path) -> Path:
    """fp16 weights and compute of `onnx_dir/model.onnx` into a loadable model dir; returns the
    model_fp16.onnx path (load it with `load_onnx(out_dir, file_name=FP16_FILE)`).

    ONNX Runtime's float16 converter (onnxruntime.transformers.float16): every float initializer and
    every float tensor between nodes becomes fp16, except the ops it keeps in fp32 by default (those
    without fp16 kernels), with casts around them. The graph's inputs and outputs stay fp32
    (`keep_io_types`), so the KV cache and the logits keep the types every engine here feeds and reads.
    Half the size of fp32 and, with the CUDA provider, the precision GPUs compute fastest in; on a CPU,
    ONNX Runtime computes most fp16 ops through casts, so it is slower than fp32 there (the export
    stage measures it like any candidate; bench/export_candidates.py prints it)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx_dir, out_dir = Path(onnx_dir), Path(out_dir)
    source = onnx_dir / FP32_FILE
    external = any(t.data_location == onnx.TensorProto.EXTERNAL
                   for t in _all_tensors(onnx.load(str(source), load_external_data=False)))
    # a model with external data (> 2 GB) goes by path: the converter then infers types with infer_shapes_path,
    # which such a model needs for the casts around the ops it keeps in fp32
    converted = convert_float_to_float16(str(source) if external else onnx.load(str(source)), keep_io_types=True)
    with atomic_dir(out_dir) as tmp:
        _copy_companions(onnx_dir, tmp)
        onnx.save(converted, str(tmp / FP16_FILE), save_as_external_data=external,
                  location=f"{FP16_FILE}.data" if external else None)
        written = onnx.load(str(tmp / FP16_FILE), load_external_data=False)
        if not any(t.data_type == onnx.TensorProto.FLOAT16 for t in written.graph.initializer):
            raise RuntimeError(f"the fp16 conversion left no fp16 weight in {tmp / FP16_FILE}")
    return out_dir / FP16_FILE


def _nbits_quantizer():
    """(MatMulNBitsQuantizer, DefaultWeightOnlyQuantConfig), imported without their side effect:
    the module calls logging.basicConfig(level=INFO) on import, which would turn on INFO logging
    for every library in the process. Root handlers and level are put back as they were.
    (The module needs the `onnx-ir` package, which onnxruntime does not declare.)"""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import (DefaultWeightOnlyQuantConfig,
                                                                     MatMulNBitsQuantizer)
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(f"int8 and int4 (MatMulNBits) quantization need onnxruntime's quantization tools and their "
                                  f"dependencies ({e.name} is missing: pip install onnx-ir ml_dtypes)") from e
    finally:
        for h in root.handlers[:]:
            if h not in handlers:
                root.removeHandler(h)
        root.setLevel(level)
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    return MatMulNBitsQuantizer, DefaultWeightOnlyQuantConfig


def _copy_companions(src: Path, dst: Path) -> None:
    """Copy config, generation config and tokenizer files that `dst` lacks."""
    for f in src.iterdir():
        if f.is_file() and f.suffix in COMPANION_SUFFIXES and not (dst / f.name).exists():
            shutil.copy2(f, dst / f.name)


# ------------------------------------------------------------------------------------ loading
def pick_provider(requested: Optional[str] = None) -> str:
    """The execution provider to use: CPU unless another is requested and available ("auto": CUDA if present)."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    if requested is None:
        return CPU
    if requested == "auto":
        return "CUDAExecutionProvider" if "CUDAExecutionProvider" in available else CPU
    if requested not in available:
        print(f"[export] {requested} is not available (have {', '.join(available)}); using {CPU}", flush=True)
        return CPU
    return requested


def load_onnx(model_dir: str | Path, file_name: str = FP32_FILE, provider: Optional[str] = None):
    """An `ORTModelForCausalLM` from an exported directory (CPU unless a provider is requested)."""
    from optimum.onnxruntime import ORTModelForCausalLM

    return ORTModelForCausalLM.from_pretrained(str(model_dir), file_name=file_name,
                                               provider=pick_provider(provider), use_cache=True)


def load_tokenizer(model_dir: str | Path):
    """The tokenizer saved beside an export, with padding defined and no token_type_ids."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.model_input_names = ["input_ids", "attention_mask"]
    return tokenizer


# ------------------------------------------------------------------------------------ measures
def onnx_size_bytes(path: str | Path) -> int:
    """Size of an .onnx file plus every external data file its tensors reference."""
    import onnx

    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    locations = {entry.value
                 for tensor in _all_tensors(model)
                 if tensor.data_location == onnx.TensorProto.EXTERNAL
                 for entry in tensor.external_data if entry.key == "location"}
    return path.stat().st_size + sum((path.parent / loc).stat().st_size for loc in locations)


def _all_tensors(model) -> Iterator:
    """Initializers of the main graph and of every subgraph (If/Loop branches)."""
    graphs = [model.graph]
    while graphs:
        graph = graphs.pop()
        yield from graph.initializer
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("g"):
                    graphs.append(attr.g)
                graphs.extend(attr.graphs)


def token_parity(ids_a: list[list[int]], ids_b: list[list[int]]) -> dict:
    """Agreement between two lists of generated token sequences (row i of `a` against row i of `b`).

    - exact_match: share of rows whose two sequences are identical.
    - token_agreement: sum over rows of the common-prefix length (positions before the first
      divergence) divided by the sum over rows of max(len(a_i), len(b_i)). Tokens after a first
      divergence count as disagreeing even when they happen to match again, and a sequence that
      stops early disagrees on every position the other one still has. 1.0 when there are no
      positions at all.
    - n: number of rows.
    """
    if len(ids_a) != len(ids_b):
        raise ValueError(f"token_parity: {len(ids_a)} rows against {len(ids_b)}")
    exact = sum(a == b for a, b in zip(ids_a, ids_b))
    agreed = sum(_common_prefix(a, b) for a, b in zip(ids_a, ids_b))
    positions = sum(max(len(a), len(b)) for a, b in zip(ids_a, ids_b))
    n = len(ids_a)
    return {"exact_match": exact / n if n else 1.0,
            "token_agreement": agreed / positions if positions else 1.0,
            "n": n}


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


# ------------------------------------------------------------------------------------ pipeline
@contextmanager
def _step(name: str, seconds: dict) -> Iterator[None]:
    """Print what runs and how long it took; record the time under `name`."""
    print(f"[export] {name} ...", flush=True)
    start = time.monotonic()
    yield
    seconds[name] = round(time.monotonic() - start, 3)
    print(f"[export] {name} done in {seconds[name]:.1f}s", flush=True)


def _mb(n_bytes: int) -> float:
    return round(n_bytes / 2**20, 3)


QUANTIZED_FILES = {"int8": INT8_FILE, "int4": INT4_FILE, "fp16": FP16_FILE}   # the reduced precisions
DEPLOYABLE_FILES = {"fp32": FP32_FILE, **QUANTIZED_FILES}


def ms_per_token(model, tokenizer, questions: list[str], template: str | PromptFormat, max_new_tokens: int) -> float:
    """Greedy decoding one question at a time (a lone client's view): milliseconds per generated token,
    after one warm-up question."""
    from relearn.modeling.generation import generate_token_ids

    generate_token_ids(model, tokenizer, questions[:1], template, max_new_tokens, 1)
    tokens, start = 0, time.perf_counter()
    for question in questions:
        tokens += sum(len(r) for r in generate_token_ids(model, tokenizer, [question], template, max_new_tokens, 1))
    return round(1000 * (time.perf_counter() - start) / max(tokens, 1), 3)


def choose_deployable(candidates: dict[str, dict], agreement_min: float, krr_drop_max: float,
                      tie: float = 0.10) -> str:
    """The candidate to ship: of those that pass the deployable gates (token agreement >= `agreement_min`,
    KRR at most `krr_drop_max` below fp32's, no KFR lost against fp32), the fastest per token; candidates
    within `tie` of the fastest count as equally fast and the smallest on disk wins (timings on a busy
    machine should not flip the choice). fp32 ONNX, the reference, passes by definition. Without timings,
    the smallest that passes."""
    fp32 = candidates["fp32"]
    passing = {name: c for name, c in candidates.items()
               if name == "fp32" or (c["token_agreement"] >= agreement_min
                                     and fp32["krr"] - c["krr"] <= krr_drop_max + 1e-9
                                     and c["kfr"] >= fp32["kfr"] - 1e-9)}
    for name, c in candidates.items():
        c["passes"] = name in passing
    timed = [c.get("ms_per_token") for c in passing.values()]
    if all(t is not None for t in timed):
        fastest = min(timed)
        passing = {n: c for n, c in passing.items() if c["ms_per_token"] <= fastest * (1 + tie)}
    return min(passing, key=lambda n: (passing[n]["mb"], n))


def run_export(base_dir: str | Path, adapter_dir: str | Path | None, out_dir: str | Path, questions: list[str],
               template: str | PromptFormat, max_new_tokens: int, quantize: str = "int8", batch_size: int = 32,
               int8_block_size: int = 32, int8_keep_float: Sequence[str] = INT8_KEEP_FLOAT,
               int8_accuracy_level: Optional[int] = INT8_ACCURACY_LEVEL, candidates: Sequence[str] = ("int8",),
               int4_block_size: int = 32, latency_questions: int = 0,
               device: str = "cpu", provider: Optional[str] = None) -> dict:
    """Merge, export fp32 ONNX and the quantized candidates, and compare greedy tokens. `quantize`:
    "int8", "int4" or "fp16" builds that one (see `quantize_int8`, `quantize_int4`, `convert_fp16`),
    "auto" every precision in `candidates`, "none" none. `template` goes to relearn.modeling.generation unchanged.

    Returns `candidates`: for fp32 and each quantized model its size (MiB), its token agreement (a
    quantized model's greedy tokens against fp32 ONNX; fp32 ONNX's against PyTorch), its directory and
    file, and with `latency_questions` > 0 its milliseconds per token (`ms_per_token`, batch 1); besides,
    the int8 keys the stage always reported (int8_mb, int8_ratio, parity_int8_vs_fp32), the fp32 parity,
    the answers and step timings. `token_agreement` is that of the quantized model built first (fp32's
    with none); the stage sets the shipped one's. `device` runs the PyTorch model, `provider` the ONNX
    sessions (pick_provider).
    """
    from relearn.modeling.generation import generate_token_ids
    from relearn.modeling.model import load_pretrained

    if quantize not in ("auto", "none", *QUANTIZED_FILES):
        raise ValueError(f"quantize must be 'auto', 'none' or one of {', '.join(QUANTIZED_FILES)}, got {quantize!r}")
    unknown = [c for c in candidates if c not in DEPLOYABLE_FILES]
    if unknown:
        raise ValueError(f"unknown export candidates {unknown}; known: {', '.join(DEPLOYABLE_FILES)}")
    builds = [quantize] if quantize in QUANTIZED_FILES else \
        ([c for c in dict.fromkeys(candidates) if c in QUANTIZED_FILES] if quantize == "auto" else [])
    out_dir = Path(out_dir)
    merged_dir, fp32_dir = out_dir / "merged", out_dir / "onnx-fp32"
    seconds: dict[str, float] = {}

    def tokens(model, tokenizer) -> list[list[int]]:
        return generate_token_ids(model, tokenizer, questions, template, max_new_tokens, batch_size)

    with _step("merge adapter", seconds):
        merge_adapter(base_dir, adapter_dir, merged_dir)
    with _step("export fp32 onnx", seconds):
        fp32_path = export_onnx(merged_dir, fp32_dir)
    with _step("generate torch", seconds):
        model, tokenizer = load_pretrained(merged_dir, device=device)
        ids_torch = tokens(model, tokenizer)
        del model
    with _step("generate fp32 onnx", seconds):
        ids_fp32 = tokens(load_onnx(fp32_dir, provider=provider), load_tokenizer(fp32_dir))

    fp32_bytes = onnx_size_bytes(fp32_path)
    report = {
        "quantize": quantize,
        "fp32_mb": _mb(fp32_bytes),
        "int8_mb": None, "int8_ratio": None,
        "parity_fp32_vs_torch": token_parity(ids_fp32, ids_torch),
        "parity_int8_vs_fp32": None,
        "token_agreement": None,
        "answers_fp32": _decode(tokenizer, ids_fp32),
        "answers_int8": None,
        "paths": {"merged": str(merged_dir), "fp32": str(fp32_path), "int8": None},
        "candidates": {"fp32": {"mb": _mb(fp32_bytes), "ratio": 1.0, "dir": str(fp32_dir), "file": FP32_FILE,
                                "token_agreement": token_parity(ids_fp32, ids_torch)["token_agreement"]}},
        "seconds": seconds,
    }
    for precision in builds:
        target = out_dir / f"onnx-{precision}"
        with _step(f"quantize {precision}", seconds):
            if precision == "int8":
                path = quantize_int8(fp32_dir, target, block_size=int8_block_size, keep_float=int8_keep_float,
                                     accuracy_level=int8_accuracy_level)
            elif precision == "fp16":
                path = convert_fp16(fp32_dir, target)
            else:
                path = quantize_int4(fp32_dir, target, block_size=int4_block_size)
        with _step(f"generate {precision} onnx", seconds):
            ids = tokens(load_onnx(target, file_name=QUANTIZED_FILES[precision], provider=provider),
                         load_tokenizer(target))
        size = onnx_size_bytes(path)
        parity = token_parity(ids, ids_fp32)
        report["candidates"][precision] = {"mb": _mb(size), "ratio": round(size / fp32_bytes, 4), "dir": str(target),
                                           "file": QUANTIZED_FILES[precision],
                                           "token_agreement": parity["token_agreement"]}
        if precision == "int8":
            report.update({"int8_mb": _mb(size), "int8_ratio": round(size / fp32_bytes, 4),
                           "parity_int8_vs_fp32": parity, "answers_int8": _decode(tokenizer, ids)})
            report["paths"]["int8"] = str(path)
    if latency_questions > 0:
        with _step("latency (batch 1)", seconds):
            for c in report["candidates"].values():
                c["ms_per_token"] = ms_per_token(load_onnx(c["dir"], file_name=c["file"], provider=provider),
                                                 load_tokenizer(c["dir"]), questions[:latency_questions], template,
                                                 max_new_tokens)
    report["token_agreement"] = report["candidates"][builds[0] if builds else "fp32"]["token_agreement"]
    seconds["total"] = round(sum(seconds.values()), 3)
    _print_summary(report)
    return report


def _decode(tokenizer, rows: list[list[int]]) -> list[str]:
    return [tokenizer.decode(r, skip_special_tokens=True).strip() for r in rows]


def _print_summary(report: dict) -> None:
    p = report["parity_fp32_vs_torch"]
    line = (f"[export] fp32 {report['fp32_mb']:.2f} MiB, parity vs torch: exact {p['exact_match']:.3f}, "
            f"tokens {p['token_agreement']:.3f}")
    for name, c in report["candidates"].items():
        if name != "fp32":
            line += (f"; {name} {c['mb']:.2f} MiB ({100 * c['ratio']:.0f}% of fp32), tokens vs fp32 "
                     f"{c['token_agreement']:.3f}")
    print(line, flush=True)
