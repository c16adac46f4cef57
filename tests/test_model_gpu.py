"""The model on CUDA: fp32 decoding equals the full forward, and a bf16-autocast training step and decoding
work for every mixer (the recurrent kernels take autocast's bf16 inputs and compute in fp32)."""
import pytest
import torch
import torch.nn.functional as F

from model import ModelConfig, build_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
              pytest.mark.usefixtures("no_tf32")]
MIXERS = ("deltanet", "mamba", "attention", "lstm")


def tiny(mixer, neg):
    return ModelConfig(mixer=mixer, allow_neg_eigval=neg, vocab_size=128, hidden_size=64, num_layers=2,
                       num_heads=2, intermediate_size=128, state_size=8, dt_max=1.0)


def rel_rms(x, ref):
    return ((x - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt()).item()


def _decode(model, ids, split):
    logits, state = model(ids[:, :split], return_state=True)
    steps = [logits]
    for t in range(split, ids.shape[1]):
        logits, state = model(ids[:, t:t + 1], state=state, return_state=True)
        steps.append(logits)
    return torch.cat(steps, 1)


@pytest.mark.parametrize("neg", [False, True])
@pytest.mark.parametrize("mixer", MIXERS)
def test_cuda_fp32_decoding_equals_full_forward(mixer, neg):
    model = build_model(tiny(mixer, neg)).cuda().eval()
    ids = torch.randint(0, 128, (2, 80), device="cuda")  # > 64: crosses a delta-rule chunk
    with torch.no_grad():
        # fp32 roundoff in a different order (~1e-7 relative); 1e-5 catches any state mistake
        assert rel_rms(_decode(model, ids, 70), model(ids)) < 1e-5


@pytest.mark.parametrize("neg", [False, True])
@pytest.mark.parametrize("mixer", MIXERS)
def test_bf16_autocast_train_step_and_decoding(mixer, neg):
    model = build_model(tiny(mixer, neg)).cuda()
    model.track_eigenvalues(True)
    ids = torch.randint(0, 128, (2, 80), device="cuda")
    with torch.no_grad():
        ref = model(ids)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(ids)
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    assert logits.dtype == torch.float32
    # bf16 keeps 8 mantissa bits (~4e-3 per rounding); through two blocks that stays within a few 1e-2
    assert rel_rms(logits, ref) < 3e-2
    loss.backward()
    for name, p in model.named_parameters():
        assert p.dtype == torch.float32 and p.grad is not None and torch.isfinite(p.grad).all(), name
    stats = model.eigenvalue_stats()
    assert all(v == v for v in stats.values())  # no NaN
    model.eval()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        assert rel_rms(_decode(model, ids, 70), model(ids)) < 3e-2


def test_cuda_generate_is_greedy_argmax():
    model = build_model(tiny("deltanet", True)).cuda().eval()
    prompt = torch.randint(0, 128, (2, 5), device="cuda")
    out = model.generate(prompt, 4)
    expected = prompt
    with torch.no_grad():
        for _ in range(4):
            expected = torch.cat([expected, model(expected)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, expected)


def test_bf16_training_keeps_fp32_recurrent_state():
    """Under bf16 autocast, bf16 activations go in but the kernels accumulate and return the state in fp32."""
    from kernels.delta_rule import chunk_delta_rule
    from kernels.selective_scan import selective_scan_fn

    B, T, H, K = 2, 256, 2, 64
    q, k = (F.normalize(torch.randn(B, T, H, K, device="cuda"), dim=-1).bfloat16() for _ in range(2))
    v = torch.randn(B, T, H, K, device="cuda").bfloat16()
    beta = (2 * torch.rand(B, T, H, device="cuda")).bfloat16()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out, state = chunk_delta_rule(q, k, v, beta, output_final_state=True, backend="triton")
    assert out.dtype == torch.bfloat16 and state.dtype == torch.float32
    _, ref_state = chunk_delta_rule(q.float(), k.float(), v.float(), beta.float(), output_final_state=True,
                                    backend="torch")
    assert rel_rms(state, ref_state) < 1e-2  # bf16 inputs, fp32 accumulation over 256 steps

    u, delta = torch.randn(B, 128, T, device="cuda").bfloat16(), torch.rand(B, 128, T, device="cuda").bfloat16()
    A = -torch.rand(128, 16, device="cuda")
    Bm, C = torch.randn(B, 16, T, device="cuda").bfloat16(), torch.randn(B, 16, T, device="cuda").bfloat16()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y, last = selective_scan_fn(u, delta, A, Bm, C, return_last_state=True, allow_neg_eigval=True,
                                    backend="triton")
    assert y.dtype == torch.bfloat16 and last.dtype == torch.float32
