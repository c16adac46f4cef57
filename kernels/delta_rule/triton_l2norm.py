"""L2 normalisation over the last dim in Triton, fwd and bwd, for `use_qk_l2norm_in_kernel` (eps inside the root,
as `naive.l2norm`). One pass each way over [rows, D]; computes in fp32 and writes the input's dtype."""
import torch
import triton
import triton.language as tl

from .triton_common import autotune, new_empty, warps

EPS = 1e-6


@autotune(warps(4, 8), key=["D"])
@triton.jit
def _l2norm_fwd_kernel(x, y, R, eps, D: tl.constexpr, BD: tl.constexpr, BR: tl.constexpr):
    o_r = tl.program_id(0).to(tl.int64) * BR + tl.arange(0, BR)
    o_d = tl.arange(0, BD)
    m = (o_r[:, None] < R) & (o_d[None, :] < D)
    p = o_r[:, None] * D + o_d[None, :]
    b_x = tl.load(x + p, mask=m, other=0.).to(tl.float32)
    b_y = b_x / tl.sqrt(tl.sum(b_x * b_x, 1) + eps)[:, None]
    tl.store(y + p, b_y.to(y.dtype.element_ty), mask=m)


@autotune(warps(4, 8), key=["D"])
@triton.jit
def _l2norm_bwd_kernel(x, dy, dx, R, eps, D: tl.constexpr, BD: tl.constexpr, BR: tl.constexpr):
    o_r = tl.program_id(0).to(tl.int64) * BR + tl.arange(0, BR)
    o_d = tl.arange(0, BD)
    m = (o_r[:, None] < R) & (o_d[None, :] < D)
    p = o_r[:, None] * D + o_d[None, :]
    b_x = tl.load(x + p, mask=m, other=0.).to(tl.float32)
    b_dy = tl.load(dy + p, mask=m, other=0.).to(tl.float32)
    b_rstd = 1. / tl.sqrt(tl.sum(b_x * b_x, 1) + eps)  # [BR]
    b_y = b_x * b_rstd[:, None]
    # y = x r with r = (|x|^2 + eps)^-1/2: dx = r (dy - y (y . dy)).
    b_dx = (b_dy - b_y * tl.sum(b_y * b_dy, 1)[:, None]) * b_rstd[:, None]
    tl.store(dx + p, b_dx.to(dx.dtype.element_ty), mask=m)


def row_tiles(D: int) -> tuple:
    """(BD, BR): the power-of-two width covering D, and rows per program (~4k elements)."""
    BD = triton.next_power_of_2(D)
    return BD, max(1, 4096 // BD)


def _launch(kernel, D, R, *args):
    BD, BR = row_tiles(D)
    kernel[(triton.cdiv(R, BR),)](*args, R, EPS, D=D, BD=BD, BR=BR)


class _L2Norm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        x = x.contiguous()
        y = new_empty(x.shape, x.dtype, x.device)
        _launch(_l2norm_fwd_kernel, x.shape[-1], x.numel() // x.shape[-1], x, y)
        ctx.save_for_backward(x)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, = ctx.saved_tensors
        dx = new_empty(x.shape, x.dtype, x.device)
        _launch(_l2norm_bwd_kernel, x.shape[-1], x.numel() // x.shape[-1], x, dy.contiguous(), dx)
        return dx


def l2norm_triton(x: torch.Tensor) -> torch.Tensor:
    """x / sqrt(|x|^2 + 1e-6) over the last dim, differentiable."""
    return _L2Norm.apply(x)
