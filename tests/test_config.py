"""Config loading: every shipped YAML parses, the contract keys exist, and bad input gets a clear error."""
from pathlib import Path

import pytest
import yaml

from trainer.config import ConfigError, load_config, save_config, valid_keys

ROOT = Path(__file__).resolve().parent.parent
GRIDS = sorted((ROOT / "configs/state_tracking/grids").glob("*.yaml"))
TRAINING_CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if p not in GRIDS)

CONTRACT_KEYS = ["seed", "out_dir", "model.mixer", "model.allow_neg_eigval", "model.hidden_size",
                 "model.num_layers", "model.num_heads", "model.vocab_size", "train.max_steps",
                 "train.stop_at_step", "train.micro_batch_size", "train.grad_accum_steps", "train.seq_len",
                 "train.lr", "train.warmup_steps", "train.log_every", "train.save_every", "train.resume",
                 "train.deepspeed"]


def test_contract_keys_exist():
    keys = set(valid_keys())
    assert not [k for k in CONTRACT_KEYS if k not in keys]


@pytest.mark.parametrize("path", TRAINING_CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_every_config_loads(path, tmp_path):
    cfg = load_config(path)
    save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml") == cfg  # the resolved file reproduces the run


def test_paper_configs_differ_only_in_eigenvalue_range():
    base = load_config(ROOT / "configs/paper/deltanet_340m.yaml")
    neg = load_config(ROOT / "configs/paper/deltanet_340m_neg.yaml")
    assert not base.model.allow_neg_eigval and neg.model.allow_neg_eigval
    neg.model.allow_neg_eigval = False
    neg.out_dir = base.out_dir
    assert neg == base


def test_overrides_and_types():
    cfg = load_config(ROOT / "configs/default.yaml",
                      ["model.mixer=mamba", "train.max_steps=100", "train.lr=1e-4", "model.allow_neg_eigval=false",
                       "train.stop_at_step=null"])
    assert cfg.model.mixer == "mamba" and cfg.train.max_steps == 100
    assert cfg.train.lr == pytest.approx(1e-4) and cfg.model.allow_neg_eigval is False
    assert cfg.train.stop_at_step is None


@pytest.mark.parametrize("override, message", [
    ("model.hiden_size=128", "model.hiden_size: unknown key; did you mean model.hidden_size?"),
    ("trian.max_steps=3", "did you mean train.max_steps?"),
    ("train.max_steps=-5", "train.max_steps=-5 must be a positive integer"),
    ("train.max_steps=ten", "train.max_steps='ten' has the wrong type: expected int"),
    ("model.allow_neg_eigval=maybe", "expected bool"),
    ("train.stop_at_step=0", "train.stop_at_step=0 must be in [1, train.max_steps="),
    ("optim.schedule=linear", "choose cosine, wsd or constant"),
    ("train.lr", "is not of the form dotted.key=value"),
])
def test_bad_values_say_what_is_wrong(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(ROOT / "configs/default.yaml", [override])
    assert message in str(info.value)


def test_heads_must_divide_width():
    with pytest.raises(ConfigError, match="num_heads"):
        load_config(None, ["model.hidden_size=100", "model.num_heads=3"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(listy)


def test_base_inheritance_and_cycles(tmp_path):
    (tmp_path / "a.yaml").write_text(yaml.safe_dump({"seed": 3, "model": {"hidden_size": 64, "num_heads": 2}}))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump({"base": "a.yaml", "model": {"num_layers": 1}}))
    cfg = load_config(tmp_path / "b.yaml")
    assert (cfg.seed, cfg.model.hidden_size, cfg.model.num_heads, cfg.model.num_layers) == (3, 64, 2, 1)
    (tmp_path / "c.yaml").write_text("base: d.yaml\n")
    (tmp_path / "d.yaml").write_text("base: c.yaml\n")
    with pytest.raises(ConfigError, match="circular"):
        load_config(tmp_path / "c.yaml")


@pytest.mark.parametrize("path", GRIDS, ids=lambda p: p.name)
def test_every_grid_expands_to_valid_runs(path):
    from eval.grid import load_grid

    _, runs = load_grid(path)
    assert runs and len({r.out_dir for r in runs}) == len(runs)  # every run has its own directory
    for run in runs:
        load_config(run.config, [*run.overrides, f"train.lr={run.lr}", f"seed={run.seed}"])


def test_errors_inside_a_list_of_sources_name_the_entry():
    with pytest.raises(ConfigError, match=r"data\.mixture\[0\]\.weight='abc' has the wrong type: expected float"):
        load_config("configs/examples/mixture.yaml",
                    ['data.mixture=[{name: a, dataset: "embedded:code", weight: abc}]'])
    with pytest.raises(ConfigError, match=r"data\.mixture\[0\]\.datset: unknown key; "
                                          r"did you mean data\.mixture\[0\]\.dataset\?"):
        load_config("configs/examples/mixture.yaml", ["data.mixture=[{name: a, datset: x}]"])
