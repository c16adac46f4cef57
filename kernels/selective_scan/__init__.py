"""Selective scan (Mamba-1) with optional negative decays: one public entry plus a decoding step."""
from .api import BACKENDS, selective_scan_fn, selective_state_update
from .naive import selective_scan_naive
from .recurrence import linear_recurrence

__all__ = ["BACKENDS", "linear_recurrence", "selective_scan_fn", "selective_scan_naive", "selective_state_update"]
