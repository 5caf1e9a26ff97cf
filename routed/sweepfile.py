"""The threshold sweep as a CSV file: beside a checkpoint (its sweep.csv) or anywhere a command writes it."""

from __future__ import annotations

from pathlib import Path

from routed.files import MB, read_regular
from routed.folders import OutputError, write_file

SWEEP_FILE = "sweep.csv"
SWEEP_COLUMNS = tuple("threshold routed_ppl shallow_pct compute_pct flops_pct shallow_ppl deep_ppl oracle_ppl".split())
# Bits per byte, written by this version; a sweep from before has none (read as NaN).
SWEEP_BPB_COLUMNS = ("routed_bpb", "shallow_bpb", "deep_bpb", "oracle_bpb")
MAX_SWEEP_BYTES = 16 * MB  # 1,001 thresholds x 12 columns take about 100 KB


def sweep_file(path: Path | str) -> Path:
    """The CSV file of `path`: a folder's sweep.csv, or `path` itself."""
    path = Path(path)
    return path / SWEEP_FILE if path.is_dir() else path


def is_sweep_csv(path: Path | str) -> bool:
    """Whether the regular file at `path` starts with the header routed writes (so routed may replace it)."""
    try:
        with open(path, "rb") as f:
            first = f.read(4096).split(b"\n", 1)[0].decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return False
    columns = tuple(first.split(","))
    return columns[: len(SWEEP_COLUMNS)] == SWEEP_COLUMNS and set(columns[len(SWEEP_COLUMNS):]) <= set(SWEEP_BPB_COLUMNS)


def write_sweep(path: Path | str, rows: dict) -> Path:
    """Write a threshold sweep (the dict of arrays from routed.sweep.sweep) as CSV, atomically.

    `path` is a checkpoint folder (the file is its sweep.csv) or a file path. An existing file is
    replaced only when it is a sweep written by routed; anything else there raises OutputError.
    """
    import csv
    import io

    path = sweep_file(path)
    if path.exists() and not (path.is_file() and is_sweep_csv(path)):
        raise OutputError(f"csv: {path} exists and is not a sweep written by routed; choose another path")
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    columns = SWEEP_COLUMNS + tuple(c for c in SWEEP_BPB_COLUMNS if c in rows)
    writer.writerow(columns)
    for i in range(len(rows["threshold"])):
        writer.writerow([f"{float(rows[c][i]):.6g}" for c in columns])
    return write_file(path, text.getvalue().encode("utf-8"))


def read_sweep(path: Path | str) -> dict | None:
    """A sweep CSV (a checkpoint folder's sweep.csv, or a file) as {column: array}, or None when there is none."""
    import csv
    import io

    import numpy as np

    from routed.checkpoint import CheckpointError

    path = sweep_file(path)
    if not path.exists():
        return None
    where = f"checkpoint {path.parent.name!r}: {path.name}"
    try:
        text = read_regular(path, MAX_SWEEP_BYTES, where, CheckpointError).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{where} is not UTF-8 text ({exc.reason})") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        fields = reader.fieldnames or []
    except csv.Error as exc:
        raise CheckpointError(f"{where} is not a CSV file ({exc})") from None
    missing = [c for c in SWEEP_COLUMNS if c not in fields]
    if missing:
        raise CheckpointError(f"{where} lacks column(s) {missing}")
    columns = SWEEP_COLUMNS + tuple(c for c in SWEEP_BPB_COLUMNS if c in fields)
    try:
        rows = [{c: float(row[c]) for c in columns} for row in reader]
    except (TypeError, ValueError, csv.Error) as exc:
        raise CheckpointError(f"{where} has a non-numeric value ({exc})") from None
    if not rows:
        raise CheckpointError(f"{where} has no rows")
    result = {c: np.array([r[c] for r in rows]) for c in columns}
    return result | {c: np.full(len(rows), np.nan) for c in SWEEP_BPB_COLUMNS if c not in result}
