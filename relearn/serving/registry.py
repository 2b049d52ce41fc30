"""Which version a registry alias names, whether it may be served, and loading it as an engine.

The registry is the MLflow store of `relearn.registry.tracking` (`$MLFLOW_TRACKING_URI`: the
project's SQLite file, or a tracking server over http://). A version may be served only when it
may be promoted: gates passed and approved (`relearn.registry.versions.release_problem`); an alias
moved by hand onto any other version is refused.

A version's files, as the register stage logs them:
- `deployable/` in the version's run: the ONNX model the export stage checked (model_quantized.onnx
  for int8, model.onnx for fp32), its tokenizer and prompt_format.json;
- the logged pyfunc model (the version's source): `artifacts/<target>` (the base model),
  `artifacts/adapter` and `artifacts/generation.json`: what the torch backend loads, and what
  another ONNX precision is exported from.
Downloads go to `<cache_dir>/<model>/<version>-<run id>/`, each through a temporary directory renamed into
place, so an interrupted download is never mistaken for a complete one.
"""
from __future__ import annotations

import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from relearn.errors import UserError
from relearn.serving.engine import Engine, load_onnx_engine, load_torch_engine

log = logging.getLogger("relearn.serve")
QUANTIZATIONS = ("auto", "int8", "fp32", "int4", "fp16")


@dataclass(frozen=True)
class AliasTarget:
    """What an alias points to now."""
    version: str
    run_id: str
    source: str
    problem: Optional[str]  # why it may not be served, or None


class RegistrySource:
    """Reads one alias of one registered model."""

    def __init__(self, model_name: str, alias: str):
        from relearn.registry.tracking import client, tracking_uri

        self.model_name, self.alias = model_name, alias
        self.uri = tracking_uri()
        self.client = client()

    def resolve(self) -> Optional[AliasTarget]:
        """The version behind the alias (None when the alias or the model does not exist)."""
        from relearn.registry.versions import release_problem, version_by_alias

        mv = version_by_alias(self.client, self.model_name, self.alias)
        if mv is None:
            return None
        return AliasTarget(str(mv.version), mv.run_id or (mv.tags or {}).get("run_id", ""), mv.source,
                           release_problem(self.model_name, mv))

    def describe(self) -> str:
        return f"models:/{self.model_name}@{self.alias} ({self.uri})"


