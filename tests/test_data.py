"""Corpora (local files, `datasets`, built-in, local copies) and the byte-level BPE tokenizer."""

from __future__ import annotations

import pytest
import torch
from helpers import repetitive_text, write_text
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import routed.data
from routed.data import (
    BUILTIN_CORPORA,
    Corpus,
    CorpusError,
    load_corpus,
    load_hf_corpus,
    python_docs_corpus,
    split_by_position,
)
from routed.tokenizer import decode, encode, token_strings, train_tokenizer

# ---------------------------------------------------------------------------------------------
# Tokenizer

# Code-like text: runs of newlines, indentation, trailing spaces and CRLF, so BPE learns merges of whitespace.
TOKENIZER_TEXT = (
    "def f(x):\n    return x\n\n\nclass A:\n    pass\n\nSome prose.  Two spaces.\n\n  indented line  \r\n\r\nend\n"
) * 40 + repetitive_text(100)


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TOKENIZER_TEXT, 300)


EXPLICIT_TEXTS = [
    "",
    "plain ascii",
    "emoji 😀🎉👩‍👩‍👧 flags 🇫🇷",
    "CJK 漢字かなカナ 한국어",
    "RTL עברית العربية mixed ltr",
    "control \x00\x01\x07\x1b[31m\x7f\t\x0b\x0c\r\n end",
    "NUL only \x00\x00",
    "combining e\u0301 and zero-width \u200b\u200d\ufeff",
    "\U0010ffff private \ue000 noncharacter \ufffe",
    "\n\n\n  \n \t\n",
    "   leading and trailing   ",
]


@pytest.mark.parametrize("text", EXPLICIT_TEXTS)
def test_tokenizer_round_trips_explicit_unicode(tokenizer, text):
    assert decode(tokenizer, encode(tokenizer, text)) == text
    assert decode(tokenizer, tokenizer.encode(text).ids) == text


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text())
def test_tokenizer_round_trips_arbitrary_unicode(tokenizer, text):
    ids = encode(tokenizer, text)
    assert ids.dtype == torch.long and ids.dim() == 1
    assert all(0 <= i < tokenizer.get_vocab_size() for i in ids.tolist())
    assert decode(tokenizer, ids) == text


def test_training_twice_gives_the_identical_tokenizer():
    a = train_tokenizer(TOKENIZER_TEXT, 300)
    b = train_tokenizer(TOKENIZER_TEXT, 300)
    assert a.to_str() == b.to_str()
    assert a.get_vocab_size() <= 300


def test_tokenizer_alphabet_holds_every_byte(tokenizer):
    assert tokenizer.get_vocab_size() >= 256
    text = bytes(range(256)).decode("latin-1")
    assert decode(tokenizer, encode(tokenizer, text)) == text


def test_vocabulary_smaller_than_the_byte_alphabet_is_refused():
    with pytest.raises(ValueError, match="^vocab_size"):
        train_tokenizer("some text", 100)


@pytest.mark.parametrize(
    "text",
    [
        "a\nb",
        "a\n\nb",
        "a\n\n\n\nb",
        "x\r\ny",
        "a  \nb",
        "a \n \nb",
        "def f(x):\n    return x\n\n\nclass A:\n    pass\n",
        "Some prose.  Two spaces.\n\n  indented line  \r\n\r\nend\n",
        TOKENIZER_TEXT[:2000],
    ],
    ids=[
        "newline",
        "2-newlines",
        "4-newlines",
        "crlf",
        "spaces-newline",
        "space-newline-space",
        "code",
        "prose",
        "long",
    ],
)
def test_encode_equals_encoding_the_whole_text(tokenizer, text):
    assert encode(tokenizer, text).tolist() == tokenizer.encode(text).ids


# Same bug as above, as a property over whitespace-heavy texts.
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet="ab. \n\r\t", max_size=30))
def test_encode_equals_encoding_the_whole_text_for_any_whitespace(tokenizer, text):
    assert encode(tokenizer, text).tolist() == tokenizer.encode(text).ids


def test_token_strings_rebuild_ascii_text(tokenizer):
    text = "the cat sees the ball.\n"
    ids = encode(tokenizer, text)
    strings = token_strings(tokenizer, ids)
    assert len(strings) == len(ids)
    assert "".join(strings) == text


def test_encode_of_empty_text_is_empty(tokenizer):
    ids = encode(tokenizer, "")
    assert ids.shape == (0,) and ids.dtype == torch.long


# ---------------------------------------------------------------------------------------------
# Splits and local files


def test_split_by_position_is_90_5_5_at_line_breaks():
    text = repetitive_text(400)
    corpus = split_by_position(text)
    assert corpus.train + corpus.validation + corpus.test == text
    assert corpus.train.endswith("\n") and corpus.validation.endswith("\n")
    assert len(corpus.train) / len(text) == pytest.approx(0.90, abs=0.01)
    assert len(corpus.validation) / len(text) == pytest.approx(0.05, abs=0.01)


