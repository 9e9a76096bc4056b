"""Implicit differentiation at equilibrium, knowing only the function ``f``.

* :func:`replace` gives a tensor whose *value* is the simulated average spiking
  rate and whose *gradient* flows into the equivalent rate function's output.
* :func:`implicit_reattach` handles a true fixed point ``z* = f(z*)`` (feedback):
  it re-attaches the graph with one call of ``f`` and, in the backward pass,
  solves ``g = J_f(z*)^T g + dL/dz`` with a registered solver.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .solvers import SolverInfo, get_solver

__all__ = ["replace", "implicit_reattach", "ImplicitBackward"]


class _Replace(torch.autograd.Function):
    """Forward: the simulated value. Backward: the gradient goes unchanged to the surrogate."""

    @staticmethod
    def forward(ctx, value: Tensor, surrogate: Tensor) -> Tensor:
        return value.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):
        return None, grad


def replace(value: Tensor, surrogate: Tensor) -> Tensor:
    """Return ``value`` (no gradient of its own) with the backward of ``surrogate``.

    Shapes of both must match. When no gradient is being recorded it is simply ``value``.
    """
    if not (torch.is_grad_enabled() and surrogate.requires_grad):
        return value
    return _Replace.apply(value.detach(), surrogate)


class ImplicitBackward(torch.autograd.Function):
    """Identity in the forward pass; in the backward pass returns the solution ``g`` of
    ``g = J^T g + grad``; ``backward_solve`` (see `implicit_reattach`) finds it."""

    @staticmethod
    def forward(ctx, z: Tensor, backward_solve: Callable[[Tensor], Tensor]) -> Tensor:
        ctx.backward_solve = backward_solve
        return z.view_as(z)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return ctx.backward_solve(grad), None


def implicit_reattach(
    f: Callable[[Tensor], Tensor],
    z_star: Tensor,
    solver: str = "broyden",
    max_iter: int = 30,
    tol: float = 1e-4,
    info_sink: list[SolverInfo] | None = None,
) -> Tensor:
    """Re-attach an equilibrium ``z_star`` (found without autograd) to the graph of ``f``.

    Returns ``z = f(z_star)`` whose backward pass applies ``(I - J_f)^{-T}`` to the incoming
    gradient, so parameter gradients are those of the exact fixed point. Each backward
    solve appends its :class:`SolverInfo` to ``info_sink`` when given.
    """
    z_leaf = z_star.detach().requires_grad_()
    fz = f(z_leaf)
    solve = get_solver(solver)

    def backward_solve(grad: Tensor) -> Tensor:
        def adjoint(g: Tensor) -> Tensor:
            (jtg,) = torch.autograd.grad(fz, z_leaf, g, retain_graph=True)
            return jtg + grad

        with torch.enable_grad():
            g, info = solve(adjoint, grad, max_iter=max_iter, tol=tol)
        if info_sink is not None:
            info_sink.append(info)
        return g.detach()

    return ImplicitBackward.apply(fz, backward_solve)
