"""DeepSpeed ZeRO (stages 0-3, optional CPU optimizer offload): the only module that imports deepspeed.

Our config is the single source of truth for micro batch, accumulation, clipping and precision: they are written
into the DeepSpeed JSON the user names (`train.deepspeed`), and a JSON that says otherwise is an error. The
optimizer is our AdamW with our parameter groups and the schedule is ours, handed to DeepSpeed as client objects
(a JSON "optimizer" of type AdamW would JIT-compile FusedAdam, and two sources of truth would drift).
Checkpoints hold DeepSpeed's own engine checkpoint under `deepspeed/`; `consolidated_state_dict` turns any stage
into one fp32 state dict.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
from pathlib import Path

import torch

from .checkpoint import CheckpointError
from .config import ConfigError
from .distributed import DistContext
from .errors import TrainingError
from .optim import build_optimizer, build_scheduler

TAG = "deepspeed"  # the engine checkpoint's sub-directory inside our step-XXXXXXXX directory
REPO_ROOT = Path(__file__).resolve().parent.parent
# keys the JSON must not set (we build these objects ourselves), and what to set instead
_FORBIDDEN = {"optimizer": "optim.* and train.lr", "scheduler": "optim.schedule and train.warmup_steps",
              "fp16": "train.precision (bf16 or fp32; fp16 loss scaling is not supported)",
              "amp": "train.precision"}


def resolve_config_path(name: str) -> Path:
    """A DeepSpeed JSON path as given, or relative to the repository (so configs/deepspeed/... works anywhere)."""
    for candidate in (Path(name).expanduser(), REPO_ROOT / name):
        if candidate.is_file():
            return candidate
    shipped = sorted(str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "configs" / "deepspeed").glob("*.json"))
    raise ConfigError(f"train.deepspeed={name!r}: no such file; use one of {shipped} or a path to your own JSON")


def uses_bf16(cfg, device: torch.device) -> bool:
    precision = cfg.train.precision
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


def build_ds_config(cfg, world_size: int, device: torch.device) -> dict:
    """The user's DeepSpeed JSON with our batch geometry, clipping and precision written in; conflicts raise."""
    path = resolve_config_path(cfg.train.deepspeed)
    try:
        user = json.loads(path.read_text())
    except ValueError as err:
        raise ConfigError(f"train.deepspeed={str(path)!r} is not valid JSON: {err}") from None
    if not isinstance(user, dict):
        raise ConfigError(f"train.deepspeed={str(path)!r} must hold a JSON object")
    for key, instead in _FORBIDDEN.items():
        if key in user and not (key in ("fp16", "amp") and not user[key].get("enabled", False)):
            raise ConfigError(f"{path} sets {key!r}; remove it: our config sets it through {instead}")
    train = cfg.train
    ours = {
        "train_micro_batch_size_per_gpu": train.micro_batch_size,
        "gradient_accumulation_steps": train.grad_accum_steps,
        "train_batch_size": train.micro_batch_size * train.grad_accum_steps * world_size,
        "gradient_clipping": cfg.optim.grad_clip,
    }
    bf16 = uses_bf16(cfg, device)
    conflicts = [f"{key}={user[key]!r} (ours: {value!r})" for key, value in ours.items()
                 if key in user and user[key] != "auto" and user[key] != value]
    user_bf16 = user.get("bf16", {}).get("enabled", bf16)
    if user_bf16 != "auto" and bool(user_bf16) != bf16:
        conflicts.append(f"bf16.enabled={user_bf16!r} (ours: {bf16}, from train.precision={train.precision!r} on "
                         f"{device.type})")
    if conflicts:
        raise ConfigError(
            f"{path} disagrees with our config: {'; '.join(conflicts)}. Our config is the source of truth for "
            f"batch size, accumulation, clipping and precision: delete these keys from the JSON (or set them to "
            f"\"auto\") and set train.micro_batch_size, train.grad_accum_steps, optim.grad_clip, train.precision")
    merged = {**user, **ours, "bf16": {**user.get("bf16", {}), "enabled": bf16}}
    merged.setdefault("steps_per_print", 1 << 30)  # our metrics log the loss; DeepSpeed's own printing is noise
    merged.setdefault("wall_clock_breakdown", False)
    if _offloads_optimizer(merged) and device.type != "cuda":
        merged["zero_force_ds_cpu_optimizer"] = False  # on CPU our torch AdamW already runs where it would offload
    return merged


def _offloads_optimizer(ds_config: dict) -> bool:
    offload = ds_config.get("zero_optimization", {}).get("offload_optimizer") or {}
    return offload.get("device", "none") not in ("none", None)


