"""bf16 AdamW with stochastic rounding (relearn.training.optim) and the attacker's memory accounting."""
from __future__ import annotations

import pytest
import torch

from relearn.training.optim import BF16AdamW, round_stochastic_
from relearn.robustness.relearning import _attach, _optimizer, attacker_memory

pytestmark = pytest.mark.usefixtures("one_thread")


def test_stochastic_rounding_is_unbiased_and_lands_on_a_neighbour():
    x = torch.full((200_000,), 1.0 + 2 ** -9)  # a quarter of the way from 1.0 to the next bf16 (1 + 2^-7)
    out = round_stochastic_(torch.empty_like(x, dtype=torch.bfloat16), x, torch.Generator().manual_seed(0))
    assert set(out.float().unique().tolist()) == {1.0, 1.0 + 2 ** -7}
    assert out.float().mean().item() == pytest.approx(1.0 + 2 ** -9, abs=2e-5)  # nearest rounding gives 1.0
    neg = round_stochastic_(torch.empty_like(x, dtype=torch.bfloat16), -x, torch.Generator().manual_seed(0))
    assert neg.float().mean().item() == pytest.approx(-(1.0 + 2 ** -9), abs=2e-5)
    exact = torch.tensor([0.5, -3.0, float("inf"), 0.0])
    assert torch.equal(round_stochastic_(torch.empty(4, dtype=torch.bfloat16), exact).float(), exact)


def _run(param: torch.nn.Parameter, optimizer, steps: int) -> torch.Tensor:
    for _ in range(steps):
        param.grad = torch.ones_like(param)  # a constant gradient: Adam moves each weight by ~lr a step
        optimizer.step()
    return param.detach().float()


def test_bf16_adamw_keeps_small_updates_that_plain_bf16_adamw_loses():
    start = torch.full((4096,), 0.02)  # a typical weight; bf16 spacing there is 2^-13 ~ 1.2e-4
    ref = torch.nn.Parameter(start.clone())
    moved_fp32 = start - _run(ref, torch.optim.AdamW([ref], lr=1e-5, weight_decay=0.0), 50)
    plain = torch.nn.Parameter(start.clone().bfloat16())
    moved_plain = start.bfloat16().float() - _run(plain, torch.optim.AdamW([plain], lr=1e-5, weight_decay=0.0), 50)
    sr = torch.nn.Parameter(start.clone().bfloat16())
    optimizer = BF16AdamW([sr], lr=1e-5, seed=0)
    moved_sr = start.bfloat16().float() - _run(sr, optimizer, 50)
    assert moved_fp32.mean().item() == pytest.approx(5e-4, rel=0.01)
    assert moved_plain.abs().max().item() == 0.0  # every update rounded away
    assert moved_sr.mean().item() == pytest.approx(moved_fp32.mean().item(), rel=0.05)
    state = optimizer.state[sr]
    assert state["exp_avg"].dtype == state["exp_avg_sq"].dtype == torch.bfloat16


@pytest.mark.parametrize("chunk", [1 << 22, 7], ids=["whole", "chunks-of-7"])
def test_bf16_adamw_matches_adamw_on_fp32_parameters_and_applies_weight_decay(chunk, monkeypatch):
    import relearn.training.optim

    monkeypatch.setattr(relearn.training.optim, "CHUNK", chunk)  # 64 weights in 10 chunks: the same update
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(64))
    b = torch.nn.Parameter(a.detach().clone())
    opt_a = torch.optim.AdamW([a], lr=1e-2, weight_decay=0.1)
    opt_b = BF16AdamW([b], lr=1e-2, weight_decay=0.1)
    for k in range(5):
        g = torch.randn(64, generator=torch.Generator().manual_seed(k))
        a.grad, b.grad = g.clone(), g.clone()
        opt_a.step()
        opt_b.step()
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _held_bytes(model, optimizer) -> int:
    """What the attack keeps besides activations: parameters, gradients and optimizer tensors."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    total += sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
    for state in optimizer.state.values():
        total += sum(v.numel() * v.element_size() for v in state.values() if torch.is_tensor(v) and v.dim() > 0)
    return total


@pytest.mark.parametrize("attacker,dtype,per_weight", [("full", torch.float32, 16), ("full", torch.bfloat16, 8),
                                                       ("lora", torch.bfloat16, None), ("lora", torch.float32, None)])
def test_attacker_memory_is_what_one_step_holds(attacker, dtype, per_weight):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)).to(dtype)
    estimate = attacker_memory(model, attacker, lora_r=4)
    n = sum(p.numel() for p in model.parameters())
    attached = _attach(model, attacker, 4)
    trained = [p for p in attached.parameters() if p.requires_grad]
    optimizer = _optimizer(trained, 1e-3, seed=0)
    ids = torch.randint(0, 96, (2, 10))
    attached(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    assert estimate["trained_parameters"] == sum(p.numel() for p in trained)
    assert estimate["estimate_bytes"] == _held_bytes(attached, optimizer)
    if per_weight:
        assert estimate["estimate_bytes"] == per_weight * n
        assert estimate["optimizer"] == ("bf16-adamw-stochastic-rounding" if dtype == torch.bfloat16 else "adamw")
    else:  # frozen weights in their dtype, an fp32 adapter
        assert all(p.dtype == torch.float32 for p in trained)
        assert estimate["weights_bytes"] == n * (2 if dtype == torch.bfloat16 else 4)


def test_seven_billion_weights_fit_an_80_gb_gpu_only_in_bf16():
    """The arithmetic behind relearn_precision: what a full attacker of a 7B model holds."""

    class Shape(torch.nn.Module):  # parameters on the meta device: sized, never allocated
        def __init__(self, dtype):
            super().__init__()
            self.w = torch.nn.Parameter(torch.empty(7_000_000_000, device="meta", dtype=dtype))

        def get_output_embeddings(self):
            return None

    fp32 = attacker_memory(Shape(torch.float32), "full")["estimate_bytes"] / 1e9
    bf16 = attacker_memory(Shape(torch.bfloat16), "full")["estimate_bytes"] / 1e9
    assert fp32 == pytest.approx(112) and bf16 == pytest.approx(56)
