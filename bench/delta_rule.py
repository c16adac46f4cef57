"""Delta-rule benchmark (run it through bench/kernels.py): our chunk_delta_rule against fla's and our torch path.

GPU: forward and forward+backward of backend="triton" and backend="torch" (ours), bf16, B=4, H=8,
T in {1024, 2048, 4096, 8192}, K=V in {128, 64}, with the q/k l2norm in the op as our DeltaNet layer calls it;
then fla's `fla.ops.delta_rule.chunk_delta_rule` (when installed) in a child process stopped after a time limit:
its first call at each head dim autotunes (it compiles and times every config of each of its kernels: minutes on
a fresh machine), and shapes it did not reach show as "-". The issue's goal: forward plus backward at least as
fast as fla's at T = 4096 (aim 1.2x).

CPU: fp32 forward and forward+backward of our torch path against fla's plain-torch references
(`delta_rule_chunkwise`, chunk 64, and the token loop `delta_rule_recurrence`) at B=2, H=4, K=V=64.
"""
import importlib.util

import torch
import torch.nn.functional as F

from bench.timing import device, emit, measure, median_ms, print_table, report, rows_from_records, run_child
from kernels.delta_rule import chunk_delta_rule

GPU_B, GPU_H = 4, 8
GPU_LENGTHS = (1024, 2048, 4096, 8192)
GPU_DIMS = (128, 64)
CPU_B, CPU_H, CPU_D = 2, 4, 64
GPU_DTYPE = torch.bfloat16
CHUNK = 64  # chunk size of our kernels and fla's


def chunk_flops(B, T, H, D, backward, C=CHUNK):
    """FLOPs of the chunked (WY) delta rule with K = V = D; a matmul counts 2mnk, in full, as the kernels run it.

    Per head and chunk of C tokens: A = beta K K^T 2C^2K; inverting the unit lower-triangular I + A C^3/3;
    W = T beta K and U = T beta V 2C^2K + 2C^2V; Q K^T 2C^2K; v_new = U - W S 2CKV; o = Q S + (Q K^T) v_new
    2CKV + 2C^2V; S += K^T v_new 2CKV. Sum 6C^2K + 4C^2V + 6CKV + C^3/3, times B H T / C chunks. The backward
    counts twice the forward (a product's gradients are two products of its size); its recomputation of the
    forward and the O(T K) l2norm are not counted.
    """
    K = V = D
    per_chunk = 6 * C * C * K + 4 * C * C * V + 6 * C * K * V + C ** 3 / 3
    return B * H * T / C * per_chunk * (3 if backward else 1)


def make_inputs(B, T, H, D, dtype, device, seed=0):
    """q, k, v ~ N(0, 1) (k unit-norm), beta in (0, 2) as with allow_neg_eigval, all requiring grad."""
    g = torch.Generator(device=device).manual_seed(seed)
    q, k, v = (torch.randn(B, T, H, D, generator=g, device=device) for _ in range(3))
    beta = 2 * torch.rand(B, T, H, generator=g, device=device)
    return [x.to(dtype).requires_grad_() for x in (q, F.normalize(k, dim=-1), v, beta)]


def time_op(op, B, T, H, D, dtype, device, repeats=7, budget_s=60.0):
    """{"fwd": ms, "fwd_bwd": ms} of op(q, k, v, beta) -> o: forward without a graph, and forward plus backward.

    On CPU also fwd_bwd_mb (peak MB of forward + backward above the inputs) and n (fewest timed runs; fewer than
    `repeats` when a call is so slow that budget_s caps them, see timing.measure).
    """
    inputs = make_inputs(B, T, H, D, dtype, device)
    do = torch.randn_like(inputs[2])

    def fwd():
        with torch.no_grad():
            op(*inputs)

    def fwd_bwd():
        torch.autograd.grad(op(*inputs), inputs, do)

    if device != "cpu":
        return {"fwd": median_ms(fwd, repeats), "fwd_bwd": median_ms(fwd_bwd, repeats)}
    f, fb = measure(fwd, repeats, budget_s), measure(fwd_bwd, repeats, budget_s)
    return {"fwd": f["ms"], "fwd_bwd": fb["ms"], "fwd_bwd_mb": fb["mb"], "n": min(f["n"], fb["n"])}


def ours(backend, l2norm):
    """Our chunk_delta_rule as op(q, k, v, beta) -> o."""
    return lambda *x: chunk_delta_rule(*x, use_qk_l2norm_in_kernel=l2norm, backend=backend)[0]


def gpu_rate(shape, key, ms):
    """Achieved TFLOP/s of the GPU shape (T, K=V) by chunk_flops."""
    T, D = shape
    return chunk_flops(GPU_B, T, GPU_H, D, key == "fwd_bwd") / (ms * 1e-3) / 1e12


def cpu_rate(shape, key, ms):
    """Achieved GFLOP/s of the CPU shape (T, K=V) by chunk_flops (for every method, whatever it computes)."""
    T, D = shape
    return chunk_flops(CPU_B, T, CPU_H, D, key == "fwd_bwd") / (ms * 1e-3) / 1e9


