"""Checkpoint directories: atomic, verified, found through `latest`, rotated without losing the good one."""
import json
import random

import numpy as np
import pytest
import torch

from trainer import checkpoint as ckpt


def write(root, step, payload=b"weights"):
    def files(tmp):
        (tmp / "model.safetensors").write_bytes(payload)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "x.json").write_text("{}")
    return ckpt.write_checkpoint(root, step, tokens_seen=step * 10, write_files=files)


def test_write_verify_and_latest(tmp_path):
    first = write(tmp_path, 5)
    second = write(tmp_path, 10)
    assert (tmp_path / "latest").read_text().strip() == second.name == "step-00000010"
    manifest = ckpt.verify(second)
    assert manifest["step"] == 10 and manifest["tokens_seen"] == 100
    assert set(manifest["files"]) == {"model.safetensors", "sub/x.json"}
    assert ckpt.resolve(tmp_path) == second
    assert ckpt.resolve(tmp_path / "latest") == second
    assert ckpt.resolve(first) == first
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_corrupt_latest_falls_back_to_previous(tmp_path):
    first = write(tmp_path, 5)
    second = write(tmp_path, 10)
    (second / "model.safetensors").write_bytes(b"altered")
    messages = []
    assert ckpt.find_latest(tmp_path, log=messages.append) == first
    assert any("checksum" in m for m in messages) and any("using step-00000005" in m for m in messages)
    with pytest.raises(ckpt.CheckpointError, match="does not match its checksum"):
        ckpt.resolve(second)


def test_partial_checkpoint_is_never_used(tmp_path):
    first = write(tmp_path, 5)
    partial = tmp_path / "step-00000010"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half")
    assert ckpt.find_latest(tmp_path, log=lambda m: None) == first
    with pytest.raises(ckpt.CheckpointError, match="not a complete checkpoint"):
        ckpt.verify(partial)


def test_missing_paths_are_clear(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="does not exist"):
        ckpt.resolve(tmp_path / "nope")
    with pytest.raises(ckpt.CheckpointError, match="holds no checkpoint"):
        ckpt.resolve(tmp_path)


def test_rewriting_a_step_replaces_it(tmp_path):
    write(tmp_path, 5, b"old")
    path = write(tmp_path, 5, b"new")
    assert (path / "model.safetensors").read_bytes() == b"new"
    ckpt.verify(path)


def test_rotation_keeps_latest(tmp_path):
    for step in (1, 2, 3, 4):
        write(tmp_path, step)
    ckpt.rotate(tmp_path, keep_last_n=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-00000003", "step-00000004"]
    (tmp_path / "latest").write_text("step-00000003\n")  # latest may lag behind a newer, unverified dir
    ckpt.rotate(tmp_path, keep_last_n=1)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-00000003", "step-00000004"]


def test_rng_state_round_trip(tmp_path):
    state = ckpt.rng_state()
    torch.save(state, tmp_path / "rng.pt")
    expected = (torch.rand(3), random.random(), np.random.rand())
    ckpt.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert torch.equal(torch.rand(3), expected[0])
    assert random.random() == expected[1] and np.random.rand() == expected[2]


def test_manifest_is_json(tmp_path):
    path = write(tmp_path, 7)
    assert json.loads((path / "manifest.json").read_text())["format_version"] == ckpt.FORMAT_VERSION