def test_corpus_split_names_and_fingerprint():
    corpus = Corpus("c", "train text", "validation text", "test text")
    assert corpus.split("train") == "train text"
    assert corpus.split("valid") == corpus.split("val") == corpus.split("validation") == "validation text"
    assert corpus.split("test") == "test text"
    with pytest.raises(CorpusError, match="^split"):
        corpus.split("dev")
    assert corpus.fingerprint == Corpus("other name", "train text", "validation text", "test text").fingerprint
    assert corpus.fingerprint != Corpus("c", "train text", "validation tex", "ttest text").fingerprint
    # Moving text between splits changes the fingerprint.
    assert Corpus("c", "ab", "c", "d").fingerprint != Corpus("c", "a", "bc", "d").fingerprint


def test_load_corpus_from_a_txt_file(tmp_path):
    text = repetitive_text(200)
    path = write_text(tmp_path / "story.txt", text)
    corpus = load_corpus(str(path))
    assert corpus.name == str(path)
    assert corpus.train + corpus.validation + corpus.test == text
    assert corpus == split_by_position(text, name=str(path))


def test_load_corpus_from_a_folder_of_txt_files(tmp_path):
    texts = {"b.txt": repetitive_text(100, seed=1), "a.txt": repetitive_text(100, seed=2), "sub/c.txt": "deep\n" * 50}
    for name, text in texts.items():
        write_text(tmp_path / "folder" / name, text)
    write_text(tmp_path / "folder" / "ignored.md", "not a txt file\n")
    corpus = load_corpus(str(tmp_path / "folder"))
    joined = "\n".join([texts["a.txt"], texts["b.txt"], texts["sub/c.txt"]])  # sorted paths
    assert corpus.train + corpus.validation + corpus.test == joined
    assert "not a txt file" not in joined


def test_max_chars_caps_the_train_split(tmp_path):
    path = write_text(tmp_path / "story.txt", repetitive_text(200))
    full, capped = load_corpus(str(path)), load_corpus(str(path), max_chars=500)
    assert capped.train == full.train[:500]
    assert capped.validation == full.validation and capped.test == full.test


def test_non_utf8_file_is_refused(tmp_path):
    folder = tmp_path / "folder"
    write_text(folder / "good.txt", repetitive_text(50))
    (folder / "bad.txt").write_bytes(b"caf\xe9 latin-1 text\n" * 20)
    with pytest.raises(CorpusError, match=r"bad\.txt.*not UTF-8"):
        load_corpus(str(folder))
    with pytest.raises(CorpusError, match="not UTF-8"):
        load_corpus(str(folder / "bad.txt"))


def test_folder_without_txt_files_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="no .txt files"):
        load_corpus(str(tmp_path / "empty"))


def test_empty_file_is_refused(tmp_path):
    path = write_text(tmp_path / "empty.txt", "\n\n")
    with pytest.raises(CorpusError, match="empty train or validation"):
        load_corpus(str(path))


@pytest.mark.parametrize("name", ["no-such-corpus", "wikitext-103", "/definitely/not/here.txt"])
def test_unknown_corpus_names_the_alternatives(name):
    with pytest.raises(CorpusError) as info:
        load_corpus(name)
    message = str(info.value)
    assert message.startswith("corpus:") and repr(name) in message
    for alternative in BUILTIN_CORPORA:
        assert alternative in message
    assert "hf:" in message and "path" in message


@pytest.mark.parametrize("name", ["", "   "])
def test_empty_corpus_name_is_refused(name):
    with pytest.raises(CorpusError, match="empty corpus name"):
        load_corpus(name)


# ---------------------------------------------------------------------------------------------
# Local copies (ROUTED_DATA_DIR) and downloads, without the network


@pytest.fixture
def no_hub(monkeypatch):
    """Fail the test if a corpus tries to reach the Hugging Face hub."""

    def refuse(*args, **kwargs):
        raise AssertionError("the hub must not be used")

    monkeypatch.setattr(routed.data, "load_hf_corpus", refuse)


def test_wikitext2_reads_routed_data_dir(tmp_path, monkeypatch, no_hub):
    folder = tmp_path / "data" / "wikitext-2"
    texts = {
        "train": " = Train = \n" + repetitive_text(50),
        "valid": " = Valid = \nvalid text\n",
        "test": " = Test = \n",
    }
    for split, text in texts.items():
        write_text(folder / f"wiki.{split}.tokens", text)
    monkeypatch.setenv("ROUTED_DATA_DIR", str(tmp_path / "data"))
    corpus = load_corpus("wikitext-2")
    assert corpus == Corpus("wikitext-2", texts["train"], texts["valid"], texts["test"], markers=("<unk>",))
    assert load_corpus("wikitext-2-v1") == corpus


