"""The limit benchmark's counts against hand counts, and the peak-rate kernel's operation count."""
import pytest
import torch

from bench.limit import attention_row, product_row
from spikingbert.modules import event_ops

WHY_NOT_BUILT = event_ops.load()
pytestmark = pytest.mark.skipif(WHY_NOT_BUILT is not None, reason=f"event engine not available: {WHY_NOT_BUILT}")


def test_vector_peak_counts_twelve_chains_of_the_widest_vector():
    lanes = 16 if int(torch.ops.spikingbert.event_isa()) == 2 else 8
    assert torch.ops.spikingbert.vector_peak(0, 1000) == 1000 * 12 * lanes
    assert torch.ops.spikingbert.vector_peak(1, 7) == 7 * 12 * lanes


def test_product_row_counts_active_inputs_times_outputs():
    chunk = torch.zeros(2, 1, 3, 8)                                  # (Tc, B, S, K): 6 rows of 8 inputs
    chunk[0, 0, 0, [1, 5]] = 1.0
    chunk[1, 0, 2, 7] = 1.0
    weights, biases = [torch.randn(4, 8), torch.randn(6, 8)], [torch.zeros(4), torch.zeros(6)]
    row = product_row("p", [chunk], weights, biases, {"add_per_s": 1.0, "flop_per_s": 1.0}, repeats=1)
    assert (row["K"], row["N"], row["rows"]) == (8, 10, 6)
    assert row["synaptic_adds"] == 3 * 10 and row["density"] == round(3 / 48, 4)


@pytest.mark.skipif(WHY_NOT_BUILT is None and int(torch.ops.spikingbert.event_isa()) < 2,
                    reason="the attention kernel needs AVX-512")
def test_attention_row_counts_key_and_value_spikes_times_positions():
    from spikingbert.models.spiking_bert import SpikingBertForSequenceClassification
    from tests.helpers.students import tiny_config

    model = SpikingBertForSequenceClassification(tiny_config(layers=1)).eval()
    h = model.config.hidden_size
    k, v = torch.zeros(2, 1, 5, h), torch.zeros(2, 1, 5, h)
    k[0, 0, 1, :3] = 1.0
    v[1, 0, 4, 0] = 1.0
    chunks = {"E": [torch.zeros(2, 1, 5, h)], "0.K": [k], "0.V": [v]}
    row = attention_row(model, chunks, torch.ones(1, 5, dtype=torch.long), {"add_per_s": 1.0}, repeats=1)
    assert row["synaptic_adds"] == (3 + 1) * 5
