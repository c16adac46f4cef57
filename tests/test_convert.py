"""Import: `python -m model.convert` turns transformers Mamba and fla DeltaNet folders (built here with random
weights by the libraries themselves) into checkpoints of ours with the libraries' logits; ours -> native -> ours
is identical; what our model cannot compute is refused."""
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_export_native import TOL, VOCAB, fla_on_cpu, perturb, rel_rms, tiny, token_ids  # noqa: F401

from data.tokenizer import load_tokenizer
from model import from_checkpoint
from model.convert import convert, import_native, main
from model.export_native import CONFIG_FILE, WEIGHTS_FILE, export_native
from trainer.config import load_config

ROOT = Path(__file__).resolve().parent.parent
WORDS = ["<unk>", "</s>", "the", "cat", "sat", "on", "a", "mat"]


def write_tokenizer(directory):
    """A word-level Hugging Face tokenizer saved as a published model folder holds it."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="</s>").save_pretrained(directory)


def fla_source(directory, **overrides):
    from fla.models import DeltaNetConfig, DeltaNetForCausalLM

    config = DeltaNetConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_heads=2,
                            fuse_cross_entropy=False, **overrides)
    model = perturb(DeltaNetForCausalLM(config).eval())
    model.save_pretrained(directory)
    return model


@pytest.mark.parametrize("overrides", [
    {},
    {"allow_neg_eigval": True, "use_gate": True, "tie_word_embeddings": True, "expand_k": 0.5, "hidden_ratio": 2},
])
def test_fla_deltanet_import_gives_fla_logits(fla_on_cpu, tmp_path, capsys, overrides):
    theirs = fla_source(tmp_path / "src", **overrides)
    main(["--from", "fla-deltanet", str(tmp_path / "src"), "--out", str(tmp_path / "ours")])
    ours = from_checkpoint(tmp_path / "ours")
    assert ours.config.allow_neg_eigval is overrides.get("allow_neg_eigval", False)
    ids = token_ids()
    with torch.no_grad():
        assert rel_rms(ours(ids), theirs(ids).logits) < TOL
    assert "note: " in capsys.readouterr().out  # no tokenizer files in the source: the user is told


def test_hf_mamba_import_gives_transformers_logits_and_continues_with_the_switch(tmp_path, capsys):
    from transformers import AutoTokenizer, MambaConfig, MambaForCausalLM

    src, out, out_neg = tmp_path / "src", tmp_path / "ours", tmp_path / "ours_neg"
    # time steps up to 1 spread the decays over (0, 1), so the switch visibly changes the function
    theirs = perturb(MambaForCausalLM(MambaConfig(vocab_size=VOCAB, hidden_size=32, state_size=8, num_hidden_layers=2,
                                                  time_step_min=0.1, time_step_max=1.0)).eval())
    theirs.save_pretrained(src, max_shard_size="40KB")
    assert (src / "model.safetensors.index.json").is_file()  # read shard by shard
    write_tokenizer(src)
    main(["--from", "hf-mamba", str(src), "--out", str(out)])
    ours = from_checkpoint(out)
    ids = token_ids()
    with torch.no_grad():
        assert rel_rms(ours(ids), theirs(ids).logits) < TOL

    checkpoint = out / "step-00000000"
    command = capsys.readouterr().out.strip().splitlines()[-1].strip()
    assert command == (f"python train.py --config {checkpoint}/config.yaml train.init_from={out} "
                       f"model.allow_neg_eigval=true out_dir=runs/ours")
    cfg = load_config(checkpoint / "config.yaml", ["model.allow_neg_eigval=true"])  # what that command reads
    assert cfg.model == dataclasses.replace(ours.config, allow_neg_eigval=True)
    tokenizer = load_tokenizer(cfg.data)  # the copied tokenizer
    reference = AutoTokenizer.from_pretrained(src)
    assert tokenizer.encode("the cat sat on a mat") == reference.encode("the cat sat on a mat",
                                                                       add_special_tokens=False) == [2, 3, 4, 5, 6, 7]
    assert tokenizer.eos_id == 1

    main(["--from", "hf-mamba", str(src), "--out", str(out_neg), "--allow-neg-eigval"])
    neg = from_checkpoint(out_neg)
    assert neg.config == dataclasses.replace(ours.config, allow_neg_eigval=True)
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), neg.state_dict().values()))
    with torch.no_grad():  # same weights, decays now 2 exp(delta A) - 1
        assert rel_rms(neg(ids), ours(ids)) > 1e-2


@pytest.mark.parametrize("fmt,source,mixer,overrides", [
    ("fla", "fla-deltanet", "deltanet", {"allow_neg_eigval": True, "use_output_gate": True, "tie_embeddings": False}),
    ("fla", "fla-deltanet", "deltanet", {"use_short_conv": False, "intermediate_size": 48, "expand_k": 0.5}),
    ("hf-mamba", "hf-mamba", "mamba", {"dt_rank": 3, "mamba_conv_bias": False, "norm_eps": 1e-5}),
    ("hf-mamba", "hf-mamba", "mamba", {"tie_embeddings": False, "dt_min": 0.01, "dt_max": 0.2}),
])
def test_ours_to_native_to_ours_is_identical(tmp_path, fmt, source, mixer, overrides):
    ours = tiny(mixer, **overrides)
    export_native(ours, tmp_path, fmt)
    back = import_native(tmp_path, source)
    assert back.config == ours.config
    a, b = ours.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("source,config,message", [
    ("fla-deltanet", {"qk_norm": "sum"}, r"qk_norm='sum' has no equivalent in our model \(it computes qk_norm='l2'"),
    ("fla-deltanet", {"qk_activation": "relu"}, r"qk_activation='relu' has no equivalent"),
    ("fla-deltanet", {"use_beta": False}, r"use_beta=False has no equivalent"),
    ("fla-deltanet", {"attn": {"layers": [1], "num_heads": 2}}, r"attn=\{.*\} has no equivalent"),
    ("fla-deltanet", {"hidden_ratio": 2.5}, r"hidden_ratio=2.5 is not a whole number; set intermediate_size"),
    ("hf-mamba", {"use_bias": True}, r"use_bias=True has no equivalent"),
    ("hf-mamba", {"hidden_act": "gelu"}, r"hidden_act='gelu' has no equivalent"),
    ("hf-mamba", {"model_type": "delta_net"},
     r"model_type='delta_net' but --from hf-mamba reads model_type='mamba'; use --from fla-deltanet"),
    ("hf-mamba", {"model_type": "mamba2"}, r"model_type='mamba2' but --from hf-mamba reads model_type='mamba'$"),
])
def test_import_refuses_what_our_model_cannot_compute(tmp_path, source, config, message):
    model_type = {"fla-deltanet": "delta_net", "hf-mamba": "mamba"}[source]
    (tmp_path / CONFIG_FILE).write_text(json.dumps({"model_type": model_type, **config}))
    with pytest.raises(ValueError, match=message):
        import_native(tmp_path, source)


def test_import_checks_the_weights_fit(tmp_path):
    export_native(tiny("mamba"), tmp_path, "hf-mamba")
    weights = load_file(tmp_path / WEIGHTS_FILE)
    torch.save(weights, tmp_path / "pytorch_model.bin")
    (tmp_path / WEIGHTS_FILE).unlink()
    import_native(tmp_path, "hf-mamba")  # the older file format reads too

    def refused(state, message):
        save_file(state, str(tmp_path / WEIGHTS_FILE))
        with pytest.raises(ValueError, match=message):
            import_native(tmp_path, "hf-mamba")

    refused({**weights, "backbone.layers.0.attn_res_proj.weight": torch.zeros(1, 32)},
            r"missing \[\], not convertible \['backbone.layers.0.attn_res_proj.weight'\]")
    refused({k: v for k, v in weights.items() if k != "backbone.norm_f.weight"},
            r"missing \['norm.weight'\], not convertible \[\]")
    refused({**weights, "backbone.norm_f.weight": torch.ones(31)}, r"'norm.weight': \(\(31,\), \(32,\)\)")
    refused({**weights, "lm_head.weight": weights["backbone.embeddings.weight"] + 1},
            "tie_word_embeddings is true but lm_head.weight differs")
    (tmp_path / WEIGHTS_FILE).unlink()
    (tmp_path / "pytorch_model.bin").unlink()
    with pytest.raises(ValueError, match="has no weights: expected model.safetensors"):
        import_native(tmp_path, "hf-mamba")
    (tmp_path / CONFIG_FILE).unlink()
    with pytest.raises(ValueError, match="has no config.json; --from hf-mamba expects a folder written by"):
        import_native(tmp_path, "hf-mamba")


def test_convert_never_writes_into_a_used_directory(tmp_path):
    export_native(tiny("mamba"), tmp_path / "src", "hf-mamba")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="already exists and is not an empty directory; choose a new path"):
        convert("hf-mamba", tmp_path / "src", tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]


def test_cli_reports_errors_without_a_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "model.convert", "--from", "hf-mamba", str(tmp_path / "none"),
                             "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "error: " in result.stderr and "has no config.json" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()
