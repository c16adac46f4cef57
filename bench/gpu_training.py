"""Training throughput on one GPU (issue 7): a 340M DeltaNet (configs/paper/deltanet_340m.yaml's model) at
sequence 2048 under bf16 autocast with AdamW, in tokens/s and model FLOPs utilisation (MFU), for
  ours              our LM on our Triton kernels (model.kernel_backend=triton)
  ours+fla-kernels  the same LM on fla's chunk_delta_rule (model.kernel_backend=fla): the kernels alone differ
  fla               fla's DeltaNetForCausalLM at the same configuration (its fused norms, SwiGLU and loss)
each in a child process stopped after --timeout seconds (Triton compiles, and fla autotunes, on first use; the
--warmup steps absorb that and are not timed).

MFU = model FLOPs per token x tokens/s / the GPU's peak dense bf16 FLOP/s. Model FLOPs per token: 6 x the
parameters that multiply (all but the input embedding), plus per layer the chunked delta rule's forward + backward
FLOPs (bench/delta_rule.chunk_flops, chunk 64).

    python bench/gpu_training.py [--batch 8] [--seq-len 2048] [--steps 10] [--warmup 3] [--timeout 100]
                                 [--variants ours ours+fla-kernels fla] [--tiny]

--tiny runs a 2-layer, width-64 model at sequence 128 in fp32: a smoke test of the code path on CPU.
"""
import argparse
import dataclasses
import importlib
import os
import signal
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.delta_rule import chunk_flops  # noqa: E402
from bench.timing import child_rows  # noqa: E402

VARIANTS = ("ours", "ours+fla-kernels", "fla")
PAPER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "paper",
                     "deltanet_340m.yaml")
TINY = dict(hidden_size=64, num_layers=2, num_heads=2, vocab_size=512)
PEAK_BF16 = {"H200": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "A100": 312e12}  # dense, SXM unless named


def paper_model_config(tiny):
    """The 340M DeltaNet's ModelConfig (read from configs/paper/deltanet_340m.yaml), or a tiny one."""
    from trainer.config import load_config

    cfg = load_config(PAPER).model
    return dataclasses.replace(cfg, **TINY) if tiny else cfg


def flops_per_token(model, cfg, seq_len):
    """Training FLOPs per token: 6 x multiplying parameters + the delta rule's fwd+bwd per layer."""
    embedding = next(m for m in model.modules() if isinstance(m, torch.nn.Embedding)).weight
    # an untied input embedding is a lookup; tied, the same matrix multiplies in the LM head
    dense = sum(p.numel() for p in model.parameters()) - (0 if cfg.tie_embeddings else embedding.numel())
    head = cfg.key_dim // cfg.num_heads
    rule = chunk_flops(1, seq_len, cfg.num_heads, head, backward=True) / seq_len
    return 6 * dense + cfg.num_layers * rule


def build(variant, cfg, device):
    """(model, loss_fn(model, ids) -> loss) of a variant on device."""
    from model.lm import LanguageModel

    if variant == "fla":
        from fla.models import DeltaNetConfig, DeltaNetForCausalLM

        from model.export_native import native_config

        raw = {k: v for k, v in native_config(cfg, "fla").items() if k not in ("architectures", "model_type")}
        raw["fuse_cross_entropy"] = device.type == "cuda"  # fla's own training default, on the GPU only
        model = DeltaNetForCausalLM(DeltaNetConfig(**raw))
        # fla shifts the labels itself; the last position has no target
        return model.to(device), lambda m, ids: m(input_ids=ids[:, :-1], labels=ids[:, :-1]).loss
    backend = {"ours": "triton" if device.type == "cuda" else "torch", "ours+fla-kernels": "fla"}[variant]
    model = LanguageModel(dataclasses.replace(cfg, kernel_backend=backend))

    def loss_fn(m, ids):
        logits = m(ids[:, :-1])  # [B, T, V]
        return F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())

    return model.to(device), loss_fn


def peak_flops():
    """Dense bf16 FLOP/s of this GPU by name, or None."""
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((f for key, f in PEAK_BF16.items() if key in name), None)


def variant_child(shapes, variant, tiny, batch, steps, warmup):
    """In a child process: train `variant` for warmup + steps steps at each [seq_len] in shapes, emit tokens/s."""
    from bench.timing import emit

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = paper_model_config(tiny)
    torch.manual_seed(0)
    model, loss_fn = build(variant, cfg, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=device.type == "cuda")
    amp = torch.autocast("cuda", torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    for shape in shapes:
        seq_len = shape[0]
        ids = torch.randint(0, cfg.vocab_size, (batch, seq_len + 1), device=device)
        emit(shape=shape, started=time.time())

        def step():
            with amp:
                loss = loss_fn(model, ids)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return loss

        for _ in range(warmup):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for _ in range(steps):
            loss = step()
        final = loss.item()  # synchronises
        seconds = (time.perf_counter() - start) / steps
        tokens_per_s = batch * seq_len / seconds
        flops = flops_per_token(model, cfg, seq_len)
        peak = peak_flops()
        emit(shape=shape, step_ms=1e3 * seconds, tokens_per_s=tokens_per_s, flops_per_token=flops,
             mfu=flops * tokens_per_s / peak if peak else None, loss=final,
             params=sum(p.numel() for p in model.parameters()),
             peak_gb=torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == "cuda" else None)


def main(argv=None):
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--batch", type=int, default=8, help="sequences per step")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compiling, autotuning)")
    parser.add_argument("--timeout", type=float, default=100.0, help="seconds per variant, warm-up included")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--tiny", action="store_true", help="a tiny fp32 model: a CPU smoke test")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("TRITON_INTERPRET=1 is set: unset it to time the compiled kernels on the GPU")
    where = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU (no GPU: fp32, torch path)"
    print(f"training throughput, {where}: DeltaNet {'tiny' if args.tiny else '340M'}, batch {args.batch} x "
          f"{args.seq_len}, {'bf16 autocast' if torch.cuda.is_available() else 'fp32'}, AdamW; {args.warmup} "
          f"warm-up + {args.steps} timed steps; peak {peak_flops() or float('nan'):.3g} FLOP/s", flush=True)
    # run_child needs the function from its module, not from __main__
    child = importlib.import_module("bench.gpu_training").variant_child
    rows = []
    for variant in args.variants:
        rows += child_rows(child, args.timeout, variant, [[args.seq_len]], variant=variant, tiny=args.tiny,
                           batch=args.batch, steps=args.steps, warmup=args.warmup)
        row = rows[-1]
        if row.get("tokens_per_s"):
            mfu = f"{100 * row['mfu']:.1f}%" if row.get("mfu") else "-"
            peak = f"{row['peak_gb']:.1f} GB" if row.get("peak_gb") else "-"
            print(f"  {variant:>17}: {row['tokens_per_s']:>10,.0f} tokens/s  step {row['step_ms']:8.1f} ms  "
                  f"MFU {mfu:>6}  peak {peak}  ({row['params']:,} parameters, {row['flops_per_token']:.3g} "
                  f"FLOPs/token, loss {row['loss']:.3f})", flush=True)
        else:
            print(f"  {variant:>17}: - because {row.get('error')}", flush=True)
    by = {r["name"]: r.get("tokens_per_s") for r in rows}
    for peer in ("ours+fla-kernels", "fla"):
        if by.get("ours") and by.get(peer):
            print(f"ours / {peer}: {by['ours'] / by[peer]:.2f}x the tokens/s")
    return rows


if __name__ == "__main__":
    main()
