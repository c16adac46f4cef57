"""Input checks shared by the selective-scan entries, with errors that say what shape was expected."""
import torch


def compute_dtype(*tensors):
    """fp32 for every input dtype, except fp64 when any input is fp64 (so gradcheck can run in double)."""
    if any(t is not None and t.dtype == torch.float64 for t in tensors):
        return torch.float64
    return torch.float32


def _floating(name, x):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a real floating-point tensor; got dtype {x.dtype}")


def _shape(name, x, expected, layout):
    _floating(name, x)
    if tuple(x.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {layout} = {list(expected)}; got {list(x.shape)}")


def _projection(name, x, batch, dim, n, time):
    """B or C: [batch, n, *time] (shared by all channels) or [batch, groups, n, *time] with groups dividing dim."""
    _floating(name, x)
    shared = (batch, n, *time)
    if tuple(x.shape) == shared:
        return
    groups = x.shape[1] if x.dim() == len(shared) + 1 else 0
    if groups > 0 and dim % groups == 0 and tuple(x.shape) == (batch, groups, n, *time):
        return
    t_names = ", L" if time else ""
    raise ValueError(
        f"{name} must have shape [batch, n{t_names}] = {list(shared)} or [batch, groups, n{t_names}] with "
        f"groups dividing d={dim}; got {list(x.shape)}"
    )


def _same_device(named):
    devices = {name: x.device for name, x in named if x is not None}
    if len(set(devices.values())) > 1:
        raise ValueError(f"all inputs must be on one device; got {devices}")


def check_scan_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state):
    """Validate selective_scan_fn's tensors (see its docstring for the shapes)."""
    _floating("u", u)
    if u.dim() != 3 or u.shape[2] == 0:
        raise ValueError(f"u must have shape [batch, d, L] with L >= 1; got {list(u.shape)}")
    batch, dim, L = u.shape
    _shape("delta", delta, (batch, dim, L), "[batch, d, L]")
    _floating("A", A)
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"A must have shape [d, n] with d={dim} (u.shape[1]); got {list(A.shape)}")
    n = A.shape[1]
    _projection("B", B, batch, dim, n, (L,))
    _projection("C", C, batch, dim, n, (L,))
    if D is not None:
        _shape("D", D, (dim,), "[d]")
    if z is not None:
        _shape("z", z, (batch, dim, L), "[batch, d, L]")
    if delta_bias is not None:
        _shape("delta_bias", delta_bias, (dim,), "[d]")
    if initial_state is not None:
        _shape("initial_state", initial_state, (batch, dim, n), "[batch, d, n]")
    _same_device(zip("u delta A B C D z delta_bias initial_state".split(),
                     (u, delta, A, B, C, D, z, delta_bias, initial_state)))


def check_step_inputs(state, u, delta, A, B, C, D, z, delta_bias):
    """Validate selective_state_update's tensors (see its docstring for the shapes)."""
    _floating("u", u)
    if u.dim() != 2:
        raise ValueError(f"u must have shape [batch, d] (one decoding step); got {list(u.shape)}")
    batch, dim = u.shape
    _shape("delta", delta, (batch, dim), "[batch, d]")
    _floating("A", A)
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"A must have shape [d, n] with d={dim} (u.shape[1]); got {list(A.shape)}")
    n = A.shape[1]
    _shape("state", state, (batch, dim, n), "[batch, d, n]")
    _projection("B", B, batch, dim, n, ())
    _projection("C", C, batch, dim, n, ())
    if D is not None:
        _shape("D", D, (dim,), "[d]")
    if z is not None:
        _shape("z", z, (batch, dim), "[batch, d]")
    if delta_bias is not None:
        _shape("delta_bias", delta_bias, (dim,), "[d]")
    _same_device(zip("state u delta A B C D z delta_bias".split(), (state, u, delta, A, B, C, D, z, delta_bias)))