def fla_order(shapes):
    """T = 4096 (the goal's length) first at each head dim, so a short time limit still reaches it."""
    return sorted(shapes, key=lambda s: (GPU_DIMS.index(s[1]), s[0] != 4096))


def fla_child(shapes, l2norm):
    """In a child process: time fla's chunk_delta_rule at every (T, K=V), emitting one record per shape."""
    from fla.ops.delta_rule import chunk_delta_rule as fla_chunk_delta_rule

    def op(*x):
        return fla_chunk_delta_rule(*x, use_qk_l2norm_in_kernel=l2norm)[0]

    for T, D in shapes:
        emit(shape=[T, D], **time_op(op, GPU_B, T, GPU_H, D, GPU_DTYPE, device()))


def fla_rows(shapes, l2norm, timeout):
    """fla's rows from a child process stopped after `timeout` seconds; our rows are printed before this wait."""
    if importlib.util.find_spec("fla") is None:
        print("fla is not installed: no peer column")
        return []
    print(f"fla: timing in a child process (at most {timeout:.0f} s; its first call at each head dim autotunes)",
          flush=True)
    torch.cuda.empty_cache()
    records, note = run_child(fla_child, timeout, shapes=fla_order(shapes), l2norm=l2norm)
    rows = rows_from_records(records, "fla")
    for row in rows:
        report(row, gpu_rate, "TFLOP/s")
    missing = [s for s in shapes if s not in {row["shape"] for row in rows}]
    if missing:
        print(f"  fla: no result for (T, K=V) {missing}: {note or 'no record'}")
    return rows


def bench_gpu(fla_timeout, l2norm=True):
    """Time ours (Triton and torch) and fla on the GPU, print the tables; returns the rows."""
    print(f"delta rule, {torch.cuda.get_device_name()}: {str(GPU_DTYPE)[6:]}, B={GPU_B}, H={GPU_H}, "
          f"qk l2norm in op: {l2norm}; medians of triton.testing.do_bench")
    shapes = [(T, D) for D in GPU_DIMS for T in GPU_LENGTHS]
    rows = []
    for T, D in shapes:
        for backend in ("triton", "torch"):
            rows.append(dict(shape=(T, D), name=backend,
                             **time_op(ours(backend, l2norm), GPU_B, T, GPU_H, D, GPU_DTYPE, device())))
            report(rows[-1], gpu_rate, "TFLOP/s")
    if fla_timeout > 0:
        rows += fla_rows(shapes, l2norm, fla_timeout)
    print_table(rows, "(T, K=V)", ["triton", "torch", "fla"], gpu_rate, "TFLOP/s")
    by = {(r["shape"], r["name"]): r for r in rows}
    for D in GPU_DIMS:
        if ((4096, D), "fla") in by:
            ratio = by[(4096, D), "fla"]["fwd_bwd"] / by[(4096, D), "triton"]["fwd_bwd"]
            verdict = "met" if ratio >= 1.2 else ("at least fla's speed" if ratio >= 1.0 else "NOT met")
            print(f"goal at T=4096, K=V={D}: fla/ours fwd+bwd = {ratio:.2f} (aim 1.2): {verdict}")
    return rows


def cpu_ops():
    """name -> op(q, k, v, beta) -> o on CPU: our torch path, and fla's plain-torch references when importable."""
    ops = {"ours torch": ours("torch", l2norm=False)}
    try:
        from fla.ops.delta_rule.naive import delta_rule_chunkwise, delta_rule_recurrence
    except ImportError as err:
        print(f"fla is not importable ({err}): timing our torch path only")
        return ops

    def fla_layout(fn):
        """fla's references take [B, H, T, *] and return [B, H, T, V]."""
        return lambda *x: fn(*(t.transpose(1, 2) for t in x))[0].transpose(1, 2)

    ops["fla chunkwise"] = fla_layout(lambda q, k, v, beta: delta_rule_chunkwise(q, k, v, beta, chunk_size=CHUNK))
    ops["fla recurrence"] = fla_layout(delta_rule_recurrence)
    return ops


def bench_cpu(lengths, repeats=7, budget_s=60.0):
    """Time the torch paths in fp32 on CPU at K=V=64 for each T in lengths, print the tables; returns the rows.

    Rows also hold the peak memory of forward + backward (fwd_bwd_mb); budget_s caps the runs of slow calls."""
    if any(T % CHUNK for T in lengths):
        raise ValueError(f"delta rule CPU lengths must be multiples of {CHUNK} (fla's chunkwise reference needs whole "
                         f"chunks), got {list(lengths)}")
    print(f"delta rule, CPU ({torch.get_num_threads()} threads): fp32, B={CPU_B}, H={CPU_H}, K=V={CPU_D}, "
          f"median of {repeats}")
    ops = cpu_ops()
    rows = []
    for T in lengths:
        for name, op in ops.items():
            rows.append(dict(shape=(T, CPU_D), name=name, **time_op(op, CPU_B, T, CPU_H, CPU_D, torch.float32, "cpu",
                                                                     repeats, budget_s)))
            report(rows[-1], cpu_rate, "GFLOP/s")
    print_table(rows, "(T, K=V)", list(ops), cpu_rate, "GFLOP/s by the chunked count")
    return rows
