"""Errors that stop a run with a message saying what happened and what to do (train.py prints them plainly)."""


class TrainingError(RuntimeError):
    """Training cannot continue (e.g. diverged); the message names the last good checkpoint and the fix."""