def test_tinyshakespeare_reads_routed_data_dir(tmp_path, monkeypatch):
    text = repetitive_text(200)
    write_text(tmp_path / "data" / "tinyshakespeare" / "input.txt", text)
    monkeypatch.setenv("ROUTED_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setattr("urllib.request.urlopen", lambda *a, **k: pytest.fail("must not download"))
    corpus = load_corpus("tinyshakespeare")
    assert corpus.name == "tinyshakespeare"
    assert corpus.train + corpus.validation + corpus.test == text


def test_tinystories_reads_routed_data_dir(tmp_path, monkeypatch, no_hub):
    folder = tmp_path / "data" / "tinystories"
    for split in ("train", "valid", "test"):
        write_text(folder / f"{split}.txt", f"{split} story.\n" * 100)
    monkeypatch.setenv("ROUTED_DATA_DIR", str(tmp_path / "data"))
    corpus = load_corpus("tinystories", max_chars=50)
    assert corpus.train == ("train story.\n" * 100)[:50]
    assert corpus.validation == "valid story.\n" * 100


def test_tinyshakespeare_download_is_cached(isolated_caches, monkeypatch):
    text = repetitive_text(200)
    calls = []

    class Response:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self):
            return text.encode("utf-8")

    def fake_urlopen(url, timeout=None):
        calls.append(url)
        return Response()

    monkeypatch.setattr("urllib.request.urlopen", fake_urlopen)
    first, second = load_corpus("tinyshakespeare"), load_corpus("tinyshakespeare")
    assert calls == [routed.data.TINYSHAKESPEARE_URL]  # downloaded once, then read from the cache
    assert first == second
    assert (routed.data.cache_dir() / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8") == text
    assert str(routed.data.cache_dir()).startswith(str(isolated_caches))


def test_failed_download_names_the_offline_alternatives(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    with pytest.raises(CorpusError, match=r"(?s)tinyshakespeare.*python-docs.*ROUTED_DATA_DIR"):
        load_corpus("tinyshakespeare")


# ---------------------------------------------------------------------------------------------
# Corpora through `datasets`


def test_load_hf_corpus_from_local_files(tmp_path):
    texts = {
        "train": "first train line\n\nthird line after a blank one\n" + repetitive_text(20),
        "validation": "validation line\nsecond\n",
        "test": "test line\n",
    }
    files = {split: str(write_text(tmp_path / f"{split}.txt", text)) for split, text in texts.items()}
    corpus = load_hf_corpus("text", data_files=files)
    assert (corpus.train, corpus.validation, corpus.test) == (texts["train"], texts["validation"], texts["test"])
    assert corpus.name == "hf:text"


def test_load_hf_corpus_splits_a_train_only_dataset_90_5_5(tmp_path):
    text = repetitive_text(400)
    path = write_text(tmp_path / "train.txt", text)
    corpus = load_hf_corpus("text", data_files={"train": str(path)}, name="mine")
    assert corpus.name == "mine"
    assert corpus.train + corpus.validation + corpus.test == text
    assert len(corpus.train) / len(text) == pytest.approx(0.90, abs=0.01)
    assert len(corpus.validation) / len(text) == pytest.approx(0.05, abs=0.01)
    assert len(corpus.test) / len(text) == pytest.approx(0.05, abs=0.01)


def test_load_hf_corpus_wrong_text_column(tmp_path):
    path = write_text(tmp_path / "train.txt", repetitive_text(50))
    with pytest.raises(CorpusError, match=r"^text_column: 'body'.*\['text'\]"):
        load_hf_corpus("text", data_files={"train": str(path)}, text_column="body")


def test_unreachable_hub_names_the_offline_alternatives(monkeypatch):
    import datasets

    def unreachable(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'Salesforce/wikitext' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(CorpusError) as info:
        load_corpus("wikitext-2")
    message = str(info.value)
    assert "ConnectionError" in message
    assert "python-docs" in message and "ROUTED_DATA_DIR" in message
    with pytest.raises(CorpusError, match=r"(?s)'owner/name'.*python-docs.*ROUTED_DATA_DIR"):
        load_corpus("hf:owner/name")


# ---------------------------------------------------------------------------------------------
# The built-in corpus


@pytest.mark.slow
def test_python_docs_corpus_is_deterministic_and_large(tmp_path, monkeypatch):
    monkeypatch.setenv("ROUTED_CACHE_DIR", str(tmp_path / "first"))
    first = python_docs_corpus()
    assert any((tmp_path / "first").iterdir())  # parsed once, then cached
    monkeypatch.setenv("ROUTED_CACHE_DIR", str(tmp_path / "second"))
    second = python_docs_corpus()  # parsed again from scratch
    assert first == second
    assert first.name == "python-docs"
    assert len(first.train.encode("utf-8")) > 1_000_000
    assert first.validation.strip() and first.test.strip()
    assert first.train[:1000] not in first.validation + first.test
    # Read back from the cache, and through load_corpus.
    assert python_docs_corpus() == first
    assert load_corpus("python-docs") == first