class DeepSpeedEngine:
    """Same interface as engine.PlainEngine, on a DeepSpeed engine."""

    def __init__(self, cfg, model: torch.nn.Module, ctx: DistContext):
        import deepspeed

        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
        ds_config = build_ds_config(cfg, ctx.world_size, ctx.device)
        self.ctx = ctx
        self.stage = ds_config.get("zero_optimization", {}).get("stage", 0)
        if _offloads_optimizer(ds_config) and ctx.device.type == "cuda":
            from deepspeed.ops.adam import DeepSpeedCPUAdam
            from .optim import param_groups

            optimizer = DeepSpeedCPUAdam(param_groups(model, cfg.optim.weight_decay), lr=cfg.train.lr,
                                         betas=(cfg.optim.beta1, cfg.optim.beta2), eps=cfg.optim.eps,
                                         adamw_mode=True)
        else:
            optimizer = build_optimizer(model, cfg.optim, cfg.train.lr)

        def schedule(opt):  # built by DeepSpeed on its wrapped optimizer
            return build_scheduler(opt, cfg.optim, cfg.train.warmup_steps, cfg.train.max_steps)

        self.model, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model.to(ctx.device), optimizer=optimizer, lr_scheduler=schedule, config=ds_config,
            dist_init_required=False)
        self.module = self.model.module
        self.manages_precision = True  # bf16 weights with fp32 masters: no autocast on top

    def micro_batch(self, last: bool):
        return contextlib.nullcontext()  # DeepSpeed skips the reduction until the accumulation boundary itself

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model(inputs)

    def backward(self, loss: torch.Tensor) -> None:
        self.model.backward(loss)  # DeepSpeed divides by the accumulation steps
        if not self.model.is_gradient_accumulation_boundary():
            self.model.step()  # only counts the micro-batch

    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def step(self) -> tuple[float, bool]:
        """(gradient norm, whether the update was applied). ZeRO 1-3 skip the update and the schedule on a
        non-finite norm themselves; stage 0 cannot skip (it would apply NaN), so there it stops the run."""
        norm = None
        if self.stage == 0:  # DeepSpeed clips stage-0 gradients without keeping the norm; they are whole here
            norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(), float("inf")).item()
            if not math.isfinite(norm):
                raise TrainingError(f"non-finite gradient norm ({norm}) under ZeRO stage 0, which cannot skip an "
                                    f"update; the weights were not changed. Resume from the newest checkpoint, "
                                    f"or use ZeRO stage 1-3 (configs/deepspeed/zero1.json), which skips such steps")
        self.model.step()  # the boundary: clip, update, schedule, zero the gradients
        if norm is None:
            norm = float(self.model.get_global_grad_norm())
        return norm, self.model.was_step_applied()

    def save(self, directory: Path) -> dict:
        """DeepSpeed's checkpoint of this rank's partitions (a collective call)."""
        self.model.save_checkpoint(str(directory), tag=TAG, client_state={}, save_latest=False)
        return {"zero_stage": self.stage}

    def load(self, directory: Path, trainer_state: dict) -> None:
        saved_stage = trainer_state.get("zero_stage")
        if saved_stage != self.stage:
            raise CheckpointError(
                f"checkpoint {directory} was written {_describe(saved_stage)} but this run uses ZeRO stage "
                f"{self.stage}; resume with the same train.deepspeed config, or start a new run from its weights "
                f"with train.init_from={directory}")
        loaded, _ = self.model.load_checkpoint(str(directory), tag=TAG, load_module_strict=True,
                                               load_optimizer_states=True, load_lr_scheduler_states=True)
        if loaded is None:
            raise CheckpointError(f"DeepSpeed could not load its engine checkpoint from {directory / TAG}")

    def close(self) -> None:
        self.model.destroy()


def _describe(stage) -> str:
    return "without DeepSpeed" if stage is None else f"with ZeRO stage {stage}"


def is_deepspeed_checkpoint(directory: Path) -> bool:
    return (directory / TAG).is_dir()


def consolidated_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    """One fp32 state dict from a DeepSpeed checkpoint of any ZeRO stage (stage 0 keeps whole weights in the
    model-states file; stages 1-3 keep fp32 master partitions that DeepSpeed's zero_to_fp32 gathers)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    engine_dir = directory / TAG
    if any(engine_dir.glob("*zero_pp_rank_*_optim_states.pt")):
        state = get_fp32_state_dict_from_zero_checkpoint(str(directory), tag=TAG)
    else:
        saved = torch.load(engine_dir / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=True)
        state = saved["module"]
    return {name: tensor.float().contiguous() for name, tensor in state.items()}
