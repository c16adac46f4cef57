"""train.py with NaN losses injected at the optimizer steps listed in $NAN_STEPS (e.g. "3,4"): a test driver
for the non-finite-step handling under torchrun/DeepSpeed, where a pytest monkeypatch cannot reach."""
import os
import sys

import trainer.loop

_steps = {int(s) for s in os.environ.get("NAN_STEPS", "").split(",") if s}
_real, _calls = trainer.loop.lm_loss, [0]


def _loss(logits, targets):
    _calls[0] += 1  # one call per micro-batch; the tests use one micro-batch per step
    value = _real(logits, targets)
    return value * float("nan") if _calls[0] in _steps else value


trainer.loop.lm_loss = _loss

if __name__ == "__main__":
    import train

    sys.exit(train.main(sys.argv[1:]))
