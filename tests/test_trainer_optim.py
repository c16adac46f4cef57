"""Learning-rate schedules and which parameters get weight decay."""
import math

import pytest
import torch

from trainer.config import OptimConfig
from trainer.optim import build_optimizer, build_scheduler, lr_factor, param_groups


def lrs(schedule, warmup=10, max_steps=100, **kw):
    model = torch.nn.Linear(2, 2)
    cfg = OptimConfig(schedule=schedule, **kw)
    opt = build_optimizer(model, cfg, lr=1.0)
    sched = build_scheduler(opt, cfg, warmup, max_steps)
    out = []
    for _ in range(max_steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_warmup_then_cosine_to_floor():
    values = lrs("cosine", min_lr_ratio=0.1)
    assert values[:3] == pytest.approx([0.1, 0.2, 0.3])
    assert values[9] == pytest.approx(1.0)
    assert values[10] == pytest.approx(1.0)
    assert values[55] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert all(a >= b for a, b in zip(values[10:], values[11:]))
    assert lr_factor(100, OptimConfig(min_lr_ratio=0.1), 10, 100) == pytest.approx(0.1)


def test_wsd_is_flat_then_decays_linearly():
    values = lrs("wsd", min_lr_ratio=0.0, decay_fraction=0.2)
    assert values[10:80] == pytest.approx([1.0] * 70)
    assert values[80] == pytest.approx(1 - 1 / 20) and values[99] == pytest.approx(0.0)


def test_constant():
    assert lrs("constant")[10:] == pytest.approx([1.0] * 90)


def test_no_decay_on_norms_biases_embeddings_and_flagged():
    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(5, 4)
            self.lin = torch.nn.Linear(4, 4)
            self.norm_weight = torch.nn.Parameter(torch.ones(4))
            self.A_log = torch.nn.Parameter(torch.zeros(4, 3))
            self.A_log._no_weight_decay = True
            self.head = torch.nn.Linear(4, 5, bias=False)
            self.head.weight = self.emb.weight  # tied: counted once, no decay

    model = Tiny()
    decay, no_decay = param_groups(model, 0.1)
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 4])]
    assert len(no_decay["params"]) == 4 and no_decay["weight_decay"] == 0.0
