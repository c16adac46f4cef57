"""Kernels accumulate in fp32 whatever the caller's autocast says: recurrences drift in bf16."""
import torch


def no_autocast(tensor: torch.Tensor):
    """A context that turns autocast off on `tensor`'s device, so casts inside a kernel stay fp32."""
    return torch.autocast(tensor.device.type, enabled=False)
