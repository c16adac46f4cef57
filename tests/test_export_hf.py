"""Hugging Face export (python -m model.export): the exported model reproduces ours (logits, greedy generation,
left padding) for every mixer and both eigenvalue ranges, loads in a process that cannot import this repository,
carries a tokenizer with SentencePiece's ids, re-exports byte for byte, and refuses bad inputs clearly."""
import ast
import json
import subprocess
import sys

import pytest
import torch

from data.tokenizer import SentencePieceTokenizer
from model import from_checkpoint
from model.export import main as export_main
from model.export import write_folder
from model.hf.convert import REMOTE_CODE
from model.hf.modeling_lrnn import LRNNForCausalLM
from trainer.checkpoint import resolve

from export_helpers import ROOT, random_model, rms_rel, run_outside_repo, tiny_checkpoint

# Varied text for tokenizer parity: code with tabs and blank lines, unicode (accents, CJK, emoji, RTL, combining
# marks, SentencePiece's own space marker), runs of spaces, digits, control characters, and the special pieces'
# spellings, which SentencePiece reads as plain text (a Hugging Face tokenizer matches them unless told not to).
TEXTS = [
    "def f(x):\n    return x ** 2  # square\n\n\n\tif x:\n\t\tpass\r\n",
    "Héllo wörld — naïve café; 日本語のテキスト; 😀🚀; مرحبا; e\u0301; ▁marker",
    "   leading and trailing spaces   ", "a  b   c    d", "1234567890 + 0.5 = 1234567890.5", "",
    "\x00\x07 control \u200b zero-width", "class A:\n    '''Doc.'''\n    x: int = 3\n",
    "special pieces as text: <s> </s> <unk> states_<s>[<t>]",
]
# fp32 throughout: the port groups the same sums differently (chunk loop, token loop, padded rows), measured
# 1e-7 to 8e-7 relative RMS; a wrong eigenvalue range, a lost state or an unmasked pad gives 1e-2 or more.
TOL = 1e-5
FRESH_SCRIPT = r"""
import importlib.util, json, sys, torch
blocked = [name for name in ("model", "kernels", "trainer", "data") if importlib.util.find_spec(name) is not None]
assert not blocked, f"the repository is importable here: {blocked}"
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, out = sys.argv[1], sys.argv[2]
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, use_safetensors=True).eval()
tok = AutoTokenizer.from_pretrained(folder)
texts = json.loads(sys.argv[3])
prompt = tok(["def add(a, b):\n    return", "x"], return_tensors="pt", padding=True)
ids = prompt["input_ids"][:1]
with torch.no_grad():
    result = {
        "class": type(model).__module__,
        "ids": [tok.encode(t, add_special_tokens=False) for t in texts],
        "decoded": [tok.decode(tok.encode(t, add_special_tokens=False)) for t in texts],
        "prompt": ids, "logits": model(ids).logits,
        "greedy": model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, do_sample=False),
        "padded": model.generate(**prompt, max_new_tokens=10, do_sample=False),
        "alone": model.generate(**tok(["x"], return_tensors="pt"), max_new_tokens=10, do_sample=False),
    }
    torch.manual_seed(0)
    result["sampled"] = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=7,
                                       do_sample=True, top_k=20, temperature=0.8)
torch.save(result, out)
"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    return tiny_checkpoint(root / "cache", root / "run", "model.mixer=deltanet", "model.allow_neg_eigval=true")


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("exported") / "hf"
    done = subprocess.run([sys.executable, "-m", "model.export", "--checkpoint", str(run_dir), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return out


def export_random(model, tmp_path):
    write_folder(model, tmp_path / "no-tokenizer", tmp_path)
    return LRNNForCausalLM.from_pretrained(tmp_path).eval()


@pytest.mark.parametrize("mixer,neg,overrides", [
    ("deltanet", False, {}), ("deltanet", True, {}), ("mamba", False, {}), ("mamba", True, {}),
    ("attention", False, {}), ("lstm", False, {}),
    ("deltanet", True, dict(use_output_gate=True, use_short_conv=False, tie_embeddings=False, expand_v=2.0)),
])
def test_logits_equal_ours(mixer, neg, overrides, tmp_path):
    ours = random_model(mixer, neg, **overrides)
    hf = export_random(ours, tmp_path)
    loaded = hf.state_dict()
    for name, tensor in ours.state_dict().items():
        assert torch.equal(loaded[name if name == "lm_head.weight" else f"model.{name}"], tensor), name
    ids = torch.randint(0, 64, (2, 150))  # 150 tokens: three delta-rule chunks of 64, the last partial
    with torch.no_grad():
        assert rms_rel(hf(ids).logits, ours(ids)) < TOL


@pytest.mark.parametrize("mixer", ["deltanet", "mamba"])
def test_repository_kernel_path_agrees(mixer, tmp_path, monkeypatch):
    """The branch CUDA takes when this repository's kernels are importable, run here on CPU (where they dispatch
    to their torch paths): same arguments and results as the file's own torch code."""
    from model.hf import modeling_lrnn

    hf = export_random(random_model(mixer, True), tmp_path)
    ids = torch.randint(0, 64, (2, 100))
    with torch.no_grad():
        own = hf(ids[:, :90], use_cache=True)
        own_logits = torch.cat([own.logits, hf(ids[:, 90:], cache=own.cache).logits], 1)
        monkeypatch.setattr(modeling_lrnn, "use_repo_kernels", lambda x: True)
        repo = hf(ids[:, :90], use_cache=True)
        repo_logits = torch.cat([repo.logits, hf(ids[:, 90:], cache=repo.cache).logits], 1)
    assert rms_rel(repo_logits, own_logits) < TOL


