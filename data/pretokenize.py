"""Build a pre-tokenized dataset (data/memmap.py's format) from any dataset and tokenizer.

    python -m data.pretokenize --dataset SPEC --tokenizer SPEC --out DIR [--text-field text] [--split train]
        [--shard-tokens N] [--num-proc P]

SPEC forms are those of data.dataset and data.tokenizer. Documents keep the dataset's order (with P
processes, process i writes every i-th part as `split_dataset_by_node` assigns it). The directory appears
whole or not at all; pass it as data.dataset or a mixture entry's dataset to train from it.
"""
import argparse
import dataclasses
import multiprocessing
import queue
import sys
from pathlib import Path

from data.cache import atomic_directory
from data.config import DataConfig
from data.errors import DataError
from data.memmap import ShardWriter, is_pretokenized, write_index
from data.sources import source_for
from data.tokenizer import load_tokenizer

DEFAULT_SHARD_TOKENS = 100_000_000  # 200 MB per uint16 shard
_REPORT_EVERY = 256  # documents between progress reports of a worker process


def pretokenize(dataset: str, tokenizer, out, text_field: str = "text", split: str = "train",
                dataset_config=None, shard_tokens: int = DEFAULT_SHARD_TOKENS, num_proc: int = 1,
                cache_dir: str = ".cache", tokenizer_vocab_size: int = 4096, progress: bool = True) -> dict:
    """Tokenize every document of `dataset` with `tokenizer` (a data.tokenizer spec or a Tokenizer) into shards
    under `out`; return the index written."""
    for name, value in (("shard_tokens", shard_tokens), ("num_proc", num_proc)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DataError(f"--{name.replace('_', '-')}={value!r} must be a positive integer")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"--out {out} already exists and is not an empty directory; remove it or choose another")
    if is_pretokenized(dataset):
        raise DataError(f"--dataset {dataset!r} is already pre-tokenized")
    cfg = DataConfig(cache_dir=cache_dir, tokenizer_vocab_size=tokenizer_vocab_size)
    tok = load_tokenizer(dataclasses.replace(cfg, tokenizer=tokenizer)) if isinstance(tokenizer, str) else tokenizer
    corpus_split = "validation" if split == "validation" else "train"  # the embedded corpus' two splits
    source = source_for(dataset, "--dataset", cfg, corpus_split, split, text_field, dataset_config, shuffle=False)
    with atomic_directory(out) as tmp:
        shards = _run_parts(source, tok, tmp, shard_tokens, num_proc, progress)
        return write_index(tmp, shards, tok, source.label)


def _run_parts(source, tokenizer, directory, shard_tokens, num_proc, progress) -> list:
    report = _Progress(progress)
    try:
        if num_proc == 1:
            return _write_part(source, tokenizer, directory, 0, 1, shard_tokens, report)
        ctx = multiprocessing.get_context()  # fork on Linux: children start at once with the modules loaded
        messages = ctx.Queue()
        procs = [ctx.Process(target=_part_process, args=(source, tokenizer, str(directory), i, num_proc, shard_tokens,
                                                         messages), daemon=True) for i in range(num_proc)]
        for proc in procs:
            proc.start()
        shards = {}
        while len(shards) < num_proc:
            try:
                kind, part, payload = messages.get(timeout=1.0)
            except queue.Empty:
                if any(proc.exitcode not in (None, 0) for proc in procs):
                    raise DataError("a tokenizing process died without a result (out of memory?); retry with a "
                                    "lower --num-proc") from None
                continue
            if kind == "error":
                raise payload
            if kind == "done":
                shards[part] = payload
            else:
                report(*payload)
        return [shard for part in range(num_proc) for shard in shards[part]]
    finally:
        report.bar.close()


def _part_process(source, tokenizer, directory, part, num_parts, shard_tokens, messages) -> None:
    try:
        shards = _write_part(source, tokenizer, directory, part, num_parts, shard_tokens,
                             lambda docs, tokens: messages.put(("progress", part, (docs, tokens))))
        messages.put(("done", part, shards))
    except Exception as err:  # handed to the parent, which raises it
        messages.put(("error", part, err if isinstance(err, DataError) else DataError(f"part {part}: {err!r}")))


class _Progress:
    """A tqdm bar of documents written, with the token count beside it."""

    def __init__(self, enabled: bool):
        from tqdm import tqdm

        self.bar = tqdm(desc="pretokenize", unit=" docs", disable=not enabled, file=sys.stderr)
        self.tokens = 0

    def __call__(self, docs: int, tokens: int) -> None:
        self.tokens += tokens
        self.bar.set_postfix(tokens=self.tokens, refresh=False)
        self.bar.update(docs)


def _write_part(source, tokenizer, directory, part, num_parts, shard_tokens, report) -> list:
    """Write part `part` of `num_parts` of the source's documents as shards `partPPP-NNNNN`."""
    writer = ShardWriter(directory, f"part{part:03d}", tokenizer.vocab_size, shard_tokens)
    try:
        reader = source.reader(tokenizer, seed=0, node=part, num_nodes=num_parts, single_epoch=True)
    except DataError as err:
        raise DataError(f"{err} (lower --num-proc)" if num_parts > 1 else str(err)) from err
    docs = tokens = 0
    while (doc := reader.next()) is not None:
        writer.add(doc[:-1])  # the stored documents carry no EOS; readers append it
        docs, tokens = docs + 1, tokens + len(doc) - 1
        if docs == _REPORT_EVERY:
            report(docs, tokens)
            docs = tokens = 0
    report(docs, tokens)
    return writer.finish()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m data.pretokenize", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help="as data.dataset: embedded[:part], files, a glob, a Hub name")
    parser.add_argument("--tokenizer", required=True, help="as data.tokenizer: embedded, a .model, a HF tokenizer")
    parser.add_argument("--out", required=True, help="directory to create")
    parser.add_argument("--text-field", default="text")
    parser.add_argument("--split", default="train", help="Hub split, or train/validation of the embedded corpus")
    parser.add_argument("--dataset-config", default=None)
    parser.add_argument("--shard-tokens", type=int, default=DEFAULT_SHARD_TOKENS)
    parser.add_argument("--num-proc", type=int, default=1, help="tokenizing processes")
    parser.add_argument("--cache-dir", default=".cache", help="as data.cache_dir (embedded corpus and tokenizer)")
    parser.add_argument("--tokenizer-vocab-size", type=int, default=4096, help="for the embedded tokenizer")
    args = parser.parse_args(argv)
    try:
        index = pretokenize(args.dataset, args.tokenizer, args.out, args.text_field, args.split, args.dataset_config,
                            args.shard_tokens, args.num_proc, args.cache_dir, args.tokenizer_vocab_size)
    except DataError as err:
        sys.exit(f"error: {err}")
    print(f"{args.out}: {index['num_documents']} documents, {index['num_tokens']} tokens ({index['dtype']}) in "
          f"{len(index['shards'])} shards")


if __name__ == "__main__":
    main()
