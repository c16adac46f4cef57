"""Public entries of the selective scan: input checks, then dispatch to a backend."""
import torch

from ..precision import no_autocast
from .inputs import check_scan_inputs, check_step_inputs, compute_dtype
from .naive import selective_scan_naive
from .scan import selective_scan_torch
from .step import state_update_torch

BACKENDS = ("auto", "torch", "naive", "triton")


def _scan_impl(backend, u, tensors):
    """The scan `backend` names; "auto" takes Triton for CUDA tensors unless some are fp64 (Triton computes in fp32)."""
    if backend == "auto":
        backend = "triton" if u.is_cuda and compute_dtype(*tensors) == torch.float32 else "torch"
    if backend == "triton":
        from .triton_scan import selective_scan_triton  # imports triton only when it is used

        return selective_scan_triton
    return selective_scan_naive if backend == "naive" else selective_scan_torch


def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                      return_last_state=False, allow_neg_eigval=False, initial_state=None, backend="auto"):
    """mamba_ssm's selective scan with optional negative decays (a = 2 exp(delta A) - 1 in (-1, 1)).

    u, delta, z: [batch, d, L]; A: [d, n]; B, C: [batch, n, L] or [batch, groups, n, L] (channel block i
    of d // groups channels uses group i); D, delta_bias: [d]; initial_state: [batch, d, n] (zeros if None).
    Computes in fp32 (fp64 if any input is fp64). Returns out [batch, d, L] in u's dtype, or
    (out, last_state [batch, d, n] fp32) when return_last_state. backend "auto" runs the Triton kernels on
    CUDA tensors (the torch path for fp64) and the torch path elsewhere; "triton" needs CUDA tensors, or CPU
    ones with TRITON_INTERPRET=1; "naive" is the token-loop reference.
    """
    if backend not in BACKENDS:
        raise ValueError(f"selective_scan_fn: unknown backend {backend!r}; choose one of {BACKENDS}")
    check_scan_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state)
    impl = _scan_impl(backend, u, (u, delta, A, B, C, D, z, delta_bias, initial_state))
    with no_autocast(u):
        out, last_state = impl(u, delta, A, B, C, D, z, delta_bias, delta_softplus, allow_neg_eigval,
                               initial_state)
    return (out, last_state) if return_last_state else out


def selective_state_update(state, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                           allow_neg_eigval=False):
    """One decoding step matching selective_scan_fn at a single position; returns (y, new_state).

    state: [batch, d, n]; u, delta, z: [batch, d]; A: [d, n]; B, C: [batch, n] or [batch, groups, n];
    D, delta_bias: [d]. y is [batch, d] in u's dtype; new_state is fp32 (fp64 for fp64 inputs); state is
    left unchanged. Always the torch path: one step is a few elementwise ops, too small for a kernel to help.
    """
    check_step_inputs(state, u, delta, A, B, C, D, z, delta_bias)
    with no_autocast(u):
        return state_update_torch(state, u, delta, A, B, C, D, z, delta_bias, delta_softplus, allow_neg_eigval)
