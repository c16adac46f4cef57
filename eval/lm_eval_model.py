"""Our LanguageModel as an lm-eval model named "lrnn": scores and generates on our checkpoints, no export needed.

    lm_eval.simple_evaluate(model="lrnn", model_args="checkpoint=runs/default", tasks=[...])  # after importing us

Batches are right-padded: the model is causal, so padding after a row's last token cannot change that row's
logits (left padding would run pad tokens through the recurrent state first).
"""
from __future__ import annotations

import contextlib

import lm_eval.models  # noqa: F401  must precede our registration (it fills lm-eval's model registry)
import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import normalize_gen_kwargs
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

DEFAULT_MAX_LENGTH = 2048  # when neither the caller nor a checkpoint says (train.seq_len)
# generation_kwargs we take: until and max_gen_toks, and sampling settings that greedy decoding makes moot
_GEN_KWARGS = {"until", "max_gen_toks", "do_sample", "temperature", "top_p", "top_k"}


def load_checkpoint(path, device: str | torch.device = "cpu"):
    """(model in eval mode, tokenizer, training seq_len or None) from a checkpoint, `latest` or run directory."""
    from eval.generation import load_checkpoint as load_model_and_tokenizer

    from model.loading import read_config_section

    model, tokenizer, checkpoint = load_model_and_tokenizer(path, device)
    return model, tokenizer, read_config_section(checkpoint, "train").get("seq_len")