@pytest.mark.parametrize("mixer,neg", [("deltanet", True), ("mamba", True), ("mamba", False), ("attention", False),
                                       ("lstm", False)])
def test_generate_and_left_padding(mixer, neg, tmp_path):
    # untied head: with tied N(0, 1) embeddings every token would mostly predict itself, whatever the mixer did
    ours = random_model(mixer, neg, tie_embeddings=False)
    hf = export_random(ours, tmp_path)
    ids = torch.randint(3, 64, (2, 9))
    with torch.no_grad():
        out = hf(ids[:, :6], use_cache=True)
        steps = [out.logits]
        for t in range(6, 9):  # one token at a time from the cache equals the full forward
            steps.append(hf(ids[:, t:t + 1], cache=out.cache, use_cache=True).logits)
        assert rms_rel(torch.cat(steps, 1), hf(ids).logits) < TOL
        greedy = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False)
        assert torch.equal(greedy, ours.generate(ids, max_new_tokens=12))
        # row 1 is row 0's last 5 tokens behind 4 pads: its continuation must be that of the 5 tokens alone
        short = ids[:1, 4:]
        batch = torch.cat([ids[:1], torch.cat([torch.zeros(1, 4, dtype=torch.long), short], 1)])
        mask = torch.ones_like(batch)
        mask[1, :4] = 0
        assert rms_rel(hf(batch, attention_mask=mask).logits[1, 4:], hf(short).logits[0]) < TOL
        padded = hf.generate(batch, attention_mask=mask, max_new_tokens=12, do_sample=False)
        assert torch.equal(padded[0], greedy[0])
        assert torch.equal(padded[1, 9:], ours.generate(short, max_new_tokens=12)[0, 5:])
        torch.manual_seed(0)
        sampled = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=7, do_sample=True, top_k=10)
        assert sampled.shape == (2, 16) and torch.equal(sampled[:, :9], ids)


