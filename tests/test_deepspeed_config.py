"""The DeepSpeed JSON gets our batch geometry, clipping and precision; a JSON that disagrees is refused."""
import json

import pytest
import torch

from trainer.config import ConfigError, load_config
from trainer.deepspeed_engine import build_ds_config

CPU = torch.device("cpu")


def config_with(tmp_path, ds_json, *overrides):
    path = tmp_path / "ds.json"
    path.write_text(ds_json if isinstance(ds_json, str) else json.dumps(ds_json))
    return load_config("configs/default.yaml", [f"train.deepspeed={path}", *overrides])


def test_our_values_are_written_in(tmp_path):
    cfg = config_with(tmp_path, {"zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": "auto"},
                      "train.micro_batch_size=3", "train.grad_accum_steps=5", "optim.grad_clip=0.5")
    ds = build_ds_config(cfg, world_size=4, device=CPU)
    assert ds["train_micro_batch_size_per_gpu"] == 3 and ds["gradient_accumulation_steps"] == 5
    assert ds["train_batch_size"] == 3 * 5 * 4
    assert ds["gradient_clipping"] == 0.5
    assert ds["bf16"] == {"enabled": False}  # fp32 on CPU
    assert ds["zero_optimization"] == {"stage": 2}
    assert build_ds_config(cfg, 1, torch.device("cuda"))["bf16"] == {"enabled": True}  # auto: bf16 on GPUs


@pytest.mark.parametrize("ds_json, message", [
    ({"train_micro_batch_size_per_gpu": 4}, "train_micro_batch_size_per_gpu=4 (ours: 8)"),
    ({"gradient_accumulation_steps": 2}, "gradient_accumulation_steps=2 (ours: 1)"),
    ({"train_batch_size": 64}, "train_batch_size=64 (ours: 16)"),
    ({"gradient_clipping": 0.3}, "gradient_clipping=0.3 (ours: 1.0)"),
    ({"bf16": {"enabled": True}}, "bf16.enabled=True (ours: False"),
    ({"optimizer": {"type": "AdamW"}}, "sets 'optimizer'; remove it: our config sets it through optim.*"),
    ({"scheduler": {"type": "WarmupLR"}}, "sets 'scheduler'"),
    ({"fp16": {"enabled": True}}, "fp16 loss scaling is not supported"),
    ("{not json", "is not valid JSON"),
    ("[1, 2]", "must hold a JSON object"),
])
def test_conflicting_or_broken_json_is_refused(tmp_path, ds_json, message):
    cfg = config_with(tmp_path, ds_json)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        build_ds_config(cfg, world_size=2, device=CPU)


def test_missing_json_names_the_shipped_ones():
    cfg = load_config("configs/default.yaml", ["train.deepspeed=configs/deepspeed/zero9.json"])
    with pytest.raises(ConfigError, match=r"no such file; use one of \[.*configs/deepspeed/zero2.json"):
        build_ds_config(cfg, world_size=1, device=CPU)


def test_shipped_configs_build_and_offload_keeps_our_optimizer_on_cpu():
    for stage in ("zero0", "zero1", "zero2", "zero3", "zero3_offload"):
        cfg = load_config("configs/default.yaml", [f"train.deepspeed=configs/deepspeed/{stage}.json"])
        ds = build_ds_config(cfg, world_size=2, device=CPU)
        assert ds["zero_optimization"]["stage"] == int(stage[4])
        assert ds.get("zero_force_ds_cpu_optimizer", True) is (stage != "zero3_offload")
