"""Exact first-order linear recurrence h_t = a_t * h_{t-1} + b_t for decays of any sign, with autograd.

Only multiply-adds in time order are used (no logs, no divisions), so decays of exactly 0 or -1 are
exact. The scan is chunked: each chunk first runs from a zero state to get its end state and decay
product, a short loop over chunks turns those into the true state entering every chunk, and a second
pass over the chunk positions writes the outputs. Each Python step works on a [num_chunks, ...] slice,
so the loop count is about 2 * chunk_size + L / chunk_size instead of L.

Measured (fp32, L=2048, 8192 independent recurrences, 2 threads): a plain time loop 37 ms, this scan
with chunk 32-64 26 ms, a Hillis-Steele doubling scan within chunks of 16-64 220 ms (log2(T) full
passes over strided slices cost more than the Python loop they save).
"""
import torch
from torch.autograd.function import once_differentiable

CHUNK_SIZE = 32


def _sequential(a, b, prev, out, steps):
    """Write out[t] = a[t] * prev + b[t] for t in steps (in order), carrying prev; returns the last state."""
    for t in steps:
        torch.addcmul(b[t], a[t], prev, out=out[t])
        prev = out[t]
    return prev


def chunked_scan(a, b, h0, out, reverse=False, chunk_size=CHUNK_SIZE):
    """out[t] = a[t] * out[t-1] + b[t] from h0, over dim 0 of contiguous [L, ...] tensors; h0 is [...].

    reverse runs from t = L-1 down to 0 (out[t] = a[t] * out[t+1] + b[t]). out may be b itself.
    """
    L = a.shape[0]
    num_chunks = L // chunk_size
    if num_chunks < 2:
        steps = range(L - 1, -1, -1) if reverse else range(L)
        _sequential(a, b, h0, out, steps)
        return
    rest = L - num_chunks * chunk_size
    # Chunks are aligned to where the scan starts; the ragged rest is done last, step by step.
    body = slice(rest, L) if reverse else slice(0, L - rest)
    tail = range(rest - 1, -1, -1) if reverse else range(L - rest, L)
    in_chunk = range(chunk_size - 1, -1, -1) if reverse else range(chunk_size)
    chunk_order = range(num_chunks - 1, -1, -1) if reverse else range(num_chunks)

    def chunked(x):  # [L, ...] -> [num_chunks, chunk_size, ...]
        return x[body].view(num_chunks, chunk_size, *x.shape[1:])

    ac, bc, oc = chunked(a), chunked(b), chunked(out)
    # End state of every chunk started from zero, and the product of its decays.
    local = bc[:, in_chunk[0]].clone()  # [num_chunks, ...]
    prod = ac[:, in_chunk[0]].clone()  # [num_chunks, ...]
    for t in in_chunk[1:]:
        torch.addcmul(bc[:, t], ac[:, t], local, out=local)
        prod.mul_(ac[:, t])
    # True state entering each chunk.
    carry = torch.empty_like(local)
    prev = h0
    for c in chunk_order:
        carry[c] = prev
        prev = torch.addcmul(local[c], prod[c], prev)
    _sequential(ac.transpose(0, 1), bc.transpose(0, 1), carry, oc.transpose(0, 1), in_chunk)
    _sequential(a, b, prev, out, tail)


def accumulate_state_grads_(a, dh, chunk_size=CHUNK_SIZE):
    """Turn dh from the direct gradients g_t into total ones in place: dh_t = g_t + a_{t+1} dh_{t+1}."""
    # A reverse scan over the first L-1 steps, starting from dh_{L-1} = g_{L-1}.
    chunked_scan(a[1:], dh[:-1], dh[-1], dh[:-1], reverse=True, chunk_size=chunk_size)


class LinearRecurrence(torch.autograd.Function):
    """h_t = a_t * h_{t-1} + b_t over dim 0 of time-major tensors; saves only a, h and h0."""

    @staticmethod
    def forward(ctx, a, b, h0, chunk_size):
        a, b, h0 = a.contiguous(), b.contiguous(), h0.contiguous()
        h = torch.empty_like(b)
        chunked_scan(a, b, h0, h, chunk_size=chunk_size)
        ctx.save_for_backward(a, h, h0)
        ctx.chunk_size = chunk_size
        return h

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_h):
        a, h, h0 = ctx.saved_tensors
        dh = grad_h.clone(memory_format=torch.contiguous_format)
        accumulate_state_grads_(a, dh, ctx.chunk_size)
        grad_a = grad_h0 = None
        if ctx.needs_input_grad[0]:
            grad_a = torch.empty_like(a)
            torch.mul(dh[1:], h[:-1], out=grad_a[1:])
            torch.mul(dh[0], h0, out=grad_a[0])
        if ctx.needs_input_grad[2]:
            grad_h0 = a[0] * dh[0]
        return grad_a, dh, grad_h0, None


def linear_recurrence(a, b, h0=None, dim=-1, chunk_size=CHUNK_SIZE):
    """Return h with h_t = a_t * h_{t-1} + b_t along `dim` (h_{-1} = h0, zeros if None), exact for any sign of a.

    a, b: same shape and floating dtype; h0: their shape without `dim`. Fastest when `dim` is the
    outermost axis in memory (time-major), since then no copy is made.
    """
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
        raise TypeError("linear_recurrence: a and b must be torch tensors")
    if a.shape != b.shape or a.dtype != b.dtype or not a.is_floating_point():
        raise ValueError(
            f"linear_recurrence: a and b must have the same shape and floating dtype; "
            f"got a {tuple(a.shape)} {a.dtype}, b {tuple(b.shape)} {b.dtype}"
        )
    if a.dim() == 0 or a.shape[dim] == 0:
        raise ValueError(f"linear_recurrence: need at least one step along dim={dim}; got shape {tuple(a.shape)}")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"linear_recurrence: chunk_size must be a positive int; got {chunk_size!r}")
    a_t, b_t = a.movedim(dim, 0), b.movedim(dim, 0)  # [L, ...]
    if h0 is None:
        h0 = b_t.new_zeros(b_t.shape[1:])
    elif h0.shape != b_t.shape[1:] or h0.dtype != b.dtype:
        raise ValueError(
            f"linear_recurrence: h0 must have shape {tuple(b_t.shape[1:])} (b without dim={dim}) and dtype "
            f"{b.dtype}; got {tuple(h0.shape)} {h0.dtype}"
        )
    return LinearRecurrence.apply(a_t, b_t, h0, chunk_size).movedim(0, dim)
