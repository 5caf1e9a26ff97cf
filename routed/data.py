"""Corpora: the hub, a download, the built-in one, local files; train / validation / test text."""

from __future__ import annotations

import ast
import hashlib
import os
import sys
import sysconfig
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path

TINYSHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
BUILTIN_CORPORA = ("python-docs", "wikitext-2", "tinyshakespeare", "tinystories")
# The corpora's own markup: WikiText-2 v1 writes every rare word as <unk>; the TinyStories files separate
# stories with <|endoftext|>. Left to BPE, <unk> becomes three pieces that are trivially predictable.
CORPUS_MARKERS = {"wikitext-2": ("<unk>",), "tinystories": ("<|endoftext|>",)}
_ALTERNATIVES = (
    "use the built-in corpus 'python-docs' (no network), a path to a .txt file or folder, "
    "or set ROUTED_DATA_DIR to a folder holding local copies (wikitext-2/, tinyshakespeare/, tinystories/)"
)


MAX_CORPUS_BYTES = 8 * 2**30  # TinyStories' train split, the largest corpus here, is about 1.9 GB
MAX_CORPUS_FILES = 10_000  # .txt files read from one folder


class CorpusError(ValueError):
    """A corpus that cannot be found, loaded or used."""


def read_text_file(path: Path, what: str = "corpus", limit: int = MAX_CORPUS_BYTES) -> str:
    """The UTF-8 text of a regular file of at most `limit` bytes (and a third of the free memory); CorpusError
    otherwise: a FIFO, a device or a socket is refused at once instead of blocking or reading forever."""
    from routed.files import read_regular, regular_size
    from routed.limits import available_memory

    free = available_memory()
    size = regular_size(path, limit, what, CorpusError)
    if free is not None and 3 * size > free:  # the bytes, the text and the token ids
        raise CorpusError(f"{what}: {str(path)!r} is {size / 2**30:,.2f} GB; with {free / 2**30:,.1f} GB of "
                          "memory free it cannot be read: use a part of it (--max-chars applies after reading)")
    data = read_regular(path, limit, what, CorpusError)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorpusError(f"{what}: {str(path)!r} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None


@dataclass(frozen=True)
class Corpus:
    """Train / validation / test text of one corpus."""

    name: str
    train: str
    validation: str
    test: str
    # Markup that stands for something else (WikiText's <unk>, TinyStories' <|endoftext|>): each is
    # one special token that BPE never splits, and evaluations can leave it out.
    markers: tuple[str, ...] = ()

    @property
    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for part in (self.train, self.validation, self.test):
            h.update(part.encode("utf-8", "surrogatepass"))
            h.update(b"\0")
        return h.hexdigest()[:16]

    def split(self, name: str) -> str:
        aliases = {"train": "train", "validation": "validation", "valid": "validation", "val": "validation"}
        key = aliases.get(name, name)
        if key not in ("train", "validation", "test"):
            raise CorpusError(f"split: unknown split {name!r}; choose train, validation or test")
        return getattr(self, key)


def cache_dir() -> Path:
    """Where downloads and the built-in corpus are cached (ROUTED_CACHE_DIR, else ~/.cache/routed)."""
    return Path(os.environ.get("ROUTED_CACHE_DIR") or Path.home() / ".cache" / "routed")


def _data_dir() -> Path | None:
    value = os.environ.get("ROUTED_DATA_DIR")
    return Path(value) if value else None


def split_by_position(text: str, fractions: tuple[float, float] = (0.9, 0.05), name: str = "text") -> Corpus:
    """Split one text 90/5/5 (by default) at line breaks near the cut points."""
    n = len(text)

    def cut(at: float) -> int:
        i = int(n * at)
        j = text.find("\n", i)
        return j + 1 if 0 <= j < i + 2000 else i

    a, b = cut(fractions[0]), cut(fractions[0] + fractions[1])
    return Corpus(name, text[:a], text[a:b], text[b:])


def corpus_available(name: str) -> bool:
    """Whether load_corpus(name) can work without the network (built in, local copy, cached, or a path)."""
    local = _data_dir()
    if name == "python-docs":
        return True
    if name in ("wikitext-2", "wikitext-2-v1"):
        return bool(local and (local / "wikitext-2" / "wiki.train.tokens").exists())
    if name == "tinyshakespeare":
        return bool(local and (local / "tinyshakespeare" / "input.txt").exists()) or (
            cache_dir() / "tinyshakespeare" / "input.txt"
        ).exists()
    if name == "tinystories":
        return bool(local and (local / "tinystories" / "train.txt").exists())
    return not name.startswith("hf:") and Path(name).exists()


def load_corpus(name: str, text_column: str = "text", max_chars: int | None = None) -> Corpus:
    """Train / validation / test text of a corpus by name, `hf:OWNER/NAME[:CONFIG]`, or path.

    Names: python-docs (built in), wikitext-2, tinyshakespeare, tinystories. With ROUTED_DATA_DIR
    set to a folder of local copies, those are read instead of the network.
    """
    if not isinstance(name, str) or not name.strip():
        raise CorpusError(f"corpus: empty corpus name; choose one of {', '.join(BUILTIN_CORPORA)} or a path")
    if max_chars is not None and (not isinstance(max_chars, int) or isinstance(max_chars, bool) or max_chars <= 0):
        # a negative cap would silently drop the end of the text (train[:-5])
        raise CorpusError(f"max_chars: must be a positive number of characters, got {max_chars!r}")
    name = name.strip()
    if name == "python-docs":
        corpus = python_docs_corpus()
    elif name in ("wikitext-2", "wikitext-2-v1"):
        corpus = _wikitext2()
    elif name == "tinyshakespeare":
        corpus = _tinyshakespeare()
    elif name == "tinystories":
        corpus = _tinystories(max_chars)
    elif name.startswith("hf:"):
        path, _, config = name[3:].partition(":")
        corpus = load_hf_corpus(path, config or None, text_column=text_column, max_chars=max_chars)
    elif Path(name).exists():
        corpus = _local_text(Path(name))
    else:
        raise CorpusError(
            f"corpus: unknown corpus {name!r}; choose one of {', '.join(BUILTIN_CORPORA)}, "
            "hf:OWNER/NAME for a Hugging Face dataset, or a path to a .txt file or folder"
        )
    if max_chars is not None and name != "tinystories" and not name.startswith("hf:"):
        corpus = replace(corpus, train=corpus.train[:max_chars])
    if not corpus.train.strip() or not corpus.validation.strip():
        raise CorpusError(f"corpus: {name!r} has an empty train or validation split")
    return corpus


def load_hf_corpus(
    path: str,
    config: str | None = None,
    text_column: str = "text",
    max_chars: int | None = None,
    data_files=None,
    name: str | None = None,
) -> Corpus:
    """A corpus through `datasets.load_dataset` (hub name, or a builder such as "text" with data_files).

    Rows of a split are joined in order; with max_chars the split is streamed and cut there.
    A dataset with only a train split is split 90/5/5 by position.
    """
    try:
        import datasets

        ds = datasets.load_dataset(path, config, data_files=data_files, streaming=max_chars is not None)
    except Exception as exc:  # the hub raises many kinds (connection, offline mode, not found)
        raise CorpusError(
            f"corpus: could not load the Hugging Face dataset {path!r}"
            f"{f' ({config})' if config else ''}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}. "
            f"Offline? {_ALTERNATIVES}"
        ) from exc
    splits = {}
    for wanted, candidates in (
        ("train", ("train",)),
        ("validation", ("validation", "valid", "dev")),
        ("test", ("test",)),
    ):
        found = next((c for c in candidates if c in ds), None)
        if found is not None:
            splits[wanted] = _join_rows(ds[found], text_column, max_chars)
    label = name or f"hf:{path}" + (f":{config}" if config else "")
    if "train" not in splits:
        raise CorpusError(f"corpus: dataset {path!r} has no train split (it has {list(ds)})")
    if "validation" in splits and "test" in splits:
        return Corpus(label, splits["train"], splits["validation"], splits["test"])
    return split_by_position(splits["train"], name=label)


def _join_rows(split, text_column: str, max_chars: int | None) -> str:
    parts, size = [], 0
    for row in split:
        if text_column not in row:
            raise CorpusError(f"text_column: {text_column!r} is not a column of this dataset (it has {list(row)})")
        text = row[text_column]
        text = text if text.endswith("\n") else text + "\n"
        parts.append(text)
        size += len(text)
        if max_chars is not None and size >= max_chars:
            break
    joined = "".join(parts)
    return joined[:max_chars] if max_chars is not None else joined


def _wikitext2() -> Corpus:
    local = _data_dir()
    if local and (local / "wikitext-2" / "wiki.train.tokens").exists():
        folder = local / "wikitext-2"
        texts = [read_text_file(folder / f"wiki.{s}.tokens") for s in ("train", "valid", "test")]
        return Corpus("wikitext-2", *texts, markers=CORPUS_MARKERS["wikitext-2"])
    corpus = load_hf_corpus("Salesforce/wikitext", "wikitext-2-v1", name="wikitext-2")
    return replace(corpus, markers=CORPUS_MARKERS["wikitext-2"])


def _tinyshakespeare() -> Corpus:
    local = _data_dir()
    if local and (local / "tinyshakespeare" / "input.txt").exists():
        path = local / "tinyshakespeare" / "input.txt"
    else:
        path = cache_dir() / "tinyshakespeare" / "input.txt"
        if not path.exists():
            try:
                with urllib.request.urlopen(TINYSHAKESPEARE_URL, timeout=20) as response:
                    data = response.read()
            except OSError as exc:
                raise CorpusError(f"corpus: could not download tinyshakespeare ({exc}). {_ALTERNATIVES}") from exc
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".part")
            tmp.write_bytes(data)
            tmp.replace(path)
    return split_by_position(read_text_file(path), name="tinyshakespeare")


