"""The embedded corpus: code, prose and math built at run time from what every Python install has.

Code is the standard library's own .py files; prose is its bundled documentation topics
(`pydoc_data.topics`) plus the docstrings of stdlib modules; math is generated worksheets. Nothing
third-party is committed: the text is read or generated on first use and cached under `cache_dir`.
"""
import ast
import json
import platform
import random
import sysconfig
import time
from pathlib import Path

from pydoc_data.topics import topics

from data.cache import atomic_directory, cache_key
from data.math_problems import worksheet
from data.errors import DataError

CORPUS_VERSION = 1
TRAIN_SHARDS = 16  # divisible by common world sizes, so ranks get whole shards
HOLDOUT_EVERY = 50  # one group in 50 (~2%) goes to validation
_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "__pycache__", "encodings", "pydoc_data"}


def build_embedded_corpus(cache_dir, code_mb: float, prose_mb: float, math_mb: float, seed: int = 0) -> dict:
    """Build (or reuse) the corpus and return {"train": [jsonl paths], "validation": [jsonl paths]}.

    Records are {"id", "source": "code"|"prose"|"math", "text"}. Deterministic for the arguments and the
    Python version; a code module and the docstrings taken from it always land in the same split.
    """
    key = cache_key(version=CORPUS_VERSION, code_mb=float(code_mb), prose_mb=float(prose_mb),
                    math_mb=float(math_mb), seed=int(seed), python=platform.python_version())
    final = Path(cache_dir) / "corpus" / f"embedded-{key}"
    if not (final / "manifest.json").is_file():
        with atomic_directory(final) as tmp:
            _write_corpus(tmp, code_mb, prose_mb, math_mb, seed)
    return {split: sorted(str(p) for p in final.glob(f"{split}-*.jsonl")) for split in ("train", "validation")}


def _write_corpus(out: Path, code_mb, prose_mb, math_mb, seed) -> None:
    start = time.perf_counter()
    rng = random.Random(seed)
    modules = _stdlib_modules()
    rng.shuffle(modules)
    code = _code_docs(modules, code_mb)
    topic_docs = _topic_docs(rng, prose_mb)
    prose = topic_docs + _docstring_docs(modules, prose_mb - _megabytes(topic_docs))
    for key, part, budget in (("corpus_code_mb", code, code_mb), ("corpus_prose_mb", prose, prose_mb)):
        if _megabytes(part) < budget:
            raise DataError(
                f"data.{key}={budget} asks for more than the {_megabytes(part):.2f} MB this Python's standard "
                f"library provides; lower data.{key}"
            )
    docs = code + prose + _math_docs(rng, math_mb)
    for split_name, holdout in (("train", False), ("validation", True)):
        if not any(held == holdout for _, held in docs):
            raise DataError(
                f"the embedded corpus has no {split_name} documents; raise data.corpus_code_mb, "
                "data.corpus_prose_mb or data.corpus_math_mb"
            )
    train = [doc for doc, held in docs if not held]
    valid = [doc for doc, held in docs if held]
    rng.shuffle(train)  # interleave sources across shards
    rng.shuffle(valid)
    _write_shards(out, "train", train, min(TRAIN_SHARDS, len(train)))
    _write_shards(out, "validation", valid, 1)
    manifest = {
        "version": CORPUS_VERSION, "python": platform.python_version(), "seed": seed,
        "sizes_mb": {"code": code_mb, "prose": prose_mb, "math": math_mb},
        "bytes": {split: _bytes_by_source(d) for split, d in (("train", train), ("validation", valid))},
        "documents": {"train": len(train), "validation": len(valid)},
        "build_seconds": round(time.perf_counter() - start, 3),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))


def _write_shards(out: Path, split: str, docs: list, num_shards: int) -> None:
    for shard in range(num_shards):
        with open(out / f"{split}-{shard:05d}-of-{num_shards:05d}.jsonl", "w", encoding="utf-8") as f:
            for doc in docs[shard::num_shards]:
                f.write(json.dumps(doc, ensure_ascii=False) + "\n")


def _bytes_by_source(docs: list) -> dict:
    out = {"code": 0, "prose": 0, "math": 0}
    for doc in docs:
        out[doc["source"]] += len(doc["text"].encode())
    return out


def _stdlib_modules() -> list:
    """Sorted (relative path, absolute path) of the stdlib's non-test .py files."""
    root = Path(sysconfig.get_paths()["stdlib"])
    found = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if not _SKIP_DIRS.intersection(rel.parts[:-1]):
            found.append((rel.as_posix(), path))
    return sorted(found)


def _read_utf8(path: Path):
    try:
        return path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _held_out(index: int) -> bool:
    # Index 1 (not 0) so a part with two or more groups has both splits.
    return index % HOLDOUT_EVERY == 1


def _megabytes(items) -> float:
    return sum(len(doc["text"].encode()) for doc, _ in items) / 1e6


def _take(items, budget_mb: float) -> list:
    """Take (doc, held_out) pairs from an iterator until their text reaches budget_mb megabytes."""
    out, total, budget = [], 0, budget_mb * 1e6
    for item in items:
        if total >= budget:
            break
        out.append(item)
        total += len(item[0]["text"].encode())
    return out


def _code_docs(modules: list, code_mb: float) -> list:
    def gen():
        for index, (rel, path) in enumerate(modules):
            text = _read_utf8(path)
            if text and text.strip():
                yield {"id": f"code/{rel}", "source": "code", "text": text}, _held_out(index)
    return _take(gen(), code_mb)


def _topic_docs(rng: random.Random, prose_mb: float) -> list:
    names = sorted(topics)
    rng.shuffle(names)
    items = (({"id": f"prose/topic/{name}", "source": "prose", "text": topics[name]}, _held_out(i))
             for i, name in enumerate(names))
    return _take(items, prose_mb)


def _docstring_docs(modules: list, remaining_mb: float) -> list:
    """Docstrings of modules taken from the far end of the shuffled order, so they rarely repeat the code part;
    the module's index decides the split, as for its code."""
    def gen():
        for index in reversed(range(len(modules))):
            rel, path = modules[index]
            text = _module_docstrings(rel, path)
            if text:
                yield {"id": f"prose/docstrings/{rel}", "source": "prose", "text": text}, _held_out(index)
    return _take(gen(), remaining_mb) if remaining_mb > 0 else []


def _module_docstrings(rel: str, path: Path):
    source = _read_utf8(path)
    if source is None:
        return None
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    name = rel[:-3].replace("/", ".").removesuffix(".__init__")
    parts = []

    def visit(node, qualname):
        doc = ast.get_docstring(node)
        if doc:
            parts.append(f"{qualname}\n\n{doc}")
        for child in node.body:
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(child, f"{qualname}.{child.name}")

    visit(tree, name)
    return "\n\n\n".join(parts) + "\n" if parts else None


def _math_docs(rng: random.Random, math_mb: float) -> list:
    def gen():
        index = 0
        while True:
            yield {"id": f"math/{index:06d}", "source": "math", "text": worksheet(rng, index)}, _held_out(index)
            index += 1
    return _take(gen(), math_mb)
