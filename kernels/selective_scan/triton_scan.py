"""Triton backend of the selective scan: launch configurations, host wrappers and the autograd Function.

Memory: the forward keeps only the state entering every CKPT_T steps ([batch, L / CKPT_T, d, n] fp32, half of
an fp32 [batch, d, L] tensor at n = 16), not the [batch, d, n, L] state history; the backward recomputes the
states of one chunk at a time from it. selective_state_update stays on the torch path everywhere: one step
is a handful of elementwise ops on [batch, d, n], which a kernel launch would not speed up.
"""
import contextlib
import os

import torch
import triton
from torch.autograd.function import once_differentiable

from .triton_kernels import selective_scan_bwd_kernel, selective_scan_fwd_kernel

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# Steps per backward chunk, so also the spacing of the states the forward saves. The interpreter runs
# tl.associative_scan element by element, so small chunks waste less on padding past L there.
CKPT_T = 16 if INTERPRET else 32
# (BLOCK_D, BLOCK_T, num_warps) for n = 16, picked from sm_90 compiles (ptxas registers and SASS instructions
# per state element; none spills): 4 to 8 elements of each tile per thread. Forward chunks must divide CKPT_T.
# Larger channel blocks in the backward cost registers but halve the atomic adds into dB and dC.
FWD_SHAPES = [(2, 32, 4), (4, 16, 4), (8, 16, 8)]
BWD_SHAPES = [(1, CKPT_T, 4), (2, CKPT_T, 4), (2, CKPT_T, 8), (4, CKPT_T, 8)]


def _configs(shapes):
    """Triton configs for a GPU; the interpreter gets one small config (it cannot autotune)."""
    if INTERPRET:
        return [triton.Config({"BLOCK_D": 4, "BLOCK_T": CKPT_T}, num_warps=1)]
    return [triton.Config({"BLOCK_D": d, "BLOCK_T": t}, num_warps=w) for d, t, w in shapes]


