"""lm-eval tasks during training: `harness.<task>.<metric>` numbers every `harness.every` steps and at the stop
step, into metrics.jsonl and TensorBoard (through result.extra)."""
from __future__ import annotations

from eval.config import HarnessConfig
from eval.harness import build_task_manager, flat_metrics, run_harness
from trainer.evaluation import PeriodicEvaluation
from trainer.loop import StepResult, Trainer


class HarnessEvaluation(PeriodicEvaluation):
    """Runs on every rank with the same documents, so every rank calls the model's forward identically (ZeRO-3
    gathers weights collectively); the numbers come from local rank 0. Training's random streams are untouched."""

    def __init__(self, cfg: HarnessConfig, tokenizer):
        super().__init__(batches=None, eval_every=cfg.every)
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.task_manager = None

    def on_train_start(self, trainer: Trainer) -> None:
        self.task_manager = build_task_manager(self.cfg.tasks)  # a misspelt task fails now, not hours in

    def evaluate(self, trainer: Trainer, result: StepResult) -> None:
        results = run_harness(trainer.model, self.tokenizer, self.cfg.tasks, self.cfg.limit, self.cfg.batch_size,
                              max_length=trainer.cfg.train.seq_len, device=trainer.device, autocast=trainer.autocast,
                              task_manager=self.task_manager)
        if results is not None:
            self.last = flat_metrics(results)
            result.extra.update({f"harness.{name}": value for name, value in self.last.items()})
