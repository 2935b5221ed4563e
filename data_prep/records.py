"""Records as documents: JSON / JSON lines / Parquet files and `datasets.save_to_disk`
folders, read through the `datasets` library, one document per record's text field."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

from .errors import first_line
from .streams import SourceError, open_content

JSON_SUFFIXES = {".json", ".jsonl", ".ndjson"}
COMPRESSED_SUFFIXES = {".xz", ".gz", ".bz2", ".lzma"}

Document = tuple[str, Iterator[str]]


def work_offline() -> None:
    """`datasets` reads these when it is first imported, in whichever process imports it, so
    they are set once, at the start of a run, before any worker process starts: every input
    is a local file and nothing may wait on a network. A value the user set is kept."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def source_head(path: Path, n: int = 512) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def is_dataset_file(path: Path) -> bool:
    """JSON is recognised by its extension (after any compression suffix) and its first
    byte; Parquet by its magic bytes."""
    suffixes = [s.lower() for s in path.suffixes]
    while suffixes and suffixes[-1] in COMPRESSED_SUFFIXES:
        suffixes.pop()
    if source_head(path, 4) == b"PAR1":
        return True
    if suffixes and suffixes[-1] in JSON_SUFFIXES:
        with open(path, "rb") as f:
            head = open_content(f).peek(256).lstrip()
        return head[:1] in (b"{", b"[")
    return False


def datasets_documents(path: Path, saved: bool, text_field: str) -> Iterator[Document]:
    """Records of a JSON / JSON lines / Parquet file or (`saved`) a saved dataset, one
    document each."""
    try:
        import datasets
    except ImportError:
        raise SourceError(f"{path}: reading this format needs the 'datasets' package") from None
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    try:
        if saved:
            loaded = datasets.load_from_disk(str(path))
            parts = [loaded[k] for k in sorted(loaded)] if isinstance(loaded, datasets.DatasetDict) else [loaded]
        else:
            builder = "parquet" if source_head(path)[:4] == b"PAR1" else "json"
            parts = [datasets.load_dataset(builder, data_files=[str(path)], split="train", streaming=True)]
        for part in parts:
            columns = part.column_names
            if columns is not None and text_field not in columns:
                raise SourceError(f"{path}: no field {text_field!r} (fields: {', '.join(columns)}); choose one with --text-field")
            index = 0
            for batch in part.select_columns([text_field]).iter(batch_size=1000):
                for value in batch[text_field]:
                    index += 1
                    if isinstance(value, str) and value:
                        yield f"{path}#{index}", iter([value])
    except SourceError:
        raise
    except Exception as e:  # the datasets library raises many kinds; all mean "unreadable"
        raise SourceError(f"{path}: cannot read as a dataset ({first_line(e)})") from None
