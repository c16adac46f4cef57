"""Static checks of the delta-rule kernels as Triton compiles them for Hopper (sm_90); no GPU needed.

Two code patterns give wrong results on Hopper with the toolchain our GPU machine runs (Triton 3.6, which
assembles sm_90 with ptxas 12.8) while passing every interpreter test:
- a wgmma reading its A operand from registers left in flight (`wgmma.wait_group N`, N > 0, as Triton emits when
  it software-pipelines a dot in a loop): ptxas 12.x reuses those registers before the wgmma has read them
  (fixed in CUDA 13.3's ptxas), so results are wrong and differ from run to run;
- tl.trans of a dot's result (a tensor in the MMA layout) feeding another dot: Triton 3.4-3.7 miscompiles it in
  16-bit on Hopper (fla issue 640).
`problems()` compiles every kernel under every autotune config and names each occurrence. Run it as
`TRITON_INTERPRET=0 python -m kernels.delta_rule.triton_sm90_check [bf16|fp16|fp32] [K] [V] [BT]`.
"""
import re
import sys

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from . import triton_chunk_bwd, triton_chunk_fwd, triton_fused_recurrent, triton_l2norm
from .triton_common import dot_precision, state_tiles

# Pointers the host code allocates in fp32 whatever the inputs' dtype (every other pointer takes that dtype).
FP32_POINTERS = {
    "_wy_fwd_kernel": {"Tm"},
    "_state_fwd_kernel": {"h0", "ht"},
    "_recompute_bwd_kernel": {"Tm", "dvl"},
    "_state_bwd_kernel": {"dvl", "dht", "dh0"},
    "_dqk_bwd_kernel": {"dk", "dw"},
    "_wy_bwd_kernel": {"Tm", "dw", "dkp"},
    "_fused_recurrent_fwd_kernel": {"h0", "ht"},
}
INT32_POINTERS = {"cu", "indices", "offsets"}
SCALARS = {"R": "i32", "scale": "fp32", "eps": "fp32"}
TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def kernels(K, V):
    """(autotuned kernel, meta-parameters its host code passes) for every delta-rule kernel."""
    BKS, BVS = state_tiles(K, V)
    BD, BR = triton_l2norm.row_tiles(K)
    state = dict(BK=BKS, BV=BVS)
    return [(triton_chunk_fwd._wy_fwd_kernel, {}), (triton_chunk_fwd._state_fwd_kernel, state),
            (triton_chunk_fwd._output_fwd_kernel, {}), (triton_chunk_bwd._recompute_bwd_kernel, {}),
            (triton_chunk_bwd._state_bwd_kernel, state), (triton_chunk_bwd._dqk_bwd_kernel, {}),
            (triton_chunk_bwd._wy_bwd_kernel, {}), (triton_fused_recurrent._fused_recurrent_fwd_kernel, state),
            (triton_l2norm._l2norm_fwd_kernel, dict(D=K, BD=BD, BR=BR)),
            (triton_l2norm._l2norm_bwd_kernel, dict(D=K, BD=BD, BR=BR))]


def compile_sm90(fn, dtype, meta, config):
    """Compile one JITFunction for sm_90 with `config` the way a launch on aligned tensors would."""
    signature, constants = {}, {}
    fp32 = FP32_POINTERS.get(fn.__name__, set())
    for param in fn.params:
        name = param.name
        if param.is_constexpr:
            signature[name] = "constexpr"
            constants[name] = {**meta, **config.kwargs}[name]
        elif name in SCALARS:
            signature[name] = SCALARS[name]
        else:
            signature[name] = "*i32" if name in INT32_POINTERS else "*fp32" if name in fp32 else f"*{dtype}"
    attrs = {(i,): [["tt.divisibility", 16]] for i, t in enumerate(signature.values()) if t.startswith("*")}
    return triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constants, attrs=attrs),
                          target=GPUTarget("cuda", 90, 32),
                          options=dict(num_warps=config.num_warps, num_stages=config.num_stages))


def register_a_in_flight(ptx: str) -> int:
    """How many `wgmma.wait_group N` (N > 0) leave a wgmma with a register A operand in flight."""
    groups, has_register_a, count = [], False, 0
    for line in ptx.splitlines():
        line = line.strip()
        if line.startswith("wgmma.mma_async"):
            has_register_a |= bool(re.match(r"wgmma\.mma_async\S*\s*\{[^}]*\}\s*,\s*\{", line))  # d, then {a regs}
        elif line.startswith("wgmma.commit_group"):
            groups.append(has_register_a)
            has_register_a = False
        elif line.startswith("wgmma.wait_group"):
            pending = int(re.search(r"(\d+)\s*;", line).group(1))
            groups = groups[len(groups) - pending:] if pending else []
            count += any(groups)
    return count


def transposed_mma(ttgir: str) -> int:
    """How many tt.trans take a tensor in an MMA layout (a dot's result)."""
    return len(re.findall(r"tt\.trans %\S+ \{[^}]*\} : tensor<[^>]*#mma\d*>", ttgir))


def problems(dtype="bf16", K=128, V=128, BT=64):
    """Every (kernel, config) whose sm_90 code has either pattern, as readable lines; [] when clean."""
    found = []
    common = dict(H=8, K=K, V=V, BT=BT, PREC=dot_precision(TORCH_DTYPES[dtype]),
                  USE_H0=True, STORE_HT=True, USE_DHT=True, STORE_DH0=True)
    for kernel, meta in kernels(K, V):
        for config in kernel.all_configs:
            compiled = compile_sm90(kernel.fn, dtype, {**common, **meta}, config)
            where = f"{kernel.fn.__name__} {config}"
            if n := register_a_in_flight(compiled.asm["ptx"]):
                found.append(f"{where}: {n} wgmma wait(s) leave register-A wgmmas in flight")
            if n := transposed_mma(compiled.asm["ttgir"]):
                found.append(f"{where}: {n} tl.trans of a dot result")
    return found


if __name__ == "__main__":
    args = sys.argv[1:]
    dtype = args[0] if args else "bf16"
    dims = [int(a) for a in args[1:]] + [128, 128, 64][len(args[1:]):]
    found = problems(dtype, *dims)
    print("\n".join(found) or f"sm_90 code clean: {dtype}, K={dims[0]}, V={dims[1]}, BT={dims[2]}")
    sys.exit(1 if found else 0)
