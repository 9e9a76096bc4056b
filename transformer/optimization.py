"""BertAdam: the Adam variant used to train BERT (and TinyBERT / SpikingBERT students).

Differences from ``torch.optim.AdamW``: no bias correction; weight decay is added to the Adam
update (``update = m / (sqrt(v) + e) + weight_decay * p``) so that it is scaled by the scheduled
learning rate; each parameter group's gradients are clipped to ``max_grad_norm`` (global norm
over the group) before the moments are updated; the learning rate follows a schedule of the
training progress ``step / t_total`` where ``step`` counts the updates already made.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Optional

import torch
from torch.optim import Optimizer


def warmup_linear(progress: float, warmup: float) -> float:
    """Linear warm-up to 1 at ``warmup``, then linear decay to 0 at progress 1."""
    if progress < warmup:
        return progress / warmup
    return max((progress - 1.0) / (warmup - 1.0), 0.0)


def warmup_constant(progress: float, warmup: float) -> float:
    """Linear warm-up to 1 at ``warmup``, then constant 1."""
    if progress < warmup:
        return progress / warmup
    return 1.0


def warmup_cosine(progress: float, warmup: float) -> float:
    """Linear warm-up to 1 at ``warmup``, then ``0.5 * (1 + cos(pi * progress))``."""
    if progress < warmup:
        return progress / warmup
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def constant(progress: float, warmup: float) -> float:
    return 1.0


SCHEDULES: dict[str, Callable[[float, float], float]] = {
    "warmup_linear": warmup_linear,
    "warmup_constant": warmup_constant,
    "warmup_cosine": warmup_cosine,
    "none": constant,
}


def _sqrt_floor(dtype: torch.dtype, e: float) -> Optional[float]:
    """A floor for ``v`` below which ``sqrt(v) + e`` is ``e`` in float32, or None (no floor: other dtypes, tiny ``e``).

    ``sqrt(v) < e * 2**-26`` is under half a unit in the last place of ``e``, so the sum rounds to ``e`` whether
    ``v`` is raised to the floor or not: the update keeps its every bit. The floor keeps zeros and subnormals (the
    moments of embedding rows no batch has used) out of the square root, where some CPUs take 5-35x longer on them
    (an AMD EPYC, Zen 4: 27 ms against 5 ms for the zeros of a 30522 x 384 table).
    """
    floor = (e * 2.0 ** -26) ** 2
    if dtype != torch.float32 or floor < torch.finfo(torch.float32).tiny:
        return None
    return floor


class BertAdam(Optimizer):
    """Adam without bias correction, with decoupled weight decay, gradient clipping and an LR schedule.

    Args:
        params: parameters or parameter groups (groups may override any of the settings below,
            e.g. ``weight_decay=0.0`` for biases and LayerNorm weights).
        lr: peak learning rate.
        warmup: fraction of ``t_total`` spent warming up (``-1``: no warm-up).
        t_total: total number of optimisation steps of the schedule (``-1``: constant ``lr``).
        schedule: "warmup_linear", "warmup_constant", "warmup_cosine" or "none".
        b1, b2: Adam moment decay rates. e: Adam epsilon (added to ``sqrt(v)``).
        weight_decay: decoupled weight-decay coefficient.
        max_grad_norm: gradient-norm clipping threshold (``<= 0``: no clipping).
        clip_scope: "tensor" clips each parameter tensor's gradient on its own (the original
            BertAdam, used by the published code); "group" clips the group's joint norm.
        update_kernel: optional ``kernel(param, grad, exp_avg, exp_avg_sq, b1, b2, e, weight_decay, lr, floor)
            -> bool`` that makes one parameter's update (moments and parameter, in place, after clipping) with the
            same float32 arithmetic as the tensor operations below, bit for bit, and returns True, or returns False
            to leave that parameter to them (``floor``: see `_sqrt_floor`, 0 for none).

    The scheduled rate of a step is ``lr * schedule(min(step / t_total, 1), warmup)``, ``step``
    being the number of updates made before it (so a warm-up starts from 0).
    """

    def __init__(self, params: Iterable, lr: float, warmup: float = -1, t_total: int = -1,
                 schedule: Optional[str] = "warmup_linear", b1: float = 0.9, b2: float = 0.999, e: float = 1e-6,
                 weight_decay: float = 0.01, max_grad_norm: float = 1.0, clip_scope: str = "tensor",
                 update_kernel: Optional[Callable[..., bool]] = None):
        schedule = schedule or "none"
        if lr < 0.0:
            raise ValueError(f"invalid learning rate {lr}: must be >= 0")
        if schedule not in SCHEDULES:
            raise ValueError(f"invalid schedule {schedule!r}: use one of {sorted(SCHEDULES)}")
        if not (0.0 <= warmup < 1.0 or warmup == -1):
            raise ValueError(f"invalid warmup {warmup}: must be in [0, 1) or -1")
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"invalid b1/b2 {b1}/{b2}: must be in [0, 1)")
        if clip_scope not in ("tensor", "group"):
            raise ValueError(f"invalid clip_scope {clip_scope!r}: use 'tensor' or 'group'")
        if e < 0.0:
            raise ValueError(f"invalid epsilon {e}: must be >= 0")
        defaults = dict(lr=lr, schedule=schedule, warmup=warmup, t_total=t_total, b1=b1, b2=b2, e=e,
                        weight_decay=weight_decay, max_grad_norm=max_grad_norm, clip_scope=clip_scope)
        super().__init__(params, defaults)
        self.update_kernel = update_kernel

    @staticmethod
    def scheduled_lr(group: dict, step: int) -> float:
        """Learning rate of ``group`` for the update that follows ``step`` earlier updates."""
        if group["t_total"] is None or group["t_total"] <= 0:
            return group["lr"]
        progress = min(step / group["t_total"], 1.0)
        return group["lr"] * SCHEDULES[group["schedule"]](progress, max(group["warmup"], 0.0))

    def get_lr(self) -> list[float]:
        """The scheduled learning rate of each parameter group for the next step."""
        lrs = []
        for group in self.param_groups:
            steps = [self.state[p]["step"] for p in group["params"] if "step" in self.state[p]]
            lrs.append(self.scheduled_lr(group, max(steps, default=0)))
        return lrs

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None) -> Optional[float]:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if any(p.grad.is_sparse for p in params):
                raise RuntimeError("BertAdam does not support sparse gradients")
            grads = [p.grad for p in params]
            if group["max_grad_norm"] > 0:
                if group.get("clip_scope", "tensor") == "group":
                    torch.nn.utils.clip_grad_norm_(params, group["max_grad_norm"])
                else:                                   # each tensor on its own, without a host sync
                    norms = torch._foreach_norm(grads)
                    torch._foreach_add_(norms, 1e-6)
                    scales = torch._foreach_reciprocal(norms)
                    torch._foreach_mul_(scales, group["max_grad_norm"])
                    torch._foreach_clamp_max_(scales, 1.0)
                    torch._foreach_mul_(grads, scales)
            floor = _sqrt_floor(torch.float32, group["e"]) or 0.0          # the kernel's (float32 only)
            rest = []                                   # (parameter, state, rate) the kernel left to the operations
            for p in params:
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["next_m"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["next_v"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                lr = self.scheduled_lr(group, state["step"])
                state["step"] += 1
                if self.update_kernel is None or not self.update_kernel(
                        p, p.grad, state["next_m"], state["next_v"], group["b1"], group["b2"], group["e"],
                        group["weight_decay"], lr, floor):
                    rest.append((p, state, lr))
            if rest:
                self._tensor_updates(rest, group)
        return loss

    def _tensor_updates(self, items: list, group: dict) -> None:
        """The moments of every ``(parameter, state, rate)`` in ``items`` as multi-tensor operations, then each
        parameter's update."""
        grads = [p.grad for p, _, _ in items]
        exp_avg = [s["next_m"] for _, s, _ in items]
        exp_avg_sq = [s["next_v"] for _, s, _ in items]
        torch._foreach_mul_(exp_avg, group["b1"])
        torch._foreach_add_(exp_avg, grads, alpha=1.0 - group["b1"])
        torch._foreach_mul_(exp_avg_sq, group["b2"])
        torch._foreach_addcmul_(exp_avg_sq, grads, grads, value=1.0 - group["b2"])
        for (p, _, lr), m, v in zip(items, exp_avg, exp_avg_sq):
            self._update(p, m, v, group, lr)

    def _update(self, p: torch.Tensor, m: torch.Tensor, v: torch.Tensor, group: dict, lr: float) -> None:
        """``p -= lr * (m / (sqrt(v) + e) + weight_decay * p)``, each operation as a whole-tensor pass in a reused
        buffer (a fresh temporary as large as the word embeddings would be new pages, page-faulted, every step);
        ``v`` is first raised to `_sqrt_floor`, which changes no bit of the update."""
        update = self._scratch(p)
        floor = _sqrt_floor(p.dtype, group["e"])
        if floor is None:
            torch.sqrt(v, out=update)
        else:
            torch.clamp(v, min=floor, out=update)
            update.sqrt_()
        update.add_(group["e"])
        torch.div(m, update, out=update)
        if group["weight_decay"] > 0.0:
            update.add_(p, alpha=group["weight_decay"])
        update.mul_(lr)
        p.sub_(update)

    def _scratch(self, p: torch.Tensor) -> torch.Tensor:
        """A buffer shaped like ``p``: a view of one per device and dtype, kept between steps (not optimizer state)."""
        buffers = self.__dict__.setdefault("_buffers", {})
        key = (p.device, p.dtype)
        buf = buffers.get(key)
        if buf is None or buf.numel() < p.numel():
            buf = buffers[key] = torch.empty(p.numel(), device=p.device, dtype=p.dtype)
        return buf[:p.numel()].view_as(p)