def _fitting(configs, named_args, **kwargs):
    """Scale each config's channel block to this call's n (the shapes assume n = 16), within one group."""
    block_n, group_dim = kwargs["BLOCK_N"], named_args["group_dim"]
    fitted = {}
    for c in configs:
        block_d = max(1, min(c.kwargs["BLOCK_D"] * 16 // block_n, triton.next_power_of_2(group_dim)))
        key = (block_d, c.kwargs["BLOCK_T"], c.num_warps)
        fitted.setdefault(key, triton.Config({"BLOCK_D": block_d, "BLOCK_T": key[1]}, num_warps=key[2]))
    return list(fitted.values())


_fwd_kernel = triton.autotune(
    configs=_configs(FWD_SHAPES), key=["dim", "n", "group_dim"], prune_configs_by={"early_config_prune": _fitting},
)(selective_scan_fwd_kernel)
_bwd_kernel = triton.autotune(
    configs=_configs(BWD_SHAPES), key=["dim", "n", "group_dim"], prune_configs_by={"early_config_prune": _fitting},
    reset_to_zero=["dB", "dC"],  # accumulated atomically: zero them before each timed run
)(selective_scan_bwd_kernel)


def new_empty(shape, dtype, device):
    """Every output the kernels fill comes from here, so tests can hand out NaN-filled buffers instead."""
    return torch.empty(shape, dtype=dtype, device=device)


def _as_groups(x):
    """B or C as [batch, groups, n, L] (a view)."""
    return x if x.dim() == 4 else x.unsqueeze(1)


def _time_contiguous(x):
    """The kernels read every sequence with unit stride along L (the last axis)."""
    return x if x is None or x.stride(-1) == 1 else x.contiguous()


def _strides(u, delta, B4, C4, z):
    """Strides of every axis but the last, as the kernels take them (zeros for an absent z)."""
    strides = [*u.stride()[:2], *delta.stride()[:2], *B4.stride()[:3], *C4.stride()[:3]]
    return strides + (list(z.stride()[:2]) if z is not None else [0, 0])


def _grid(batch, dim, groups):
    return lambda meta: (groups * triton.cdiv(dim // groups, meta["BLOCK_D"]), batch)


def _scan_fwd(u, delta, A, B, C, D, z, delta_bias, h0, softplus, neg, save_ckpt):
    """Returns out [batch, d, L] in u's dtype, last state [batch, d, n] fp32 and the saved states (or None)."""
    batch, dim, L = u.shape
    B4, C4 = _as_groups(B), _as_groups(C)
    n = A.shape[1]
    n_ckpt = triton.cdiv(L, CKPT_T)
    out = new_empty((batch, dim, L), u.dtype, u.device)
    last = new_empty((batch, dim, n), torch.float32, u.device)
    ckpt = new_empty((batch, n_ckpt, dim, n), torch.float32, u.device) if save_ckpt else None
    groups = B4.shape[1]
    _fwd_kernel[_grid(batch, dim, groups)](
        u, delta, A, B4, C4, D, z, delta_bias, h0, out, last, ckpt, *_strides(u, delta, B4, C4, z),
        dim, n, L, dim // groups, n_ckpt,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, HAS_H0=h0 is not None,
        SOFTPLUS=softplus, NEG=neg, SAVE_CKPT=save_ckpt, CKPT_T=CKPT_T, BLOCK_N=triton.next_power_of_2(n),
    )
    return out, last, ckpt


def _scan_bwd(dout, dlast, u, delta, A, B, C, D, z, delta_bias, ckpt, softplus, neg):
    """Gradients for (u, delta, A, B, C, D, z, delta_bias, initial_state), each in its input's dtype."""
    batch, dim, L = u.shape
    B4, C4 = _as_groups(B), _as_groups(C)
    groups, n = B4.shape[1], A.shape[1]
    device, f32 = u.device, torch.float32
    du = new_empty((batch, dim, L), u.dtype, device)
    ddelta = new_empty((batch, dim, L), delta.dtype, device)
    dz = new_empty((batch, dim, L), z.dtype, device) if z is not None else None
    dB, dC = (torch.zeros(batch, groups, n, L, dtype=f32, device=device) for _ in range(2))
    dA = new_empty((batch, dim, n), f32, device)  # per batch row, summed below
    dD = new_empty((batch, dim), f32, device) if D is not None else None
    dbias = new_empty((batch, dim), f32, device) if delta_bias is not None else None
    dh0 = new_empty((batch, dim, n), f32, device)
    _bwd_kernel[_grid(batch, dim, groups)](
        u, delta, A, B4, C4, D, z, delta_bias, ckpt, dout.contiguous(), dlast.contiguous(),
        du, ddelta, dz, dB, dC, dA, dD, dbias, dh0, *_strides(u, delta, B4, C4, z),
        dim, n, L, dim // groups, groups, ckpt.shape[1],
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus, NEG=neg,
        BLOCK_N=triton.next_power_of_2(n),
    )
    dD = dD.sum(0).to(D.dtype) if D is not None else None
    dbias = dbias.sum(0).to(delta_bias.dtype) if delta_bias is not None else None
    return (du, ddelta, dA.sum(0).to(A.dtype), dB.view(B.shape).to(B.dtype), dC.view(C.shape).to(C.dtype), dD,
            dz, dbias, dh0)


class SelectiveScanTriton(torch.autograd.Function):
    """The Triton scan with its hand-written backward; returns (out, last_state)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, initial_state, softplus, neg, save_ckpt):
        out, last, ckpt = _scan_fwd(u, delta, A, B, C, D, z, delta_bias, initial_state, softplus, neg, save_ckpt)
        if save_ckpt:
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, ckpt)
        ctx.flags = softplus, neg
        ctx.h0_dtype = initial_state.dtype if initial_state is not None else None
        return out, last

    @staticmethod
    @once_differentiable
    def backward(ctx, dout, dlast):
        *grads, dh0 = _scan_bwd(dout, dlast, *ctx.saved_tensors, *ctx.flags)
        dh0 = dh0.to(ctx.h0_dtype) if ctx.h0_dtype is not None else None
        return (*grads, dh0, None, None, None)


def selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                          allow_neg_eigval=False, initial_state=None):
    """Same contract as selective_scan_naive (inputs already checked): returns (out in u's dtype, last_state fp32)."""
    if any(t is not None and t.dtype == torch.float64 for t in (u, delta, A, B, C, D, z, delta_bias, initial_state)):
        raise TypeError("selective_scan_fn(backend='triton') computes in fp32 and takes fp32, fp16 or bf16 inputs; "
                        "use backend='torch' for fp64")
    if u.device.type != "cuda" and not INTERPRET:
        raise ValueError(f"selective_scan_fn(backend='triton') needs CUDA tensors; got {u.device}. On CPU use "
                         "backend='torch', or set TRITON_INTERPRET=1 before importing triton to interpret the kernels")
    u, delta, B, C, z = (_time_contiguous(t) for t in (u, delta, B, C, z))
    A, D, delta_bias, h0 = (t.contiguous() if t is not None else None for t in (A, D, delta_bias, initial_state))
    inputs = (u, delta, A, B, C, D, z, delta_bias, h0)
    save_ckpt = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)
    # Triton launches on the current device; the autograd engine sets it for the backward by itself.
    with torch.cuda.device(u.device) if u.is_cuda else contextlib.nullcontext():
        return SelectiveScanTriton.apply(*inputs, delta_softplus, allow_neg_eigval, save_ckpt)
