"""Event-driven products for the simulation: work that follows the spikes.

Every dense layer of the simulation takes binary spikes as its input, so ``spikes @ W^T + b`` is
the sum of the weight rows of the inputs that fired. :func:`spike_linear` computes it that way on
CPU (the compiled kernels of :mod:`modules.event_ops`): the active inputs of every row are
extracted once, each tile of output columns is accumulated in vector registers over a packed copy
of ``W^T`` kept in cache, and the bias is added once at the end. Its cost scales with the number
of spikes; the dense GEMM's does not. Each call measures the density of its chunk of spikes and
runs the dense GEMM (:func:`core.linear.linear`) when more than :func:`max_density` of the
inputs fired, the measured crossover of the two (``bench/README.md``), so a densely firing layer is
never slower than on the dense path.

The sums run over the active inputs in input order, the bias last; where the dense GEMM adds up
the same way (oneDNN on these shapes does for ``K <= 384`` inputs) the currents are bit-identical,
elsewhere they differ by float32 rounding only.

Engines (environment variable ``SPIKINGBERT_ENGINE``):

* ``auto`` (default): the event-driven engine where it can run — CPU float32 tensors without
  autograd, a CPU with AVX2 or AVX-512, the kernels built by ``make install`` — else dense;
* ``dense``: today's dense engine everywhere (GEMMs and the eager neuron update).

CUDA tensors always take the dense path: tensor-core GEMMs are the fast way there. One log line
says which engine runs. :func:`engine_override` switches engines within a process (benchmarks).

In training the same library makes BertAdam's update of a CPU float32 parameter one pass
(:func:`fused_bert_adam_update`, the optimizer's ``update_kernel``), on the event engine only and with the
bits of the optimizer's own tensor operations.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import weakref
from typing import Iterator, Optional, Sequence, Union

import torch
from torch import Tensor

from spikingbert.core.linear import linear

from . import event_ops

__all__ = ["spike_linear", "spike_attention", "fused_if_scan", "fused_bert_adam_update", "engine", "engine_override",
           "max_density", "ENGINE_ENV"]

logger = logging.getLogger(__name__)

ENGINE_ENV = "SPIKINGBERT_ENGINE"
MAX_DENSITY_ENV = "SPIKINGBERT_EVENT_MAX_DENSITY"

#: Input density up to which the event-driven product runs, by instruction set (2 = AVX-512, 1 = AVX2)
#: and fan-in (a packed weight tile of up to 768 inputs stays in the core's L2 cache): the measured
#: crossovers with the dense GEMM (``python -m bench --cases crossover``; AVX-512: 0.51-0.56 for fan-in
#: 384, 0.36 for 1536; AVX2: 0.36-0.47 and 0.29) with a margin, so a layer is never slower than dense.
_CROSSOVER = {2: ((768, 0.45), (None, 0.32)), 1: ((768, 0.32), (None, 0.22))}

Weights = Union[Tensor, Sequence[Tensor]]


#: Engine forced by :func:`engine_override` (benchmarks and tests compare both in one process).
_OVERRIDE: Optional[str] = None


def engine() -> tuple[str, int]:
    """``("event", isa)`` or ``("dense", 0)`` for CPU simulations (each choice logged once)."""
    return _resolve(_OVERRIDE or _env_choice())


@contextlib.contextmanager
def engine_override(name: str) -> Iterator[None]:
    """Run the block on engine ``name`` (``"auto"`` or ``"dense"``) whatever ``SPIKINGBERT_ENGINE`` says."""
    global _OVERRIDE
    if name not in ("auto", "dense"):
        raise ValueError(f"engine must be 'auto' or 'dense' (got {name!r})")
    previous, _OVERRIDE = _OVERRIDE, name
    try:
        yield
    finally:
        _OVERRIDE = previous


@functools.lru_cache(maxsize=None)
def _env_choice() -> str:
    choice = os.environ.get(ENGINE_ENV, "auto").strip().lower() or "auto"
    if choice not in ("auto", "dense"):
        logger.warning("%s=%s is not 'auto' or 'dense': using 'auto'", ENGINE_ENV, choice)
        choice = "auto"
    return choice


@functools.lru_cache(maxsize=None)
def _resolve(choice: str) -> tuple[str, int]:
    why = "requested: SPIKINGBERT_ENGINE=dense or engine_override" if choice == "dense" else event_ops.load()
    isa = 0
    if why is None:
        isa = int(torch.ops.spikingbert.event_isa())
        if isa == 0:
            why = "this CPU has neither AVX2 nor AVX-512"
    if why is not None:
        logger.info("simulation engine on CPU: dense (%s)", why)
        return "dense", 0
    logger.info("simulation engine on CPU: event-driven (%s spike-input products where a chunk's input "
                "density is below %.2f / %.2f for fan-ins up to 768 / above; fused neuron update)",
                "AVX-512" if isa == 2 else "AVX2", max_density(384, isa), max_density(1536, isa))
    return "event", isa


@functools.lru_cache(maxsize=None)
def _density_override() -> Optional[float]:
    text = os.environ.get(MAX_DENSITY_ENV, "").strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        logger.warning("%s=%s is not a number: using the measured crossovers", MAX_DENSITY_ENV, text)
        return None


def max_density(in_features: int, isa: int) -> float:
    """Input density above which :func:`spike_linear` runs the dense GEMM instead
    (``SPIKINGBERT_EVENT_MAX_DENSITY`` overrides it: 0 never, 1 always runs the event-driven product)."""
    override = _density_override()
    if override is not None:
        return override
    for fan_in, density in _CROSSOVER[isa]:
        if fan_in is None or in_features <= fan_in:
            return density
    raise AssertionError("unreachable")


def _event_isa(spikes: Tensor, params: Sequence[Optional[Tensor]]) -> int:
    """The instruction set to run a product of ``spikes`` on, or 0 for the dense path."""
    if (spikes.device.type != "cpu" or spikes.dtype != torch.float32 or torch.is_autocast_enabled("cpu")
            or torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (spikes, *params))):
        return 0
    return engine()[1]


class _Packed:
    """A weight (or several, stacked along the outputs) packed for the kernel."""

    __slots__ = ("key", "packed")

    def __init__(self, key: tuple, weight: Tensor):
        self.key = key
        self.packed = torch.ops.spikingbert.pack_weight(weight.detach())


#: Packed weights by ``id`` of the first weight tensor (dropped with it; an entry holds no reference
#: to it), rebuilt when any part changed: another tensor, or an in-place update such as an optimiser
#: step (``_version``).
_PACKED: dict[int, _Packed] = {}


def _version(t: Tensor) -> int:
    try:
        return t._version
    except RuntimeError:                        # an inference tensor has no version counter
        return -1


def _packed(weights: Sequence[Tensor]) -> Tensor:
    key = tuple((id(t), _version(t), t.data_ptr()) for t in weights)
    entry = _PACKED.get(id(weights[0]))
    if entry is None or entry.key != key:
        if entry is None:
            weakref.finalize(weights[0], _PACKED.pop, id(weights[0]), None)
        with torch.no_grad():
            entry = _Packed(key, _stack(weights))
        _PACKED[id(weights[0])] = entry
    return entry.packed


def spike_linear(spikes: Tensor, weight: Weights, bias: Union[None, Tensor, Sequence[Tensor]] = None,
                 steps: int = 1) -> Tensor:
    """``spikes @ W^T + b`` for binary (0/1) ``spikes`` ``(..., K)`` -> ``(..., N)``.

    ``weight`` is ``(N, K)``, or a sequence of weights ``(N_i, K)`` stacked along the outputs (as
    one GEMM would take their concatenation), with ``bias`` ``(N,)`` or the matching sequence.
    ``steps``: the rows of ``spikes`` (every dimension but the last, flattened) are that many steps of the
    simulation over the same positions, step-major; the kernel may then group a position's steps (same result).
    Runs on the active inputs only where the event engine applies and the chunk is sparse enough,
    else the dense :func:`core.linear.linear`.
    """
    weights = [weight] if isinstance(weight, Tensor) else list(weight)
    biases = [bias] if bias is None or isinstance(bias, Tensor) else list(bias)
    b = _stack(biases)
    isa = _event_isa(spikes, [*weights, *biases])
    if not isa:
        return linear(spikes, _stack(weights), b)
    flat = spikes.reshape(-1, spikes.shape[-1])                                  # (M, K)
    n_out = sum(w.shape[0] for w in weights)
    out = torch.ops.spikingbert.spike_linear(flat, _packed(weights), b, n_out, max_density(flat.shape[1], isa), isa,
                                             steps)
    if out.numel() == 0 and flat.numel() > 0:                                    # too dense: the GEMM
        return linear(spikes, _stack(weights), b)
    return out.view(*spikes.shape[:-1], n_out)


def _stack(parts: Sequence[Optional[Tensor]]) -> Optional[Tensor]:
    """One tensor, or the concatenation of several along the first (output) dimension."""
    return parts[0] if len(parts) == 1 else torch.cat(list(parts))


def spike_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, heads: int) -> Optional[Tensor]:
    """The attention context ``softmax(q k^T / sqrt(dh) + mask) v`` per head for 0/1 keys and values, from
    additions only (``torch.ops.spikingbert.spike_attention``), or ``None`` where it does not apply (then use the
    dense path): ``q``, ``k``, ``v`` ``(N, S, H)``, ``mask`` additive ``(B, 1, 1, S)`` with ``N`` a multiple of
    ``B``; CPU float32 without autograd on the event engine with AVX-512, heads of at most 64 dimensions."""
    if (_event_isa(q, [k, v]) != 2 or k.dtype != torch.float32 or v.dtype != torch.float32
            or mask.dtype != torch.float32 or mask.device.type != "cpu" or q.stride(-1) != 1
            or q.shape[-1] > 64 * heads):
        return None
    b, s = mask.shape[0], mask.shape[-1]
    return torch.ops.spikingbert.spike_attention(q, k, v, mask.reshape(b, s).contiguous(), heads)


def fused_if_scan(currents: Tensor, u: Tensor, vth: float, leak: float) -> Optional[Tensor]:
    """The compiled integrate-and-fire scan for CPU float32 ``currents`` ``(T, *N)`` and membrane
    ``u`` ``(*N)`` (updated in place), or ``None`` where it does not apply (then use the eager loop)."""
    if (currents.device.type != "cpu" or currents.dtype != torch.float32 or u.dtype != torch.float32
            or not u.is_contiguous() or currents.dim() < 2 or engine()[0] != "event"):
        return None
    width = currents.shape[-1]
    try:
        grid = currents.view(currents.shape[0], -1, width)                # (T, R, C) without a copy
    except RuntimeError:
        grid = currents.reshape(currents.shape[0], -1, width)
    if grid.stride(-1) != 1:
        grid = grid.contiguous()
    spikes = torch.ops.spikingbert.if_scan(grid, u, float(vth), float(leak))
    return spikes.view(currents.shape)


def fused_bert_adam_update(param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, b1: float, b2: float,
                           e: float, weight_decay: float, lr: float, floor: float) -> bool:
    """BertAdam's update of one parameter (its moments ``exp_avg``/``exp_avg_sq`` and ``param``, in place) by the
    compiled kernel, one pass where the optimizer's tensor operations take thirteen, bit-identical to them; the
    optimizer's ``update_kernel``. False where it does not apply (then the optimizer runs its own operations):
    tensors other than contiguous CPU float32, or the dense engine."""
    tensors = (param, grad, exp_avg, exp_avg_sq)
    if any(t.device.type != "cpu" or t.dtype != torch.float32 or not t.is_contiguous() for t in tensors):
        return False
    name, isa = engine()
    if name != "event" or not _adam_kernel_agrees(isa):
        return False
    torch.ops.spikingbert.bert_adam_update(param, grad, exp_avg, exp_avg_sq, b1, b2, e, weight_decay, lr, floor, isa)
    return True


@functools.lru_cache(maxsize=None)
def _adam_kernel_agrees(isa: int) -> bool:
    """Whether the compiled update gives this torch build's bits (it repeats how torch's kernels round, which
    another build may do otherwise): two steps on 16,437 values both ways, once per process."""
    from spikingbert.transformer.optimization import BertAdam

    gen = torch.Generator().manual_seed(0)
    start = torch.randn(16437, generator=gen)
    grads = [torch.randn(16437, generator=gen) * torch.logspace(-12, 0, 16437) for _ in range(2)]
    def kernel(*args) -> bool:
        torch.ops.spikingbert.bert_adam_update(*args, isa)
        return True

    results = []
    for update_kernel in (None, kernel):
        p = start.clone().requires_grad_()
        opt = BertAdam([p], lr=0.1, schedule="none", update_kernel=update_kernel)
        for g in grads:
            p.grad = g.clone()
            opt.step()
        results.append(p.detach())
    agrees = torch.equal(results[0].view(torch.int32), results[1].view(torch.int32))
    if not agrees:
        logger.warning("the compiled BertAdam update does not give this torch build's bits; the optimizer runs its "
                       "tensor operations")
    return agrees
