"""params.yaml: schema, defaults, round trip, and error messages naming file, line and key."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from relearn.errors import UserError
from relearn.params import Params, default_params_yaml, load_params, parse_params

REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def _write(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _problems(path: Path) -> list[str]:
    with pytest.raises(UserError) as info:
        load_params(path)
    return info.value.problems


def _key_paths(tree: dict, prefix: tuple = ()) -> set[tuple]:
    out = set()
    for k, v in tree.items():
        p = prefix + (k,)
        out.add(p)
        if isinstance(v, dict) and k != "gates":
            out |= _key_paths(v, p)
    return out


# ------------------------------------------------------------------------------ defaults
def test_repo_params_yaml_loads_and_lists_every_key():
    params = load_params(REPO_PARAMS)
    assert isinstance(params, Params)
    raw = yaml.safe_load(REPO_PARAMS.read_text(encoding="utf-8"))
    assert _key_paths(raw) == _key_paths(Params().to_dict())
    # what it says is what was loaded
    assert params.seed == raw["seed"]
    assert params.data.people == raw["data"]["people"]
    assert params.unlearn.lora.target_modules == raw["unlearn"]["lora"]["target_modules"]
    assert set(params.gates()) == set(raw["register"]["gates"])


def test_empty_and_partial_files_fill_in_defaults(tmp_path):
    assert load_params(_write(tmp_path, "")) == Params()
    assert load_params(_write(tmp_path, "# only a comment\n", "c.yaml")) == Params()
    partial = load_params(_write(tmp_path, "seed: 7\nunlearn:\n  lora:\n    r: 4\n", "partial.yaml"))
    expected = Params(seed=7)
    expected.unlearn.lora.r = 4
    assert partial == expected
    assert partial.unlearn.lora.alpha == Params().unlearn.lora.alpha


def test_float_fields_accept_integers_as_floats(tmp_path):
    p = load_params(_write(tmp_path, "unlearn:\n  lr: 1\n"))
    assert p.unlearn.lr == 1.0 and isinstance(p.unlearn.lr, float)


def test_default_params_yaml_round_trips(tmp_path):
    text = default_params_yaml()
    assert parse_params(yaml.safe_load(text), "defaults.yaml", text) == Params()
    assert load_params(_write(tmp_path, text)) == Params()
    # every field carries its help as a comment
    assert "# Seed for data generation" in text
    assert "  lora:  # LoRA adapter settings." in text


def test_default_params_yaml_values_survive_their_comments():
    # the help comments must not swallow values: each field's line parses to that field alone
    text = default_params_yaml()
    raw = yaml.safe_load(text)
    assert raw["model"]["prompt_template"] == "Question: {question}\nAnswer:"
    assert raw["model"]["base"] is None
    assert raw["register"]["gates"] == Params().register.gates


def test_gates_become_gate_params(tmp_path):
    p = load_params(_write(tmp_path, "register:\n  gates:\n    k: {metric: unlearned.kfr, max: 0.5}\n"))
    gates = p.gates()
    assert list(gates) == ["k"]
    assert gates["k"].metric == "unlearned.kfr" and gates["k"].max == 0.5 and gates["k"].min is None


# ------------------------------------------------------------------------------ errors
def test_unknown_nested_key_names_file_line_and_key(tmp_path):
    path = _write(tmp_path, "seed: 1\n"          # 1
                            "unlearn:\n"         # 2
                            "  epochs: 2\n"      # 3
                            "  lora:\n"          # 4
                            "    r: 8\n"         # 5
                            "    rank: 8\n")     # 6
    problems = _problems(path)
    assert len(problems) == 1
    assert problems[0].startswith(f"{path}:6: unlearn.lora.rank: unknown key")
    assert "alpha" in problems[0] and "target_modules" in problems[0]   # lists the known keys


def test_unknown_top_level_key(tmp_path):
    path = _write(tmp_path, "seed: 1\nmodle:\n  layers: 2\n")
    assert _problems(path) == [f"{path}:2: modle: unknown key (known keys here: augment, checkpoint_dir, checkpoint_every, "
                               "compare, data, device, distill, evaluate, export, "
                               "model, register, robustness, seed, serve, target, unlearn)"]


def test_wrong_type_names_line(tmp_path):
    path = _write(tmp_path, "# learning rates\n"   # 1
                            "unlearn:\n"           # 2
                            "  epochs: 2\n"        # 3
                            "\n"                   # 4
                            "  lr: fast\n")        # 5
    assert _problems(path) == [f"{path}:5: unlearn.lr: expected a number, got 'fast'"]


def test_bool_is_not_an_int_and_int_is_not_a_bool(tmp_path):
    path = _write(tmp_path, "target:\n  epochs: true\nevaluate:\n  do_sample: 1\n")
    assert _problems(path) == [f"{path}:2: target.epochs: expected an integer, got True",
                               f"{path}:4: evaluate.do_sample: expected true or false, got 1"]


def test_float_is_not_an_int(tmp_path):
    path = _write(tmp_path, "unlearn:\n  epochs: 2.5\n")
    assert _problems(path) == [f"{path}:2: unlearn.epochs: expected an integer, got 2.5"]


def test_section_must_be_a_mapping_and_values_not_empty(tmp_path):
    path = _write(tmp_path, "model: big\ntarget:\n  lr:\n")
    assert _problems(path) == [f"{path}:1: model: expected a mapping, got 'big'",
                               f"{path}:3: target.lr: must not be empty (expected a number)"]


def test_invalid_choice(tmp_path):
    path = _write(tmp_path, "model:\n  layers: 2\n  dtype: int8\n")
    assert _problems(path) == [f"{path}:3: model.dtype: 'int8' is not one of auto, float32, bfloat16, float16"]


def test_negative_epochs(tmp_path):
    path = _write(tmp_path, "target:\n  epochs: 3\nunlearn:\n  epochs: -1\n")
    assert _problems(path) == [f"{path}:4: unlearn.epochs: must be > 0, got -1"]


@pytest.mark.parametrize("people, forget", [(4, 4), (4, 5), (4, 0)])
def test_forget_people_must_be_fewer_than_people(tmp_path, people, forget):
    path = _write(tmp_path, f"data:\n  people: {people}\n  forget_people: {forget}\n")
    problems = _problems(path)
    assert len(problems) == 1
    assert problems[0].startswith(f"{path}:3: data.forget_people: must be between 1 and data.people - 1 ({people - 1})")
    assert problems[0].endswith(f"got {forget}")


def test_forget_people_line_falls_back_when_only_people_given(tmp_path):
    path = _write(tmp_path, "seed: 0\ndata:\n  people: 4\n")   # default forget_people (4) >= 4
    problems = _problems(path)
    assert len(problems) == 1
    # the key itself has no line; the nearest enclosing key that has one is `data` (line 2)
    assert problems[0].startswith(f"{path}:2: data.forget_people: ")


def test_heads_must_divide_hidden_size(tmp_path):
    path = _write(tmp_path, "model:\n  hidden_size: 30\n  heads: 4\n")
    assert _problems(path) == [f"{path}:3: model.heads: hidden_size 30 is not divisible by heads 4"]


def test_unknown_variant(tmp_path):
    path = _write(tmp_path, "augment:\n  variants: [simple, fancy]\n")
    problems = _problems(path)
    assert len(problems) == 1 and problems[0].startswith(f"{path}:2: augment.variants: unknown variant 'fancy'")


def test_an_empty_prime_is_named(tmp_path):
    path = _write(tmp_path, "augment:\n  primes: ['Certainly!', '  ']\n")
    assert _problems(path) == [f"{path}:2: augment.primes: entry 2 must be a non-empty string, got '  '"]


def test_bad_gates(tmp_path):
    path = _write(tmp_path, "register:\n"                # 1
                            "  model_name: m\n"          # 2
                            "  gates:\n"                 # 3
                            "    no_metric:\n"           # 4
                            "      min: 0.5\n"           # 5
                            "    extra: {metric: x, min: 0, foo: 1}\n"  # 6
                            "    unbounded:\n"           # 7
                            "      metric: y\n"          # 8
                            "    bad_bound: {metric: z, max: high}\n"   # 9
                            "    flat: 3\n")             # 10
    assert _problems(path) == [
        f"{path}:4: register.gates.no_metric.metric: a metric key is required, e.g. 'unlearned.kfr'",
        f"{path}:6: register.gates.extra: unknown gate keys ['foo'] (known: metric, min, max, blocks, bound)",
        f"{path}:7: register.gates.unbounded: needs 'min' or 'max'",
        f"{path}:9: register.gates.bad_bound.max: expected a number, got 'high'",
        f"{path}:10: register.gates.flat: expected a mapping with 'metric' and 'min' or 'max'",
    ]


def test_gate_blocks_names_known_releases(tmp_path):
    path = _write(tmp_path, "register:\n"                                                          # 1
                            "  release: weights\n"                                                 # 2
                            "  gates:\n"                                                           # 3
                            "    ok: {metric: x, max: 1, blocks: [weights]}\n"                     # 4
                            "    never: {metric: x, max: 1, blocks: []}\n"                         # 5
                            "    typo: {metric: x, max: 1, blocks: [api, wieghts]}\n"              # 6
                            "    scalar:\n"                                                        # 7
                            "      metric: x\n"                                                    # 8
                            "      min: 0\n"                                                       # 9
                            "      blocks: weights\n"                                              # 10
                            "    advisory: {metric: x, min: 0}\n")                                 # 11
    assert _problems(path) == [
        f"{path}:6: register.gates.typo.blocks: unknown release 'wieghts' (known: api, weights)",
        f"{path}:10: register.gates.scalar.blocks: expected a list of releases (of api, weights), got 'weights'",
        f"{path}:11: register.gates.advisory: a gate may not be named 'advisory' (its tag would clash with gate.advisory)",
    ]
    gates = load_params(_write(tmp_path, "register:\n  gates:\n    k: {metric: x, min: 0}\n"
                                         "    w: {metric: x, min: 0, blocks: [weights]}\n", "ok.yaml")).gates()
    assert gates["k"].blocks == ["api", "weights"] and gates["w"].blocks == ["weights"]


def test_release_is_api_or_weights(tmp_path):
    assert Params().register.release == "api"
    path = _write(tmp_path, "register:\n  release: open\n")
    assert _problems(path) == [f"{path}:2: register.release: 'open' is not one of api, weights"]
    # the default gates: relearning, membership inference and the truth ratio block only released weights
    blocks = {name: g.blocks for name, g in Params().gates().items()}
    assert {n for n, b in blocks.items() if b == ["weights"]} == {"relearning", "mia", "truth_ratio"}
    assert all(b == ["api", "weights"] for n, b in blocks.items() if n not in ("relearning", "mia", "truth_ratio"))
    repo = load_params(REPO_PARAMS)
    assert repo.register.release == "api" and repo.gates()["relearning"].blocks == ["weights"]


def test_prompt_template_needs_question(tmp_path):
    path = _write(tmp_path, "model:\n  prompt_template: 'Q: {q}\\nA:'\n")
    assert _problems(path) == [f"{path}:2: model.prompt_template: must contain '{{question}}'"]


def test_invalid_yaml_names_line(tmp_path):
    path = _write(tmp_path, "seed: 1\n"          # 1
                            "data:\n"            # 2
                            "  people: 6\n"      # 3
                            "\tgeneral: 4\n")    # 4: a tab cannot start a token
    problems = _problems(path)
    assert len(problems) == 1
    assert problems[0].startswith(f"{path}:4: invalid YAML: ")


def test_top_level_must_be_a_mapping(tmp_path):
    path = _write(tmp_path, "- seed\n- data\n")
    assert _problems(path) == [f"{path}:1: expected a mapping of parameters at the top level"]


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    assert _problems(path) == [f"{path}: file not found"]


def test_not_utf8(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"seed: 1\nmodel:\n  prompt_template: 'Fr\xe9ge {question}'\n")
    problems = _problems(path)
    assert len(problems) == 1 and problems[0].startswith(f"{path}: not UTF-8")


def test_several_problems_are_reported_together(tmp_path):
    path = _write(tmp_path, "seed: zero\n"             # 1
                            "data:\n"                  # 2
                            "  peeple: 3\n"            # 3
                            "unlearn:\n"               # 4
                            "  lr: fast\n"             # 5
                            "  lora:\n"                # 6
                            "    rank: 8\n")           # 7
    problems = _problems(path)
    assert problems == [f"{path}:1: seed: expected an integer, got 'zero'",
                        f"{path}:3: data.peeple: unknown key (known keys here: eval_fraction, eval_templates, forget_file, "
                        "forget_people, forget_subjects, general, general_files, holdout_fraction, holdout_people, path, people, "
                        "private_people, purge_after_days, requests, retain_file, retain_subjects, source)",
                        f"{path}:5: unlearn.lr: expected a number, got 'fast'",
                        f"{path}:7: unlearn.lora.rank: unknown key (known keys here: alpha, dropout, r, target_modules)"]
    with pytest.raises(UserError) as info:
        load_params(path)
    assert str(info.value) == "\n".join(problems)


def test_several_value_problems_are_reported_together(tmp_path):
    path = _write(tmp_path, "model:\n  dtype: int8\ntarget:\n  epochs: 0\nunlearn:\n  batch_size: -2\n")
    assert _problems(path) == [f"{path}:2: model.dtype: 'int8' is not one of auto, float32, bfloat16, float16",
                               f"{path}:4: target.epochs: must be > 0, got 0",
                               f"{path}:6: unlearn.batch_size: must be > 0, got -2"]


def test_export_candidates_name_the_reduced_precisions(tmp_path):
    assert load_params(_write(tmp_path, "export:\n  quantize: fp16\n  candidates: [fp16, int8, int4]\n")).export.candidates \
        == ["fp16", "int8", "int4"]
    path = _write(tmp_path, "export:\n  candidates: [int8, bf16]\n")
    assert _problems(path) == [f"{path}:2: export.candidates: ['bf16'] are not reduced precisions (int8, int4, fp16)"]


def test_parse_params_without_text_names_file_and_key_only():
    with pytest.raises(UserError) as info:
        parse_params({"unlearn": {"lr": "fast"}}, "cfg.yaml")
    assert info.value.problems == ["cfg.yaml: unlearn.lr: expected a number, got 'fast'"]


def test_params_dataclasses_all_have_help():
    def walk(obj):
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value)
            else:
                assert f.metadata.get("help"), f.name
    walk(Params())


# ------------------------------------------------------------------------------ known gaps
def test_scientific_notation_learning_rate(tmp_path):
    assert load_params(_write(tmp_path, "unlearn:\n  lr: 1e-5\n")).unlearn.lr == pytest.approx(1e-5)


@pytest.mark.parametrize("key", ["holdout_people", "general", "eval_templates"])
def test_negative_data_counts_are_rejected(tmp_path, key):
    path = _write(tmp_path, f"data:\n  {key}: -1\n")
    problems = _problems(path)
    assert len(problems) == 1 and problems[0].startswith(f"{path}:2: data.{key}:")


def test_prompt_template_with_extra_placeholder_is_rejected(tmp_path):
    path = _write(tmp_path, "model:\n  prompt_template: 'Q ({topic}): {question}'\n")
    problems = _problems(path)
    assert len(problems) == 1 and problems[0].startswith(f"{path}:2: model.prompt_template:")


def test_robustness_values_are_checked(tmp_path):
    path = _write(tmp_path, "model:\n  base: /models/llama\nrobustness:\n  ladder: [onnx-int3]\n  relearn_lrs: [1e-5, 0.001]\n"
                            "  int4_block_size: 24\n")
    problems = _problems(path)
    assert any(p.startswith(f"{path}:4: robustness.ladder: unknown rung 'onnx-int3'") for p in problems)
    assert any(p.startswith(f"{path}:5: robustness.relearn_lrs: 0.001 suits the small from-scratch model") for p in problems)
    assert any(p.startswith(f"{path}:6: robustness.int4_block_size: must be a power of two") for p in problems)


def test_ls_reference_model_resolves_to_the_pretrained_base_when_there_is_one():
    assert parse_params({}).ppl_model() == "target"  # the from-scratch demo has no base
    pretrained = {"base": "some/dir"}, {"relearn_lrs": [1e-5]}
    assert parse_params({"model": pretrained[0], "robustness": pretrained[1]}).ppl_model() == "base"
    assert parse_params({"model": pretrained[0], "robustness": pretrained[1], "evaluate": {"ppl_model": "target"}}).ppl_model() == "target"
    with pytest.raises(UserError, match="evaluate.ppl_model: 'base' needs model.base"):
        parse_params({"evaluate": {"ppl_model": "base"}})


@pytest.mark.parametrize("profile", sorted((Path(__file__).resolve().parents[1] / "profiles").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_profile_makes_valid_params(profile):
    """A profile is merged over params.yaml by bench/compare_methods.py; a typo must not wait for a long run."""
    import sys
    root = profile.parents[1]
    sys.path.insert(0, str(root / "bench"))
    try:
        from compare_methods import absolute_paths, merged
    finally:
        sys.path.remove(str(root / "bench"))
    params = merged(merged(Params().to_dict(), yaml.safe_load((root / "params.yaml").read_text())),
                    yaml.safe_load(profile.read_text()))
    params["data"]["path"] = params["data"]["path"] or "given/on/the/command/line"
    parse_params(absolute_paths(params), profile.name)


def test_serve_checks(tmp_path):
    path = _write(tmp_path, "serve:\n  backend: tensorrt\n  max_queue: 0\n  admin: true\n  max_wait_ms: -1\n")
    problems = _problems(path)
    assert f"{path}:2: serve.backend: 'tensorrt' is not one of onnx, torch" in problems
    assert f"{path}:3: serve.max_queue: must be > 0, got 0" in problems
    assert f"{path}:4: serve.admin: the admin route needs serve.token_env (a bearer token)" in problems
    assert f"{path}:5: serve.max_wait_ms: must be >= 0, got -1.0" in problems


def test_device_and_checkpoint_values_are_checked(tmp_path):
    path = _write(tmp_path, "device: gpu0\ncheckpoint_every: -1\n")
    assert _problems(path) == [f"{path}:2: checkpoint_every: must be >= 0 (0: no checkpoints), got -1",
                               f"{path}:1: device: expected auto, cpu, cuda or cuda:N, got 'gpu0'"]


def test_auto_dtype_is_float32_on_a_cpu_and_explicit_dtypes_stay():
    import dataclasses

    import torch

    p = Params()
    assert p.model.dtype == "auto"
    expected = "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float32"
    assert p.dtype() == expected
    assert dataclasses.replace(p, device="cpu").dtype() == "float32"
    assert dataclasses.replace(p, model=dataclasses.replace(p.model, dtype="bfloat16")).dtype() == "bfloat16"


def test_hardening_options_that_cannot_apply_are_refused(tmp_path):
    path = _write(tmp_path, "unlearn:\n  harden:\n    mask: true\n    negative: dpo3\n"
                            "compare:\n  methods: [relearn, npo]\n"
                            "model:\n  dtype: float16\n")
    problems = "\n".join(_problems(path))
    assert "unlearn.harden.negative: 'dpo3' is not one of none, dpo, simnpo" in problems
    assert "unlearn.harden.mask: disruption masking" in problems and "npo" in problems
    assert "model.dtype: float16 trains with a loss scale" in problems
