"""Fixed-point solvers: ``solve(f, z0, max_iter, tol) -> (z, info)``.

Each solver looks for ``z = f(z)`` and reports how far it got. They are plain
functions over tensors of any shape; they run under whatever grad mode the
caller chose (the implicit backward solves its adjoint system with autograd enabled, for the
vector-Jacobian products of ``f``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

__all__ = ["SolverInfo", "fixed_point_iter", "broyden", "SOLVERS", "get_solver"]


@dataclass
class SolverInfo:
    """What a solve achieved: iterations used and the final relative residual ``|f(z) - z| / |f(z)|``."""

    nstep: int
    rel_residual: float
    abs_residual: float


def _residual(fz: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
    diff = (fz - z).norm()
    return diff, diff / (fz.norm() + 1e-9)


def fixed_point_iter(
    f: Callable[[Tensor], Tensor], z0: Tensor, max_iter: int = 50, tol: float = 1e-5, damping: float = 1.0
) -> tuple[Tensor, SolverInfo]:
    """Damped fixed-point iteration ``z <- (1 - damping) z + damping f(z)``."""
    z = z0
    abs_res = rel_res = torch.tensor(float("inf"))
    nstep = 0
    for nstep in range(1, max_iter + 1):  # noqa: B007 (the steps run, read after the loop)
        fz = f(z)
        abs_res, rel_res = _residual(fz, z)
        z = fz if damping == 1.0 else (1.0 - damping) * z + damping * fz
        if rel_res.item() < tol:
            break
    return z, SolverInfo(nstep, float(rel_res), float(abs_res))


def broyden(
    f: Callable[[Tensor], Tensor], z0: Tensor, max_iter: int = 50, tol: float = 1e-5
) -> tuple[Tensor, SolverInfo]:
    """Broyden's ("good") method on ``g(z) = f(z) - z`` with a low-rank inverse-Jacobian estimate.

    The inverse Jacobian starts at ``-I`` and takes one rank-one update per step, stored as
    ``U`` ``(n, k)`` and ``V`` ``(k, n)`` so that ``J^-1 ~ -I + U V``.
    """
    shape = z0.shape
    z = z0.reshape(-1).clone()

    def g(v: Tensor) -> Tensor:
        return f(v.view(shape)).reshape(-1) - v

    gz = g(z)
    us: list[Tensor] = []
    vts: list[Tensor] = []

    def inv_jac_mv(x: Tensor) -> Tensor:           # (-I + U V) x
        out = -x
        for u, vt in zip(us, vts):
            out = out + u * (vt @ x)
        return out

    def inv_jac_vm(x: Tensor) -> Tensor:           # x^T (-I + U V)
        out = -x
        for u, vt in zip(us, vts):
            out = out + (x @ u) * vt
        return out

    best_z, best_res = z, gz.norm()
    nstep = 0
    for nstep in range(1, max_iter + 1):  # noqa: B007 (the steps run, read after the loop)
        dz = -inv_jac_mv(gz)
        z_new = z + dz
        gz_new = g(z_new)
        dg = gz_new - gz
        z, gz = z_new, gz_new
        res = gz.norm()
        if res < best_res:
            best_z, best_res = z, res
        if (res / (z.norm() + 1e-9)).item() < tol:
            break
        vt = inv_jac_vm(dz)
        denom = vt @ dg
        if denom.abs() < 1e-30:
            break
        us.append((dz - inv_jac_mv(dg)) / denom)
        vts.append(vt)
    fz = best_z + g(best_z)
    abs_res, rel_res = _residual(fz, best_z)
    return best_z.view(shape), SolverInfo(nstep, float(rel_res), float(abs_res))


#: Solver registry used by the implicit backward (``config.solver``).
SOLVERS: dict[str, Callable[..., tuple[Tensor, SolverInfo]]] = {
    "broyden": broyden,
    "fixed_point": fixed_point_iter,
}


def get_solver(name: str):
    """Look up a solver by name; unknown names raise ``ValueError`` listing the choices."""
    try:
        return SOLVERS[name]
    except KeyError:
        raise ValueError(f"unknown solver {name!r}; choose one of {sorted(SOLVERS)}") from None
