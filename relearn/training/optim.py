"""AdamW that keeps everything in bf16: weights, gradients and both moments, 8 bytes a parameter.

Mixed precision keeps fp32 master weights and fp32 moments (16 bytes a parameter with the fp32
gradient): 112 GB for a 7B model, more than one 80 GB GPU. Storing all four in bf16 halves that, but
plain bf16 AdamW loses small updates: bf16 keeps 8 significant bits, so near 0.02 (a typical weight)
its spacing is about 1e-4 and an update of lr 1e-5 rounds back to the old value every step. Here each
tensor's update is computed in fp32 and written back with *stochastic rounding*: rounded up or down
at random, with the probability that makes the stored value right on average, so many small updates
add up as they would in fp32 (Gupta et al. 2015; Zamirai et al. 2020, "Revisiting BFloat16
Training"). The update runs over each tensor in chunks of CHUNK elements, so the fp32 temporaries
are a few of 16 MiB at any time, not a few copies of the largest tensor (a 7B model's embedding:
half a GiB each).
"""
from __future__ import annotations

import torch

CHUNK = 1 << 22  # elements updated at a time: fp32 temporaries of 16 MiB


def round_stochastic_(dst: torch.Tensor, src: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """dst (bf16) <- src (fp32) rounded stochastically: a bf16 is the top 16 bits of an fp32, so add
    uniform noise below those bits and cut them off. On the magnitude, so unbiased for either sign."""
    bits = src.to(torch.float32).contiguous().view(torch.int32)
    noise = torch.randint(0, 1 << 16, bits.shape, dtype=torch.int32, device=bits.device, generator=generator)
    rounded = (bits + noise) & -65536  # 0xFFFF0000: the bits a bf16 keeps
    finite = torch.isfinite(src)
    out = torch.where(finite, rounded.view(torch.float32), src.to(torch.float32))  # inf/nan as they are
    return dst.copy_(out)  # exact: the low 16 bits are zero


class BF16AdamW(torch.optim.Optimizer):
    """AdamW (decoupled weight decay, bias-corrected moments) for bf16 parameters, with the moments in
    bf16 too and every write stochastically rounded. Parameters of another dtype are updated in
    that dtype with ordinary rounding (fp32 ones lose nothing)."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, seed: int = 0):
        if lr <= 0 or eps <= 0 or weight_decay < 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"BF16AdamW: bad hyper-parameters lr={lr} betas={betas} eps={eps} "
                             f"weight_decay={weight_decay}")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})
        self.seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}

    def _generator(self, device: torch.device) -> torch.Generator:
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[device]

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                t = state["step"]
                tensors = (p, p.grad, state["exp_avg"], state["exp_avg_sq"])
                if all(x.is_contiguous() for x in tensors):
                    flat = [x.view(-1) for x in tensors]
                    for start in range(0, p.numel(), CHUNK):
                        self._update(*(x[start:start + CHUNK] for x in flat), t, lr, b1, b2, eps, wd)
                else:
                    self._update(*tensors, t, lr, b1, b2, eps, wd)
        return loss

    def _update(self, w_out: torch.Tensor, grad: torch.Tensor, m_out: torch.Tensor, v_out: torch.Tensor, t: int,
                lr: float, b1: float, b2: float, eps: float, wd: float) -> None:
        """One AdamW step of (a chunk of) a parameter, computed in fp32 and stored back."""
        g = grad.to(torch.float32)
        m = m_out.to(torch.float32).mul_(b1).add_(g, alpha=1 - b1)
        v = v_out.to(torch.float32).mul_(b2).addcmul_(g, g, value=1 - b2)
        del g
        denom = (v / (1 - b2 ** t)).sqrt_().add_(eps)
        w = w_out.to(torch.float32)
        if wd:
            w.mul_(1 - lr * wd)
        w.addcdiv_(m, denom, value=-lr / (1 - b1 ** t))
        del denom
        self._store(w_out, w)
        self._store(m_out, m)
        self._store(v_out, v)

    def _store(self, dst: torch.Tensor, src: torch.Tensor) -> None:
        if dst.dtype == torch.bfloat16:
            round_stochastic_(dst, src, self._generator(dst.device))
        else:
            dst.copy_(src)