def test_fresh_process_loads_and_matches(run_dir, exported, tmp_path):
    done = run_outside_repo(FRESH_SCRIPT, str(exported), str(tmp_path / "result.pt"), json.dumps(TEXTS),
                            cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = torch.load(tmp_path / "result.pt", weights_only=True)
    assert result["class"].startswith("transformers_modules.")  # the remote-code copy, not model.hf
    ours = from_checkpoint(run_dir)
    tokenizer = SentencePieceTokenizer.from_file(resolve(run_dir) / "tokenizer/tokenizer.model")
    assert result["ids"] == [tokenizer.encode(t) for t in TEXTS]
    assert result["decoded"] == [tokenizer.decode(tokenizer.encode(t)) for t in TEXTS]
    ids = result["prompt"]
    assert ids.tolist()[0] == tokenizer.encode("def add(a, b):\n    return")
    with torch.no_grad():
        assert rms_rel(result["logits"], ours(ids)) < TOL
        assert torch.equal(result["greedy"], ours.generate(ids, max_new_tokens=10, eos_id=tokenizer.eos_id))
    assert torch.equal(result["padded"][0], result["greedy"][0])
    width = ids.shape[1]
    assert torch.equal(result["padded"][1, width:], result["alone"][0, 1:])
    assert result["sampled"].shape[1] <= width + 7 and torch.equal(result["sampled"][:, :width], ids)


def test_folder_contents_and_byte_identical_reexport(run_dir, exported, tmp_path):
    files = sorted(p.name for p in exported.iterdir())
    assert files == sorted(["config.json", "generation_config.json", "model.safetensors", *REMOTE_CODE,
                            "tokenizer.json", "tokenizer_config.json"])
    config = json.loads((exported / "config.json").read_text())
    assert list(config) == sorted(config)
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_lrnn.LRNNForCausalLM"
    assert config["mixer"] == "deltanet" and config["allow_neg_eigval"] is True
    for name in REMOTE_CODE:  # only our modeling code, importing only torch, transformers and each other
        source = (exported / name).read_text()
        assert source == (ROOT / "model/hf" / name).read_text()
        tree = ast.parse(source)
        guarded = {id(n) for t in ast.walk(tree) if isinstance(t, ast.Try) for n in ast.walk(t)}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and id(node) not in guarded:
                assert node.module.split(".")[0] in ("__future__", "torch", "transformers"), node.module
            if isinstance(node, ast.Import) and id(node) not in guarded:
                assert all(a.name.split(".")[0] in ("torch", "transformers") for a in node.names)
    again = tmp_path / "again"
    assert export_main(["--checkpoint", str(run_dir), "--out", str(again)]) == 0
    assert sorted(p.name for p in again.iterdir()) == files
    for name in files:
        assert (again / name).read_bytes() == (exported / name).read_bytes(), name


def test_hf_tokenizer_is_copied_as_is(exported, tmp_path):
    source = tmp_path / "hf_tokenizer"
    source.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (source / name).write_bytes((exported / name).read_bytes())
    out = tmp_path / "out"
    out.mkdir()
    write_folder(random_model("mamba"), source, out)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (out / name).read_bytes() == (source / name).read_bytes()
    config = json.loads((out / "config.json").read_text())
    assert (config["eos_token_id"], config["bos_token_id"]) == (2, 1)  # the embedded SentencePiece model's ids


def one_line_error(capsys, argv):
    assert export_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


def test_bad_inputs(run_dir, tmp_path, capsys):
    err = one_line_error(capsys, ["--checkpoint", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert "does not exist" in err and not (tmp_path / "o").exists()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    (busy / "config.json").write_text("{}")
    err = one_line_error(capsys, ["--checkpoint", str(run_dir), "--out", str(busy)])
    assert "--force" in err and (busy / "config.json").read_text() == "{}"
    err = one_line_error(capsys, ["--checkpoint", str(run_dir), "--out", str(resolve(run_dir) / "hf"), "--force"])
    assert "inside the checkpoint" in err
    assert export_main(["--checkpoint", str(run_dir), "--out", str(busy), "--force"]) == 0
    assert "notes.txt" in capsys.readouterr().err  # said that it kept the user's file
    assert (busy / "notes.txt").read_text() == "mine" and json.loads((busy / "config.json").read_text())["mixer"]
    assert not [p for p in tmp_path.iterdir() if "export-tmp" in p.name]