def _tinystories(max_chars: int | None) -> Corpus:
    local = _data_dir()
    if local and (local / "tinystories" / "train.txt").exists():
        folder = local / "tinystories"
        texts = [read_text_file(folder / f"{s}.txt") for s in ("train", "valid", "test")]
        if max_chars is not None:
            texts[0] = texts[0][:max_chars]
        return Corpus("tinystories", *texts, markers=CORPUS_MARKERS["tinystories"])
    corpus = load_hf_corpus("roneneldan/TinyStories", max_chars=max_chars or 20_000_000, name="tinystories")
    return replace(corpus, markers=CORPUS_MARKERS["tinystories"])


def _local_text(path: Path) -> Corpus:
    files = [path]
    if path.is_dir():
        files = []
        for root, _, names in os.walk(path):  # does not follow links to folders: no loops
            files += [Path(root) / n for n in names if n.endswith(".txt")]
            if len(files) > MAX_CORPUS_FILES:
                raise CorpusError(f"corpus: folder {str(path)!r} holds more than {MAX_CORPUS_FILES:,} .txt files")
        files.sort()
    if not files:
        raise CorpusError(f"corpus: no .txt files in folder {str(path)!r}")
    parts, total = [], 0
    for f in files:
        parts.append(read_text_file(f, limit=MAX_CORPUS_BYTES - total))
        total += os.stat(f).st_size
    return split_by_position("\n".join(parts), name=str(path))


