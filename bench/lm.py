"""Our Mamba layer and our LMs against the libraries users would otherwise run, forward + backward, fp32 on CPU.

- Mamba layer (issue 7, case 2): our mixer against transformers' `MambaMixer` with the same weights, B=2,
  d_inner=256, n=16. Without mamba_ssm, transformers runs its torch path: a token loop that indexes one time step
  per op, so its backward allocates a full-size gradient per step (quadratic in T).
- LM (case 3): our Mamba LM against transformers' `MambaForCausalLM` at the same configuration and weights
  (`model.mlp=false`, Mamba-1's block; allow_neg_eigval off, as transformers has no such switch), and our DeltaNet
  LM against fla's `DeltaNetForCausalLM`, whose Triton kernels need a GPU: on CPU its error is recorded.

Peers run in child processes stopped after a time limit; a shape stopped mid-measurement gets a lower bound.
"""
import time

import torch
import torch.nn.functional as F

from bench.timing import child_rows, emit, measure
from model.config import ModelConfig
from model.export_native import native_config, native_state_dict
from model.lm import LanguageModel
from model.mamba import Mamba

LAYER_B = 2
LAYER = dict(mixer="mamba", hidden_size=128, expand=2, state_size=16, mlp=False)  # d_inner = 256
LM_B = 1
LMS = {"mamba": dict(mixer="mamba", hidden_size=384, num_layers=9, mlp=False, vocab_size=4096),
       "deltanet": dict(mixer="deltanet", hidden_size=384, num_layers=5, num_heads=6, vocab_size=4096)}
PEERS = {"mamba": "transformers MambaForCausalLM", "deltanet": "fla DeltaNetForCausalLM"}


def _native(cfg, fmt):
    """The reference library's config kwargs for our ModelConfig (format "hf-mamba" or "fla")."""
    raw = native_config(cfg, fmt)
    return {k: v for k, v in raw.items() if k not in ("architectures", "model_type")}


def mamba_layers(**overrides):
    """(our Mamba mixer, transformers' MambaMixer with its weights); mixer parameter names are the same."""
    from transformers import MambaConfig
    from transformers.models.mamba.modeling_mamba import MambaMixer

    torch.manual_seed(0)
    cfg = ModelConfig(**{**LAYER, **overrides})
    ours = Mamba(cfg)
    theirs = MambaMixer(MambaConfig(**_native(cfg, "hf-mamba")), layer_idx=0)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def lms(mixer):
    """(our LM, the peer LM with the same weights, or None when the peer library is missing) at LMS[mixer]."""
    torch.manual_seed(0)
    cfg = ModelConfig(**LMS[mixer])
    ours = LanguageModel(cfg)
    if mixer == "mamba":
        from transformers import MambaConfig, MambaForCausalLM

        theirs = MambaForCausalLM(MambaConfig(**_native(cfg, "hf-mamba")))
    else:
        from fla.models import DeltaNetConfig, DeltaNetForCausalLM

        theirs = DeltaNetForCausalLM(DeltaNetConfig(**_native(cfg, "fla")))
    fmt = "hf-mamba" if mixer == "mamba" else "fla"
    missing, unexpected = theirs.load_state_dict(native_state_dict(ours, fmt), strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:  # the tied head is stored once
        raise RuntimeError(f"weights did not map: missing {missing}, unexpected {unexpected}")
    return ours, theirs


def layer_step(layer, B, T, hidden):
    """fwd+bwd closure of a mixer: y = layer(x), gradients of <y, dy> for x and every parameter."""
    g = torch.Generator().manual_seed(T)
    x = torch.randn(B, T, hidden, generator=g, requires_grad=True)
    dy = torch.randn(B, T, hidden, generator=g)
    params = [x, *layer.parameters()]

    def fwd_bwd():
        y = layer(x)
        torch.autograd.grad(y[0] if isinstance(y, tuple) else y, params, dy)

    return fwd_bwd


def lm_step(model, B, T, vocab):
    """fwd+bwd closure of an LM: next-token cross-entropy on random ids, gradients of every parameter."""
    ids = torch.randint(0, vocab, (B, T + 1), generator=torch.Generator().manual_seed(T))
    params = list(model.parameters())

    def fwd_bwd():
        logits = model(ids[:, :-1])
        logits = getattr(logits, "logits", logits)  # [B, T, V]
        torch.autograd.grad(F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten()), params)

    return fwd_bwd


def check_same_function(ours, theirs, x):
    """Raise unless ours and the peer agree on x (so the timed peer computes our function)."""
    with torch.no_grad():
        a, b = ours(x), theirs(x)
    a, b = (t[0] if isinstance(t, tuple) else getattr(t, "logits", t) for t in (a, b))
    err = ((a - b).norm() / b.norm()).item()
    if not err < 1e-4:
        raise RuntimeError(f"ours and the peer disagree (relative error {err:.2e}): not the same configuration")


