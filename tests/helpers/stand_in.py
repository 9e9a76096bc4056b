"""A stand-in for the student in `spikingbert.training.trainer.Trainer` tests: a small regression MLP and its data."""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset


class StandInObjective(nn.Module):
    """Stand-in objective: an MLP with dropout regressing y from x; two loss parts."""

    def __init__(self, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Dropout(dropout), nn.Tanh(), nn.Linear(8, 1))

    def forward(self, batch, teacher_out):
        x, y = batch
        pred = self.net(x).squeeze(-1)
        mse = ((pred - y) ** 2).mean()
        l1 = (pred - y).abs().mean()
        return {"loss": mse + 0.1 * l1, "mse": mse, "l1": l1}


def regression_data(n: int, poison: int = -1) -> TensorDataset:
    gen = torch.Generator().manual_seed(123)
    x = torch.randn(n, 4, generator=gen)
    y = x.sum(1) + 0.1 * torch.randn(n, generator=gen)
    if poison >= 0:
        x[poison] = float("nan")
    return TensorDataset(x, y)
