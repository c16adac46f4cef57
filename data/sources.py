"""Where a split's documents come from: the embedded corpus (or one part of it), local text files, a Hugging
Face Hub dataset (streamed with `datasets`), or a directory of pre-tokenized shards."""
import codecs
import glob
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from data.config import EMBEDDED_PARTS, DataConfig
from data.corpus import build_embedded_corpus
from data.errors import DataError

BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".txt": "text"}
# A .txt file is one document (not one per line): EOS then marks real document ends.
_BUILDER_KWARGS = {"text": {"sample_by": "document", "encoding": "utf-8"}}
SINGLE_SOURCE_NAME = "dataset"  # the name tokens are counted under when data.mixture is not set


@dataclass(frozen=True)
class NamedSource:
    """A training source with its mixture name and weight."""

    name: str
    weight: float
    source: object  # Source or data.memmap.PretokenizedSource


@dataclass(frozen=True)
class Source:
    """A picklable recipe for one split's text documents (DataLoader workers re-open it)."""

    label: str  # names the config key in error messages
    text_field: str
    files: tuple = ()
    builder: Optional[str] = None
    hub_name: Optional[str] = None
    hub_config: Optional[str] = None
    hub_split: Optional[str] = None
    shuffle_shards: bool = False
    keep: Optional[tuple] = None  # (column, value): only records whose column equals value are documents

    def open(self, epoch: int, seed: int, node: int, num_nodes: int):
        """The streaming dataset of reader `node` of `num_nodes` for `epoch`.

        Training sources visit their files in a new order each epoch, fixed by (seed, epoch) so every rank
        agrees on it; Hub datasets get the same from `datasets`' own per-epoch shard shuffle.
        """
        import datasets
        from datasets.distributed import split_dataset_by_node

        if self.files:
            files = list(self.files)
            if self.shuffle_shards:
                random.Random(f"{seed}-{epoch}").shuffle(files)
            ds = datasets.load_dataset(self.builder, data_files=files, split="train", streaming=True,
                                       **_BUILDER_KWARGS.get(self.builder, {}))
        else:
            try:
                ds = datasets.load_dataset(self.hub_name, self.hub_config, split=self.hub_split, streaming=True)
            except Exception as err:  # offline, unknown name, missing config or split: all end here
                raise DataError(
                    f"{self.label} is not a local path and could not be streamed from the Hugging Face Hub "
                    f"(offline, or no such dataset/config/split): {err}. Pass local .json/.jsonl/.parquet/.txt "
                    "files, a directory or a glob instead."
                ) from err
            if self.shuffle_shards:
                ds.set_epoch(epoch)
        if num_nodes > 1:
            ds = split_dataset_by_node(ds, rank=node, world_size=num_nodes)
        return ds

    def reader(self, tokenizer, seed: int, node: int, num_nodes: int, single_epoch: bool = False):
        """Reader `node` of `num_nodes`: this source's documents tokenized on the fly."""
        from data.documents import TextDocuments

        return TextDocuments(self, tokenizer, seed, node, num_nodes, single_epoch)

    def utf8_error(self, err: UnicodeDecodeError) -> DataError:
        """A clear error naming the first local file that is not UTF-8."""
        culprit = next((f for f in self.files if not _is_utf8(f)), None)
        where = f"{culprit} is not valid UTF-8" if culprit else "a document is not valid UTF-8"
        return DataError(f"{self.label}: {where} ({err}); re-encode it as UTF-8 (e.g. iconv -t utf-8)")


    def read_error(self, err: Exception) -> DataError:
        """A clear error for a file `datasets` cannot parse, naming the first bad JSON line when there is one."""
        culprit = next((found for f in self.files if (found := _first_bad_json_line(f))), None) \
            if self.builder == "json" else None
        where = culprit or (f"one of {len(self.files)} files" if self.files else "the dataset")
        return DataError(f"{self.label}: cannot read {where} ({type(err).__name__}: {err}); fix or remove the "
                         f"malformed record or file")


def _first_bad_json_line(path: str) -> str | None:
    """"path:line: reason" for the first line of a JSON-lines file that is not a JSON object, else None."""
    import json

    if Path(path).suffix != ".jsonl":
        try:
            json.loads(Path(path).read_text(encoding="utf-8", errors="replace"))
        except ValueError as err:
            return f"{path}: {err}"
        return None
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                try:
                    if not isinstance(json.loads(line), dict):
                        return f"{path}:{number}: not a JSON object"
                except ValueError as err:
                    return f"{path}:{number}: {err}"
    return None