def python_docs_corpus() -> Corpus:
    """The docstrings of the running Python's standard library, split by module (18:1:1).

    Read with `ast` (nothing is imported), in sorted file order, so the text is deterministic for
    a given Python version. Cached on disk because parsing the library takes a few seconds.
    """
    version = f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"
    cached = cache_dir() / f"python-docs-{version}"
    if all((cached / f"{s}.txt").exists() for s in ("train", "validation", "test")):
        texts = [read_text_file(cached / f"{s}.txt") for s in ("train", "validation", "test")]
        return Corpus("python-docs", *texts)
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "__pycache__", "lib2to3"}
    buckets: list[list[str]] = [[], [], []]
    index = 0
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        if any(p in skip or p.startswith("test") or p.startswith("config-") for p in parts):
            continue
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError, UnicodeDecodeError):
            continue
        docs = [
            doc
            for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and (doc := ast.get_docstring(node))
        ]
        if not docs:
            continue
        # Whole modules go to one split so that no module's text leaks between splits.
        bucket = 1 if index % 20 == 18 else 2 if index % 20 == 19 else 0
        buckets[bucket].append("\n\n".join(docs) + "\n\n")
        index += 1
    texts = ["".join(b) for b in buckets]
    try:
        cached.mkdir(parents=True, exist_ok=True)
        for split, text in zip(("train", "validation", "test"), texts):
            tmp = cached / f"{split}.txt.part"
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(cached / f"{split}.txt")
    except OSError:
        pass  # a read-only home only costs the parse next time
    return Corpus("python-docs", *texts)
