"""Checkpoints of the training loops (relearn.training.checkpoints) in one process: what a checkpoint holds,
and a run cut short resuming to the weights of an uninterrupted one. (A real kill of the unlearn
stage, and two processes, are in tests/test_distributed.py.)"""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from relearn.training import checkpoints as checkpoints_module
from relearn.modeling.model import train_tokenizer
from relearn.training.loop import TrainSpec, train_causal_lm

pytestmark = pytest.mark.usefixtures("one_thread")

PAIRS = [(f"What does person {i} do?", f"Person {i} works as a {job}.")
         for i, job in enumerate(["baker", "pilot", "nurse", "tailor", "farmer", "judge"])]
TEMPLATE = "Question: {question}\nAnswer:"


class Killed(Exception):
    pass


def _model(tied: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = train_tokenizer([TEMPLATE.format(question=q) + " " + a for q, a in PAIRS] * 3, vocab_size=200)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=tied,
                                         pad_token_id=tok.pad_token_id))
    return model, tok


def _train(model, tok, directory, every: int):
    return train_causal_lm(model, tok, PAIRS, _spec(directory, every), desc="t")


def _spec(directory, every: int) -> TrainSpec:
    return TrainSpec(template=TEMPLATE, max_length=48, epochs=4, batch_size=2, lr=3e-3, warmup_ratio=0.1,
                     weight_decay=0.0, grad_clip=1.0, seed=0, device="cpu", checkpoint_dir=directory,
                     checkpoint_every=every)


@pytest.mark.parametrize("tied", [False, True])
def test_a_full_fine_tune_cut_short_resumes_to_the_uninterrupted_weights(tmp_path, monkeypatch, tied):
    """Full fine-tuning (every weight trainable, tied embeddings or not): the checkpoint holds every
    weight once, and the resumed run ends where an uninterrupted one does."""
    whole, history = _train(*_model(tied), None, 0)
    save = checkpoints_module.Checkpoints.maybe_save

    def save_then_die(self, step, rows, notes=None):
        save(self, step, rows, notes)
        if step == 6:
            raise Killed

    monkeypatch.setattr(checkpoints_module.Checkpoints, "maybe_save", save_then_die)
    with pytest.raises(Killed):
        _train(*_model(tied), tmp_path, 3)
    monkeypatch.undo()
    latest = tmp_path / "latest"
    assert json.loads((latest / "meta.json").read_text())["step"] == 6
    model, _ = _model(tied)
    with safe_open(str(latest / "model.safetensors"), "pt") as f:
        assert set(f.keys()) == {n for n, _ in model.named_parameters()}  # a tied head is stored once
    resumed, again = _train(model, _model(tied)[1], tmp_path, 3)
    assert [r["loss"] for r in again.rows] == pytest.approx([r["loss"] for r in history.rows], abs=1e-6)
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)


def test_a_lora_checkpoint_holds_the_adapter_only_and_one_without_it_is_not_resumed(tmp_path, capsys):
    from peft import LoraConfig, get_peft_model

    def lora():
        model, tok = _model(False)
        torch.manual_seed(1)
        return get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])), tok

    model, tok = lora()
    _train(model, tok, tmp_path, 3)
    with safe_open(str(tmp_path / "latest" / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert keys == {n for n, p in model.named_parameters() if p.requires_grad} and all("lora_" in k for k in keys)
    # the weights file lost a trainable tensor: the run starts over rather than resume half-loaded
    from safetensors.torch import load_file, save_file

    weights = load_file(str(tmp_path / "latest" / "model.safetensors"))
    weights.pop(sorted(weights)[0])
    save_file(weights, str(tmp_path / "latest" / "model.safetensors"))
    _train(*lora(), tmp_path, 3)
    assert "lacks trainable weights of this run: starting over" in capsys.readouterr().out


def test_what_the_checks_found_before_a_kill_survives_the_resume(tmp_path, monkeypatch):
    """The target stage's between-epoch recall checks go into its report: a resumed run must list the
    checks of the epochs it skipped too (they are kept in the checkpoint, not run again)."""
    calls: list[int] = []

    def run(directory, every):
        model, tok = _model(False)
        log: list = []

        def check(m, epoch):
            calls.append(epoch)
            log.append({"epoch": epoch, "value": round(float(next(m.parameters()).detach().sum()), 6)})
            return False

        train_causal_lm(model, tok, PAIRS, _spec(directory, every), check=check, check_every=1, desc="t",
                        check_log=log)
        return log

    whole = run(None, 0)
    assert [e["epoch"] for e in whole] == [1, 2, 3]  # 3 steps an epoch; no check after the last
    save = checkpoints_module.Checkpoints.maybe_save

    def save_then_die(self, step, rows, notes=None):
        save(self, step, rows, notes)
        if step == 4:  # mid epoch 2: the checkpoint holds epoch 1's check
            raise Killed

    monkeypatch.setattr(checkpoints_module.Checkpoints, "maybe_save", save_then_die)
    with pytest.raises(Killed):
        run(tmp_path, 2)
    monkeypatch.undo()
    calls.clear()
    resumed = run(tmp_path, 2)
    assert [e["epoch"] for e in resumed] == [1, 2, 3]
    assert [e["value"] for e in resumed] == pytest.approx([e["value"] for e in whole], abs=1e-5)
    assert calls == [2, 3]  # epoch 1's check came from the checkpoint