class VersionLoader:
    """Fetches a version's files and loads them as an `Engine`."""

    def __init__(self, source: RegistrySource, backend: str, quantization: str, cache_dir: str | Path,
                 provider: str = "auto"):
        if backend not in ("onnx", "torch"):
            raise UserError(f"serve.backend must be onnx or torch, got {backend!r}")
        if quantization not in QUANTIZATIONS:
            raise UserError(f"serve.quantization must be one of {', '.join(QUANTIZATIONS)}, got {quantization!r}")
        self.source, self.backend, self.quantization, self.provider = source, backend, quantization, provider
        self.cache = Path(cache_dir) / _safe(source.model_name)

    def load(self, target: AliasTarget) -> Engine:
        if target.problem:
            raise UserError(target.problem)
        where = self.cache / f"{target.version}-{target.run_id[:12]}"  # a reset store reuses version numbers
        engine = self._torch(target, where) if self.backend == "torch" else self._onnx(target, where)
        engine.guard = self._guard(target, where)
        return engine

    def _guard(self, target: AliasTarget, where: Path):
        """The version's output guard (`guard/` in its run), or None when it carries none."""
        from relearn.registry.tracking import client
        from relearn.serving.guard import Guard

        if not target.run_id or not any(f.path.endswith("guard.json") for f in
                                        client().list_artifacts(target.run_id, "guard")):
            log.warning("version %s carries no output guard: its answers are not checked against its forget "
                        "facts", target.version)
            return None
        guard = Guard.load(self._download(f"runs:/{target.run_id}/guard", where / "guard"))
        log.info("version %s: output guard over %d facts (%d erasure requests)", target.version,
                 len(guard.facts), len(guard.requests))
        return guard

    # ------------------------------------------------------------------------ fetching
    def _download(self, uri: str, dst: Path) -> Path:
        """`uri` (an artifact URI) downloaded to `dst` once; the local path of its content."""
        import mlflow

        if dst.exists():
            return dst
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp),
                                                             tracking_uri=self.source.uri))
            local.rename(dst)  # tmp itself, or the folder named after the URI's last part inside it
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return dst

    def _deployable(self, target: AliasTarget, where: Path) -> Path:
        if not target.run_id:
            raise RuntimeError(f"version {target.version} has no run, so no deployable")
        return self._download(f"runs:/{target.run_id}/deployable", where / "deployable")

    def _pyfunc_parts(self, target: AliasTarget, where: Path) -> dict[str, Path]:
        """base, adapter and generation settings of the version's logged pyfunc model."""
        import yaml

        model_dir = self._download(target.source, where / "model")
        mlmodel = yaml.safe_load((model_dir / "MLmodel").read_text(encoding="utf-8"))
        artifacts = mlmodel["flavors"]["python_function"].get("artifacts") or {}
        parts = {}
        for key in ("base_model", "adapter", "generation"):
            if key == "adapter" and key not in artifacts:  # a distilled model: the base model is the whole model
                parts[key] = None
                continue
            if key not in artifacts:
                raise RuntimeError(f"the logged model of version {target.version} has no {key} artifact")
            parts[key] = model_dir / artifacts[key]["path"]
        return parts

    # ------------------------------------------------------------------------ loading
    def _torch(self, target: AliasTarget, where: Path) -> Engine:
        from relearn.io import read_json

        parts = self._pyfunc_parts(target, where)
        return load_torch_engine(parts["base_model"], parts["adapter"], read_json(parts["generation"]),
                                 model_name=self.source.model_name, version=target.version,
                                 artifact=f"{target.source} (base model + adapter)")

    def _onnx(self, target: AliasTarget, where: Path) -> Engine:
        from relearn.export.onnx import DEPLOYABLE_FILES as files

        deployable = self._deployable(target, where)
        # what the export stage shipped (export.quantize: auto ships the fastest that passed its gates)
        shipped = next((q for q, f in files.items() if q != "fp32" and (deployable / f).is_file()), "fp32")
        wanted = shipped if self.quantization == "auto" else self.quantization
        common = dict(model_name=self.source.model_name, version=target.version, quantization=wanted,
                      provider=self.provider)
        if wanted == shipped:
            return load_onnx_engine(deployable, files[wanted], artifact=f"runs:/{target.run_id}/deployable", **common)
        model_dir = self._build_onnx(target, where, wanted)
        log.warning("version %s: serving %s, built from the logged model; the export gates checked the %s "
                    "deployable, not this one", target.version, wanted, shipped)
        return load_onnx_engine(model_dir, files[wanted], artifact=f"{target.source} exported to {wanted}", **common)

    def _build_onnx(self, target: AliasTarget, where: Path, precision: str) -> Path:
        """An ONNX directory of another precision than the deployable, from the version's base + adapter."""
        from relearn.export.onnx import (PROMPT_FORMAT_FILE, convert_fp16, export_onnx, merge_adapter, quantize_int4,
                                         quantize_int8)
        from relearn.io import read_json, write_json

        out = where / f"onnx-{precision}"
        if out.is_dir():
            return out
        parts = self._pyfunc_parts(target, where)
        settings = read_json(parts["generation"])
        merged = where / "merged"
        if not merged.is_dir():
            merge_adapter(parts["base_model"], parts["adapter"], merged)
        fp32 = where / "onnx-fp32"
        if not fp32.is_dir():
            export_onnx(merged, fp32)
            write_json(fp32 / PROMPT_FORMAT_FILE, settings.get("prompt_format")
                       or {"template": settings.get("prompt_template", ""), "mode": "plain"})
        if precision == "int8":  # the quantizers copy prompt_format.json with the other companion files
            quantize_int8(fp32, out)
        elif precision == "int4":
            quantize_int4(fp32, out)
        elif precision == "fp16":
            convert_fp16(fp32, out)
        return out


def _safe(name: str) -> str:
    return re.sub(r"[^\w.-]", "_", name)