@register_model("lrnn")
class LRNNEvalModel(TemplateLM):
    """loglikelihood, loglikelihood_rolling and greedy generate_until over `model` (a LanguageModel) and our
    `tokenizer` (data.tokenizer.Tokenizer); or pass `checkpoint` and both are loaded from it.

    Inputs longer than `max_length` tokens keep their last `max_length` tokens (lm-eval's convention).
    `autocast` is a zero-argument context factory around every forward (the trainer's), or set
    `precision="bf16"` for bf16 autocast on the device.
    """

    def __init__(self, checkpoint: str | None = None, model=None, tokenizer=None, batch_size: int | str = 8,
                 max_length: int | str | None = None, max_gen_toks: int | str = 256,
                 device: str | torch.device | None = None, precision: str = "fp32", autocast=None,
                 max_batch_size: int | None = None):
        super().__init__()
        del max_batch_size  # lm-eval passes it for automatic batch sizes, which we do not do
        if checkpoint is not None:
            if model is not None or tokenizer is not None:
                raise ValueError("pass either checkpoint= or model= and tokenizer=, not both")
            device = device or ("cuda" if torch.cuda.is_available() else "cpu")
            model, tokenizer, seq_len = load_checkpoint(checkpoint, device)
            max_length = seq_len if max_length is None else max_length
        if model is None or tokenizer is None:
            raise ValueError("LRNNEvalModel needs checkpoint=PATH, or both model= (a LanguageModel) and tokenizer=")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = _positive_int(batch_size, "batch_size")
        self._max_length = _positive_int(DEFAULT_MAX_LENGTH if max_length is None else max_length, "max_length")
        self.max_gen_toks = _positive_int(max_gen_toks, "max_gen_toks")
        self._device = torch.device(device) if device is not None else next(model.parameters()).device
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision={precision!r}: choose fp32 or bf16")
        if autocast is None:
            autocast = (lambda: torch.autocast(self._device.type, dtype=torch.bfloat16)) if precision == "bf16" \
                else contextlib.nullcontext
        self._autocast = autocast

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.name

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return list(self.tokenizer.encode(string))  # our tokenizers never add BOS/EOS

    @contextlib.contextmanager
    def _eval_mode(self):
        """Eval mode and no autograd for the duration (the trainer's model is in train mode between steps)."""
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.model.train(was_training)

    def _forward(self, input_ids: list[list[int]] | torch.Tensor, state=None):
        """(fp32 logits [B, T, V], state) for token ids [B, T]."""
        input_ids = torch.as_tensor(input_ids, dtype=torch.long, device=self._device)
        with self._autocast():
            logits, state = self.model(input_ids, state=state, return_state=True)
        return logits.float(), state

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """Per (strings, context ids, continuation ids): log P(continuation | context) and whether greedy decoding
        would produce the continuation. Rows are batched longest first with right padding."""
        results: list = [None] * len(requests)
        rows = {}
        for i, (_, context, continuation) in enumerate(requests):
            if not continuation:
                results[i] = (0.0, True)  # the empty string has probability one
                continue
            if len(continuation) > self.max_length:
                raise ValueError(f"a continuation of {len(continuation)} tokens does not fit max_length="
                                 f"{self.max_length}; raise max_length")
            rows[i] = (list(context) + list(continuation))[-(self.max_length + 1):][:-1]  # the inputs
        order = sorted(rows, key=lambda i: -len(rows[i]))
        with self._eval_mode():
            for start in range(0, len(order), self.batch_size):
                chunk = order[start:start + self.batch_size]
                width = max(len(rows[i]) for i in chunk)
                batch = [rows[i] + [self.eot_token_id] * (width - len(rows[i])) for i in chunk]
                logits, _ = self._forward(batch)  # [B, width, V]
                for row, i in enumerate(chunk):
                    target = torch.tensor(requests[i][2], device=logits.device)  # [C]
                    end = len(rows[i])
                    logprobs = logits[row, end - len(target):end].log_softmax(-1)  # [C, V]
                    score = float(logprobs.gather(-1, target[:, None]).sum())
                    results[i] = (score, bool((logprobs.argmax(-1) == target).all()))
        for (strings, _, _), result in zip(requests, results):
            if strings is not None:
                self.cache_hook.add_partial("loglikelihood", strings, result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of each whole string after the EOS token, in windows of at most max_length tokens."""
        windows, owner = [], []
        for i, (string,) in enumerate(req.args for req in requests):
            for context, continuation in map(make_disjoint_window, get_rolling_token_windows(
                    token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                windows.append((None, context, continuation))
                owner.append(i)
        totals = [0.0] * len(requests)
        for i, (score, _) in zip(owner, self._loglikelihood_tokens(windows)):
            totals[i] += score
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy continuation of each context, cut before the first `until` string; stops at EOS, at an until
        string or after max_gen_toks tokens. Contexts of equal token length share a batch."""
        jobs = []
        for context, gen_kwargs in (req.args for req in requests):
            kwargs = normalize_gen_kwargs(gen_kwargs, default_max_gen_toks=self.max_gen_toks)
            if kwargs["do_sample"]:
                raise ValueError(f"the lrnn model decodes greedily; this task asks for sampling ({gen_kwargs}): set "
                                 "do_sample: false in its generation_kwargs")
            unknown = set(kwargs) - _GEN_KWARGS
            if unknown:
                raise ValueError(f"generation_kwargs {sorted(unknown)} are not supported by the lrnn model; it takes "
                                 "until and max_gen_toks and decodes greedily")
            # the recurrent state carries the context, so generation needs no room in max_length (unlike lm-eval's
            # HF model, which keeps max_length - max_gen_toks context tokens)
            ids = (self.tok_encode(context) or [self.prefix_token_id])[-self.max_length:]
            jobs.append((ids, [u for u in kwargs["until"] if u], kwargs["max_gen_toks"]))
        results: list = [None] * len(jobs)
        order = sorted(range(len(jobs)), key=lambda i: len(jobs[i][0]))
        groups = []
        for i in order:
            if groups and len(groups[-1]) < self.batch_size and len(jobs[groups[-1][0]][0]) == len(jobs[i][0]):
                groups[-1].append(i)
            else:
                groups.append([i])
        with self._eval_mode():
            for group in groups:
                for i, text in zip(group, self._generate([jobs[i] for i in group])):
                    results[i] = text
        for req, text in zip(requests, results):
            self.cache_hook.add_partial("generate_until", req.args, text)
        return results

    def _generate(self, jobs: list[tuple[list[int], list[str], int]]) -> list[str]:
        """Greedy decoding of contexts of one length, each row stopping on its own until strings or budget."""
        contexts = [ids for ids, _, _ in jobs]
        generated: list[list[int]] = [[] for _ in jobs]
        texts = [""] * len(jobs)
        done = [False] * len(jobs)
        logits, state = self._forward(contexts)
        for _ in range(max(budget for _, _, budget in jobs)):
            next_ids = logits[:, -1].argmax(-1).tolist()  # [B]
            for row, (ids, until, budget) in enumerate(jobs):
                if done[row]:
                    continue
                if next_ids[row] == self.eot_token_id:
                    done[row] = True
                    continue
                generated[row].append(next_ids[row])
                texts[row] = self._continuation_text(ids, generated[row])
                done[row] = len(generated[row]) >= budget or any(u in texts[row] for u in until)
            if all(done):
                break
            logits, state = self._forward([[t] for t in next_ids], state=state)
        return [_cut(text, until) for text, (_, until, _) in zip(texts, jobs)]

    def _continuation_text(self, context: list[int], generated: list[int]) -> str:
        """Text of `generated` as it reads after the context: decoded with the context's last tokens and then
        stripped of them, since a tokenizer drops a leading space (SentencePiece's dummy prefix) at the start."""
        anchor = context[-4:]
        head, text = self.tokenizer.decode(anchor), self.tokenizer.decode(anchor + generated)
        return text[len(head):] if text.startswith(head) else self.tokenizer.decode(generated)


def _cut(text: str, until: list[str]) -> str:
    """`text` up to the earliest occurrence of any until string."""
    ends = [text.find(u) for u in until if u in text]
    return text[:min(ends)] if ends else text


def _positive_int(value, name: str) -> int:
    """lm-eval passes model arguments as strings from the command line."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1:
        hint = " (the lrnn model has no automatic batch size)" if name == "batch_size" else ""
        raise ValueError(f"{name}={value!r} must be a positive integer{hint}")
    return number