def _row(shape, name, params, result):
    return dict(shape=tuple(shape), name=name, params=params, fwd_bwd=result["ms"], fwd_bwd_mb=result["mb"],
                n=result["n"])


def peer_layer_child(shapes, repeats, budget_s, threads):
    """In a child process: time transformers' MambaMixer at each [T] in shapes."""
    torch.set_num_threads(threads)
    for shape in shapes:
        _, theirs = mamba_layers()
        step = layer_step(theirs, LAYER_B, shape[0], LAYER["hidden_size"])
        emit(shape=shape, started=time.time())
        result = measure(step, repeats, budget_s)
        emit(**_row(shape, "transformers MambaMixer", sum(p.numel() for p in theirs.parameters()), result))


def peer_lm_child(shapes, mixer, repeats, budget_s, threads):
    """In a child process: time the peer LM of `mixer` at each [T]; a peer that cannot run records its error."""
    torch.set_num_threads(threads)
    _, theirs = lms(mixer)
    params = sum(p.numel() for p in theirs.parameters())
    for shape in shapes:
        step = lm_step(theirs, LM_B, shape[0], LMS[mixer]["vocab_size"])
        emit(shape=shape, started=time.time())
        try:
            result = measure(step, repeats, budget_s)
        except Exception as err:  # fla on CPU: Triton finds no GPU driver; that is the result to show
            first = (str(err).strip().splitlines() or [""])[0]
            emit(shape=shape, name=PEERS[mixer], params=params, error=f"{type(err).__name__}: {first[:160]}")
            continue
        emit(**_row(shape, PEERS[mixer], params, result))


def layer_rows(lengths, repeats=5, budget_s=60.0, peer_timeout=300.0):
    """Our Mamba mixer and transformers' MambaMixer, fwd+bwd at B=2, d_inner=256, n=16, each T in lengths."""
    threads = torch.get_num_threads()
    ours, theirs = mamba_layers()
    check_same_function(ours, theirs, torch.randn(LAYER_B, 64, LAYER["hidden_size"]))
    print(f"Mamba layer, CPU ({threads} threads): fp32, B={LAYER_B}, d_inner={ours.d_inner}, n={ours.state_size}; "
          f"ours vs transformers' MambaMixer (same weights; checked equal); fwd+bwd")
    rows = []
    for T in lengths:
        rows.append(_row((T,), "ours Mamba layer", sum(p.numel() for p in ours.parameters()),
                         measure(layer_step(ours, LAYER_B, T, LAYER["hidden_size"]), repeats, budget_s)))
        print_row(rows[-1])
    print(f"transformers' MambaMixer: in a child process (at most {peer_timeout:.0f} s)", flush=True)
    rows += child_rows(peer_layer_child, peer_timeout, "transformers MambaMixer", [[T] for T in lengths],
                       repeats=repeats, budget_s=budget_s, threads=threads)
    for row in rows[len(lengths):]:
        print_row(row)
    return rows


def lm_rows(lengths, repeats=5, budget_s=60.0, peer_timeout=300.0, mixers=("mamba", "deltanet")):
    """Our LMs and their peers, fwd+bwd of the loss at B=1 and each T in lengths; returns the rows."""
    threads = torch.get_num_threads()
    rows = []
    for mixer in mixers:
        ours, theirs = lms(mixer)
        params = (ours.num_params(), sum(p.numel() for p in theirs.parameters()))
        if mixer == "mamba":
            check_same_function(ours, theirs, torch.randint(0, LMS[mixer]["vocab_size"], (LM_B, 64)))
        print(f"{mixer} LM, CPU ({threads} threads): fp32, B={LM_B}, {LMS[mixer]}; parameters: ours {params[0]:,}, "
              f"{PEERS[mixer]} {params[1]:,}", flush=True)
        del theirs
        for T in lengths:
            rows.append(_row((T,), f"ours {mixer} LM", params[0],
                             measure(lm_step(ours, LM_B, T, LMS[mixer]["vocab_size"]), repeats, budget_s)))
            print_row(rows[-1])
        print(f"{PEERS[mixer]}: in a child process (at most {peer_timeout:.0f} s)", flush=True)
        peer = child_rows(peer_lm_child, peer_timeout, PEERS[mixer], [[T] for T in lengths], mixer=mixer,
                          repeats=repeats, budget_s=budget_s, threads=threads)
        for row in peer:
            print_row(row)
        rows += peer
    return rows


def print_row(row):
    """One measured row as it comes."""
    if row.get("fwd_bwd"):
        mb = f"{row['fwd_bwd_mb']:.0f} MB" if row.get("fwd_bwd_mb") is not None else "- MB"
        print(f"  T={row['shape'][0]:>5} {row['name']:>30}  fwd+bwd {row['fwd_bwd']:10.1f} ms (n={row['n']})  "
              f"peak {mb}", flush=True)
    else:
        print(f"  T={row['shape'][0]:>5} {row['name']:>30}  - because {row.get('error')}", flush=True)
