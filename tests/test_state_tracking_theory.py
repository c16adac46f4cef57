"""The paper's parity theory checked directly: one mixer layer with weights set by hand tracks parity over
1000 steps when its transition may have eigenvalue -1, and the same weights with eigenvalues in [0, 1] cannot.

Both constructions read inputs x_t = [bit, 1, bos] (a start position with bos = 1 and bit = 0, then the bits)
through the real mixer forward with state=None, in fp32:
- the start position writes a positive value into one state entry (the only write: elsewhere the input that
  scales the write is SiLU(0) = 0 exactly);
- a one multiplies that entry by -1 (Mamba: decay 2 exp(-delta) - 1 with delta = 200, so exp underflows to
  exactly 0; DeltaNet: the reflection I - 2 k k^T along a fixed unit k, beta = 2 sigmoid(100) = 2 exactly)
  and a zero by +1 (delta = softplus(-100) ~ 4e-44, so exp(-delta) = 1 exactly; beta = 2 sigmoid(-100) = 0);
- the output's first feature is a positive multiple of that entry, so its sign is the parity so far.
All factors are exactly +-1, so 1000 steps add no rounding drift. With allow_neg_eigval=False the same
weights give a one the decay exp(-200) = 0 (Mamba) or beta = 1, a projection (DeltaNet): the entry is
wiped by the first one and every later output is the same, whatever the parity.
"""
import numpy as np
import pytest
import torch

from data.state_tracking import accuracy, get_task, sequence_accuracy
from model.config import ModelConfig
from model.deltanet import DeltaNet
from model.mamba import Mamba

LENGTH, NUM_STRINGS = 1000, 256
BIT, CONST, BOS = 0, 1, 2  # input features


def parity_inputs():
    """Features [N, 1 + LENGTH, 3] with a start position, and the task's prefix-parity labels [N, LENGTH]."""
    task = get_task("parity", supervision="prefix")
    rng = np.random.default_rng(0)
    tokens, labels = zip(*(task.sample(rng, LENGTH) for _ in range(NUM_STRINGS)))
    x = torch.zeros(NUM_STRINGS, 1 + LENGTH, 3)
    x[:, :, CONST] = 1
    x[:, 0, BOS] = 1
    x[:, 1:, BIT] = torch.tensor(tokens, dtype=torch.float32) - 1  # token ids 1, 2 are the bits 0, 1
    return x, torch.tensor(labels), task


def identity_conv(conv):
    """Make a causal short conv pass its current input through unchanged (before its SiLU)."""
    conv.weight.zero_()
    conv.weight[:, 0, -1] = 1
    if conv.bias is not None:
        conv.bias.zero_()


@torch.no_grad()
def hand_mamba(allow_neg_eigval: bool, backend: str) -> Mamba:
    cfg = ModelConfig(mixer="mamba", allow_neg_eigval=allow_neg_eigval, hidden_size=3, expand=1, state_size=1,
                      dt_rank=1, num_layers=1, kernel_backend=backend).validate()
    m = Mamba(cfg)
    for p in m.parameters():
        p.zero_()
    # channels: 0 the tracked one (its input u = SiLU(10) on a one or the start), 1 constant (feeds C), 2 start
    m.in_proj.weight[0, [BIT, BOS]] = 10.0
    m.in_proj.weight[1, CONST] = 1.0
    m.in_proj.weight[2, BOS] = 1.0
    m.in_proj.weight[3, CONST] = 1.0  # gate z of channel 0: SiLU(1) > 0
    identity_conv(m.conv1d)
    m.x_proj.weight[0, 0] = 30.0  # dt: 30 * SiLU(10) ~ 300 on a one or the start, 0 on a zero
    m.x_proj.weight[1, 2] = 1.0  # B = SiLU(bos): positive at the start, exactly 0 elsewhere
    m.x_proj.weight[2, 1] = 1.0  # C = SiLU(1)
    m.dt_proj.weight[0, 0] = 1.0
    m.dt_proj.bias[0] = -100.0  # delta = softplus(dt - 100): ~200 on a one, ~4e-44 on a zero
    m.A_log.zero_()  # A = -1
    m.out_proj.weight[0, 0] = 1.0
    return m


