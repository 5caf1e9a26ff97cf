"""Corpora for the Train page: the built-in ones, and uploaded text files checked and stored."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

MAX_UPLOAD_MB = 20  # as server.maxUploadSize in .streamlit/config.toml


def save_upload(filename: str, data: bytes) -> str:
    """Check an uploaded corpus (size, UTF-8) and store it in the cache; its path names the corpus."""
    import hashlib

    from routed.data import cache_dir

    if len(data) > MAX_UPLOAD_MB * 2**20:
        raise ValueError(f"upload: {filename} is {len(data) / 2**20:.1f} MB; the limit is {MAX_UPLOAD_MB} MB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"upload: {filename} is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    if "\x00" in text:  # valid UTF-8, but no text file holds NUL bytes
        raise ValueError(f"upload: {filename} looks like a binary file (it holds NUL bytes), not text")
    if not text.strip():
        raise ValueError(f"upload: {filename} holds no text")
    stem = re.sub(r"[^\w.-]+", "_", Path(filename).stem).strip("._") or "upload"
    path = cache_dir() / "uploads" / hashlib.sha256(data).hexdigest()[:16] / f"{stem}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    # Users uploading the same file share this path: write a private copy and rename it into place, so a
    # run already reading the file never sees it truncated.
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".part", delete=False) as tmp:
        tmp.write(data)
    os.replace(tmp.name, path)
    return str(path)


def corpus_options() -> dict[str, str]:
    """{label: corpus name} of the built-in corpora; those that need the network say so."""
    from routed.data import corpus_available

    local = {name: corpus_available(name) for name in ("wikitext-2", "tinyshakespeare")}
    options = {"python-docs (built in)": "python-docs"}
    for name, ok in local.items():
        options[name if ok else f"{name} (needs network or ROUTED_DATA_DIR)"] = name
    options["upload a .txt file"] = "upload"
    return options
