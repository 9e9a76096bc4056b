"""KD losses (spikingbert/training/losses.py) against independent numpy computations of docs/DESIGN.md, "Knowledge
distillation"."""
import numpy as np
import pytest
import torch

from spikingbert.core.errors import UsageError
from spikingbert.run.model_dirs import layer_stride
from spikingbert.training.losses import att_loss, rep_loss, soft_cross_entropy


def _mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())


@pytest.mark.parametrize("student_layers,teacher_layers", [(2, 4), (4, 4), (2, 6), (1, 3)])
def test_rep_loss_maps_student_layer_j_to_teacher_layer_jk(student_layers, teacher_layers):
    gen = torch.Generator().manual_seed(0)
    student = [torch.randn(3, 5, 8, generator=gen) for _ in range(student_layers + 1)]
    teacher = [torch.randn(3, 5, 8, generator=gen) for _ in range(teacher_layers + 1)]
    k = teacher_layers // student_layers
    expected = sum(_mse(student[j].numpy(), teacher[j * k].numpy()) for j in range(student_layers + 1))
    got = rep_loss(student, teacher, layer_stride(teacher_layers, student_layers))
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # Zero exactly when the student reproduces the mapped teacher layers.
    assert rep_loss([teacher[j * k] for j in range(student_layers + 1)], teacher, k).item() == 0.0


def test_att_loss_uses_last_teacher_layer_of_each_block_and_zeroes_masked_scores():
    gen = torch.Generator().manual_seed(1)
    b, nh, s = 2, 2, 6
    teacher = [torch.randn(b, nh, s, s, generator=gen) for _ in range(4)]
    student = [torch.randn(b, nh, s, s, generator=gen) for _ in range(2)]
    # Padding: the last two key positions are masked (additive -10000) on both sides.
    for t in teacher + student:
        t[..., -2:] = -10000.0
    student[0][0, 0, 0, 0] = -99.0          # above the -100 threshold: a real score, not masked
    k = 2
    expected = 0.0
    for j in range(2):
        sa, ta = student[j].numpy().copy(), teacher[j * k + k - 1].numpy().copy()
        sa[sa <= -100] = 0.0
        ta[ta <= -100] = 0.0
        expected += _mse(sa, ta)
    assert att_loss(student, teacher, k).item() == pytest.approx(expected, rel=1e-6)

    # Masked entries do not contribute, whatever their (very negative) value.
    moved = [t.clone() for t in student]
    for t in moved:
        t[..., -2:] = -3000.0
    assert att_loss(moved, teacher, k).item() == pytest.approx(expected, rel=1e-6)
    # The student matching teacher layers 1 and 3 (j*k+k-1) gives zero.
    assert att_loss([teacher[1], teacher[3]], teacher, k).item() == 0.0
    assert att_loss([teacher[0], teacher[2]], teacher, k).item() > 0.0


def test_soft_cross_entropy_is_mean_over_batch_and_classes():
    gen = torch.Generator().manual_seed(2)
    zs, zt = torch.randn(4, 3, generator=gen), torch.randn(4, 3, generator=gen)
    for tau in (1.0, 2.0):
        t = zt.double().numpy() / tau
        s = zs.double().numpy() / tau
        p = np.exp(t - t.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        log_q = s - s.max(1, keepdims=True) - np.log(np.exp(s - s.max(1, keepdims=True)).sum(1, keepdims=True))
        expected = float((-p * log_q).mean())     # (B*K) entries, i.e. the usual CE divided by K
        assert soft_cross_entropy(zs, zt, tau).item() == pytest.approx(expected, rel=1e-6)
    # Its gradient pulls the student's distribution toward the teacher's.
    student = zs.clone().requires_grad_(True)
    soft_cross_entropy(student, zt).backward()
    moved = (student - 10.0 * student.grad).detach()
    assert soft_cross_entropy(moved, zt).item() < soft_cross_entropy(zs, zt).item()


def test_losses_are_float32_under_reduced_precision_inputs():
    reps = [torch.randn(2, 3, 4).bfloat16() for _ in range(3)]
    assert rep_loss(reps, reps, 1).dtype == torch.float32
    assert soft_cross_entropy(torch.randn(2, 3).half(), torch.randn(2, 3).half()).dtype == torch.float32


@pytest.mark.parametrize("teacher_layers,student_layers", [(4, 3), (6, 4), (2, 4), (4, 0)])
def test_layer_stride_rejects_non_integer_maps(teacher_layers, student_layers):
    with pytest.raises(UsageError) as err:
        layer_stride(teacher_layers, student_layers)
    assert err.value.exit_code == 2
    message = str(err.value)
    assert f"teacher has {teacher_layers} layers" in message and f"student {student_layers}" in message
    assert "\n" not in message


def test_layer_stride_accepts_multiples():
    assert layer_stride(12, 4) == 3
    assert layer_stride(4, 2) == 2
    assert layer_stride(4, 4) == 1