@torch.no_grad()
def hand_deltanet(allow_neg_eigval: bool, backend: str) -> DeltaNet:
    cfg = ModelConfig(mixer="deltanet", allow_neg_eigval=allow_neg_eigval, hidden_size=3, num_heads=1,
                      num_layers=1, kernel_backend=backend).validate()
    m = DeltaNet(cfg)
    for p in m.parameters():
        p.zero_()
    m.q_proj.weight[0, CONST] = 100.0  # q = k = SiLU(100) e_0, exactly e_0 after the in-kernel l2norm
    m.k_proj.weight[0, CONST] = 100.0
    m.v_proj.weight[0, BOS] = 10.0  # v = SiLU(10) e_0 at the start, exactly 0 elsewhere
    for conv in (m.q_conv1d, m.k_conv1d, m.v_conv1d):
        identity_conv(conv)
    m.b_proj.weight[0] = torch.tensor([200.0, -100.0, 200.0])  # sigmoid(+-100) = 1 or 0 exactly in fp32
    m.o_norm.weight.fill_(1.0)
    m.o_proj.weight[0, 0] = 1.0
    return m


def readout(mixer, x):
    """The output feature whose sign carries the parity, at the bit positions: [N, LENGTH]."""
    mixer.track_eigenvalues = True
    with torch.no_grad():
        y, _ = mixer(x)
    return y[:, 1:, 0]


def best_readout_accuracy(values: torch.Tensor, parity: torch.Tensor) -> float:
    """Accuracy of the best possible readout of `values`: the majority parity for each distinct value."""
    total = 0
    for v in values.unique():
        total += int(torch.bincount(parity[values == v], minlength=2).max())
    return total / len(values)


BUILDERS = {"mamba": hand_mamba, "deltanet": hand_deltanet}


@pytest.mark.parametrize("backend", ["auto", "naive"])
@pytest.mark.parametrize("mixer", list(BUILDERS))
def test_negative_eigenvalues_solve_parity_at_length_1000(mixer, backend):
    x, labels, task = parity_inputs()
    m = BUILDERS[mixer](True, backend)
    out = readout(m, x)
    assert float(m.eig_stats["min_eig"]) == -1.0  # an exact reflection / sign flip is in use
    predictions = torch.tensor(task.answer_ids)[(out < 0).long()]  # negative = odd
    assert accuracy(predictions, labels) == (NUM_STRINGS * LENGTH, NUM_STRINGS * LENGTH)  # every prefix
    assert sequence_accuracy(predictions, labels) == (NUM_STRINGS, NUM_STRINGS)
    assert torch.equal(out.abs(), out[:, :1].abs().expand_as(out))  # magnitude exactly kept: no drift


@pytest.mark.parametrize("backend", ["auto", "naive"])
@pytest.mark.parametrize("mixer", list(BUILDERS))
def test_eigenvalues_in_0_1_cannot_solve_parity(mixer, backend):
    x, labels, task = parity_inputs()
    m = BUILDERS[mixer](False, backend)
    out = readout(m, x)
    assert float(m.eig_stats["min_eig"]) >= 0 and float(m.eig_stats["neg_eig_frac"]) == 0
    assert (out >= 0).all()  # non-negative decays never flip the sign
    final_parity = torch.tensor([task.class_of(int(y)) for y in labels[:, -1]])
    assert 0 < final_parity.sum() < NUM_STRINGS  # both parities occur
    # Every string has a one, which wipes the state: all final outputs are identical, so no readout of them
    # beats guessing the majority parity.
    assert out[:, -1].unique().numel() == 1
    majority = max(final_parity.float().mean().item(), 1 - final_parity.float().mean().item())
    best = best_readout_accuracy(out[:, -1], final_parity)
    assert best == majority and abs(best - 0.5) < 0.06  # chance; 0.06 is ~2 sampling std for 256 strings