def resolve_source(cfg: DataConfig, split: str):
    """The one source of split "train" (data.dataset) or "validation" (data.eval_dataset)."""
    if split == "train":
        if cfg.mixture:
            raise DataError("data.mixture is set, so training reads several sources; use resolve_sources")
        return source_for(cfg.dataset, "data.dataset", cfg, "train", cfg.split, cfg.text_field, cfg.dataset_config)
    if split == "validation":
        if cfg.eval_dataset is None:
            raise DataError("data.eval_dataset is null, so there is no validation data; set it (e.g. to 'embedded')")
        return source_for(cfg.eval_dataset, "data.eval_dataset", cfg, "validation", cfg.eval_split, cfg.text_field,
                          cfg.dataset_config)
    raise DataError(f"split={split!r} must be 'train' or 'validation'")


def resolve_sources(cfg: DataConfig, split: str) -> list:
    """NamedSources of a split: data.mixture's for training when set, else the split's one dataset."""
    if split == "train" and cfg.mixture:
        return [NamedSource(m.name, float(m.weight),
                            source_for(m.dataset, f"data.mixture[{i}].dataset", cfg, "train", m.split, m.text_field,
                                       m.dataset_config))
                for i, m in enumerate(cfg.mixture)]
    return [NamedSource(SINGLE_SOURCE_NAME, 1.0, resolve_source(cfg, split))]


def source_for(spec: str, key: str, cfg: DataConfig, split: str, hub_split: str, text_field: str,
               hub_config: Optional[str], shuffle: Optional[bool] = None):
    """The source a dataset spec names; `split` ("train" | "validation") picks the embedded corpus' split and
    whether files are reshuffled per epoch (training only, unless `shuffle` says otherwise)."""
    from data.memmap import INDEX_FILE, is_pretokenized, open_pretokenized

    label = f"{key}={spec!r}"
    shuffle = split == "train" if shuffle is None else shuffle
    part = spec.split(":", 1)[1] if spec.startswith("embedded:") else None
    if spec == "embedded" or part is not None:
        if part is not None and part not in EMBEDDED_PARTS:
            raise DataError(f"{label}: unknown part of the embedded corpus; choose one of "
                            f"{', '.join('embedded:' + p for p in EMBEDDED_PARTS)} or 'embedded' for all")
        files = build_embedded_corpus(cfg.cache_dir, cfg.corpus_code_mb, cfg.corpus_prose_mb,
                                      cfg.corpus_math_mb)[split]
        return Source(label, "text", files=tuple(files), builder="json", shuffle_shards=shuffle,
                      keep=("source", part) if part else None)
    if is_pretokenized(spec):
        return open_pretokenized(spec, label, shuffle_shards=shuffle)
    if Path(spec).expanduser().is_dir() and any(Path(spec).expanduser().glob("*.idx")):
        raise DataError(f"{label} holds pre-tokenized shards but no {INDEX_FILE} (an incomplete copy?); copy the "
                        "whole directory or rebuild it with `python -m data.pretokenize`")
    if _looks_local(spec):
        files = _local_files(spec, label)
        builders = {BUILDERS[Path(f).suffix] for f in files}
        if len(builders) > 1:
            raise DataError(f"{label} mixes file types ({sorted(builders)}); point it at one kind of file")
        return Source(label, text_field, files=tuple(files), builder=builders.pop(), shuffle_shards=shuffle)
    return Source(label, text_field, hub_name=spec, hub_config=hub_config, hub_split=hub_split,
                  shuffle_shards=shuffle)


def _looks_local(spec: str) -> bool:
    path = Path(spec).expanduser()
    return (path.exists() or any(c in spec for c in "*?[") or spec.startswith(("/", ".", "~"))
            or path.suffix in BUILDERS)


def _local_files(spec: str, label: str) -> list:
    """Sorted files of a file, directory (recursive) or glob. Hidden and blank files are skipped: `datasets`
    infers columns from the first file, and a blank one there breaks the files after it."""
    path = Path(spec).expanduser()
    if path.is_file():
        candidates = [path]
    elif path.is_dir():
        candidates = [p for p in path.rglob("*") if p.is_file()]
    else:
        candidates = [Path(p) for p in glob.glob(str(path), recursive=True) if os.path.isfile(p)]
    candidates = [p for p in candidates if not p.name.startswith(".")]
    files = sorted(str(p) for p in candidates if p.suffix in BUILDERS)
    if files and all(_blank(f) for f in files):
        raise DataError(f"{label}: every matching file is empty; the dataset has no documents")
    files = [f for f in files if not _blank(f)]
    if not files:
        found = f" (found only: {', '.join(sorted(p.name for p in candidates)[:5])})" if candidates else ""
        raise DataError(
            f"{label}: no files match{found}; expected a file, directory or glob of "
            f"{'/'.join(BUILDERS)} files, or a directory written by `python -m data.pretokenize`"
        )
    return files


def _blank(path: str) -> bool:
    """Empty or whitespace-only (only small files are read: a large blank file is not a realistic case)."""
    return os.path.getsize(path) < 4096 and not Path(path).read_bytes().strip()


def _is_utf8(path: str) -> bool:
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                decoder.decode(chunk)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True
