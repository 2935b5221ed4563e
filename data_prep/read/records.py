"""Records as documents, one per record's text field: JSON lines read here, line by line;
JSON, Parquet files and `datasets.save_to_disk` folders through the `datasets` library.

JSON lines and JSON arrays are read with the json module rather than `datasets` because a
corpus of them is often scraped and a little broken: one malformed record should cost that
record, not the file (and `datasets` would log its own lines about it first, and turns a
column of mixed types into JSON text, quotes and all), and a stream of lines or of an
array's elements needs no table machinery to stay in bounded memory. Parquet and saved datasets stay on `datasets`: it
streams Parquet by row group and memory-maps saved Arrow files.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import BinaryIO, Iterator

from plumbing.errors import first_line

from .streams import SourceError, open_content
from .utf8 import CHUNK_BYTES, DecodeStats, Document, Utf8Decoder, decode_text

JSON_SUFFIXES = {".json", ".jsonl", ".ndjson"}
JSON_LINES_SUFFIXES = {".jsonl", ".ndjson"}
COMPRESSED_SUFFIXES = {".xz", ".gz", ".bz2", ".lzma"}


def work_offline() -> None:
    """`datasets` reads these when it is first imported, in whichever process imports it, so
    they are set once, at the start of a run, before any worker process starts: every input
    is a local file and nothing may wait on a network. A value the user set is kept."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


BOM = b"\xef\xbb\xbf"  # UTF-8's byte order mark, which some editors put first


def record_format(path: Path, raw: bytes, content: bytes) -> str | None:
    """"json lines", "json array" (of records), "datasets" (Parquet, or a JSON file of
    another shape) or None (not records), from a file's first bytes (`raw`) and the content
    they begin (`content`: compression undone). JSON is recognised by its extension (after
    any compression suffix) and its content past a byte order mark: a .jsonl or .ndjson file
    with a line that starts a record is JSON lines (a bad first line is one bad record, not a
    sign of plain text); a .json file is an array by its first byte, JSON lines where its
    first line is a whole object, else one object, for `datasets`. Parquet by its magic
    bytes."""
    if raw[:4] == b"PAR1":
        return "datasets"
    suffixes = [s.lower() for s in path.suffixes]
    while suffixes and suffixes[-1] in COMPRESSED_SUFFIXES:
        suffixes.pop()
    if not suffixes or suffixes[-1] not in JSON_SUFFIXES:
        return None
    content = content.removeprefix(BOM).lstrip()
    if suffixes[-1] in JSON_LINES_SUFFIXES:
        return "json lines" if any(line.lstrip()[:1] == b"{" for line in content.split(b"\n")) else None
    if content[:1] == b"[":
        return "json array"
    if content[:1] != b"{":
        return None
    try:
        whole_object = isinstance(json.loads(content.split(b"\n", 1)[0]), dict)
    except ValueError:  # a line that goes on, or longer than the look
        whole_object = False
    return "json lines" if whole_object else "datasets"


def lines(stream: BinaryIO) -> Iterator[bytes]:
    """The lines of a byte stream, read in chunks, without their line ends."""
    rest = b""
    while data := stream.read(CHUNK_BYTES):
        parts = (rest + data).split(b"\n")
        rest = parts.pop()
        yield from parts
    if rest:
        yield rest


def json_documents(stream: BinaryIO, name: str, text_field: str, stats: DecodeStats, strict: bool,
                   array: bool) -> Iterator[Document]:
    """One document per record of a JSON lines file, line by line, or of a JSON array,
    element by element. A line or an element that is not
    a JSON object, or whose record has no `text_field` or a value there that is not a
    string, is skipped and counted (under `strict`, refused). null and "" are empty
    documents, skipped as any empty document is. The first record's fields name the ones
    there are."""
    content = open_content(stream)
    if array:
        elements = array_elements(content, name, stats, strict)
        numbered = ((f"record {i}", record, None) for i, record in enumerate(elements, 1))
    else:
        numbered = ((f"line {n}", None, line) for n, line in enumerate(lines(content), 1) if line.strip())
    fields_checked = False
    for where, record, line in numbered:
        try:
            if line is not None:  # invalid UTF-8 is replaced and counted, as in text files
                record = json.loads(decode_text(line, f"{name}: {where}", stats, strict))
            if not isinstance(record, dict):
                raise ValueError(f"a JSON {json_type(record)}, not an object")
        except ValueError as e:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
            if strict:
                raise SourceError(f"{name}: {where} is not a JSON record ({first_line(e)}); without --strict "
                                  "it is skipped and counted") from None
            stats.bad_records += 1
            continue
        if not fields_checked:
            if text_field not in record:
                raise SourceError(f"{name}: no field {text_field!r} (fields: {', '.join(record)}); choose one with "
                                  "--text-field")
            fields_checked = True
        value = record.get(text_field)
        if not isinstance(value, str) and (value is not None or text_field not in record):
            if strict:
                why = "no such field" if text_field not in record else f"a JSON {json_type(value)}"
                raise SourceError(f"{name}: {where} has no text in {text_field!r} ({why}); without --strict "
                                  "it is skipped and counted")
            stats.bad_records += 1
            continue
        if value:
            text = without_lone_surrogates(value, f"{name}: {where}", stats, strict)
            yield Document(f"{name}#{where.split()[1]}", iter((text,)))


def array_elements(content: BinaryIO, name: str, stats: DecodeStats | None = None,
                   strict: bool = False) -> Iterator:
    """The elements of a JSON array, one at a time, so that memory holds one record and a
    chunk of text whatever the file's size (json.loads would hold the whole array). A
    record that ends past the text read so far makes the next read as large again, so a
    huge record is parsed a few times, not once per chunk. Invalid UTF-8 is replaced and
    counted in `stats`, as in text files (under `strict`, refused)."""
    utf8 = Utf8Decoder(name, stats if stats is not None else DecodeStats(), strict)
    decoder = json.JSONDecoder()
    text, pos, eof, started = "", 0, False, False

    def more() -> None:
        nonlocal text, pos, eof, started
        data = content.read(max(CHUNK_BYTES, len(text) - pos))
        eof = not data
        piece = utf8.decode(data, final=eof)
        if not started and piece:  # a byte order mark is allowed before the array
            piece, started = piece.removeprefix("\ufeff"), True
        text, pos = text[pos:] + piece, 0

    def next_char() -> str:  # past whitespace, reading on as needed; "" at the end
        nonlocal pos
        while True:
            while pos < len(text) and text[pos] in " \t\r\n":
                pos += 1
            if pos < len(text) or eof:
                return text[pos : pos + 1]
            more()

    try:
        if next_char() != "[":
            raise ValueError("not an array")
        pos += 1
        first = True
        while (c := next_char()) != "]":
            if not first:
                if c != ",":
                    raise ValueError(f"expected ',' or ']' but found {c!r}" if c else "the array is not closed")
                pos += 1
                next_char()
            while True:  # the element may go on past the text read so far
                try:
                    element, end = decoder.raw_decode(text, pos)
                    if end < len(text) or eof:  # a number that ends the text may go on, too
                        pos = end
                        break
                except ValueError:
                    if eof:
                        raise
                more()
            first = False
            yield element
    except ValueError as e:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise SourceError(f"{name}: not valid JSON ({first_line(e)})") from None


def json_type(value) -> str:
    """The JSON name of a parsed value's type."""
    names = {bool: "boolean", int: "number", float: "number", list: "array", dict: "object"}
    return names.get(type(value), type(value).__name__)


LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def without_lone_surrogates(text: str, where: str, stats: DecodeStats, strict: bool) -> str:
    """JSON's `\\ud800` escapes can name half a surrogate pair, which is no character: like
    invalid UTF-8, each becomes U+FFFD and is counted (under `strict`, refused), so no
    text that UTF-8 cannot hold reaches the vocabulary or the tokenizer file. (Whole pairs
    were already joined into one character by the JSON decoder.)"""
    found = len(LONE_SURROGATE.findall(text))
    if not found:
        return text
    if strict:
        raise SourceError(f"{where}: a lone surrogate escape, which is not a character; without --strict it is "
                          "replaced and counted")
    stats.invalid_utf8 += found
    return LONE_SURROGATE.sub("\ufffd", text)


def datasets_documents(path: Path, name: str, saved: bool, text_field: str, stats: DecodeStats,
                       strict: bool) -> Iterator[Document]:
    """Records of a Parquet or JSON file or (`saved`) a saved dataset, one document each; a
    value that is not a string is skipped and counted (under `strict`, refused), and a
    null or "" is an empty document."""
    try:
        import datasets
    except ImportError:
        raise SourceError(f"{name}: reading this format needs the 'datasets' package") from None
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its errors come back as our one warning line
    try:
        if saved:
            loaded = datasets.load_from_disk(str(path))
            parts = [loaded[k] for k in sorted(loaded)] if isinstance(loaded, datasets.DatasetDict) else [loaded]
        else:
            with open(path, "rb") as f:
                builder = "parquet" if f.read(4) == b"PAR1" else "json"
            parts = [datasets.load_dataset(builder, data_files=[str(path)], split="train", streaming=True)]
        for part in parts:
            columns = part.column_names
            if columns is not None and text_field not in columns:
                raise SourceError(f"{name}: no field {text_field!r} (fields: {', '.join(columns)}); choose one "
                                  "with --text-field")
            index = 0
            for batch in part.select_columns([text_field]).iter(batch_size=1000):
                for value in batch[text_field]:
                    index += 1
                    if isinstance(value, str) and value:
                        yield Document(f"{name}#{index}", iter((value,)))
                    elif value is not None and not isinstance(value, str):
                        if strict:
                            raise SourceError(f"{name}: record {index} has no text in {text_field!r} (a "
                                              f"{type(value).__name__}); without --strict it is skipped and counted")
                        stats.bad_records += 1
    except SourceError:
        raise
    except Exception as e:  # the datasets library raises many kinds; all mean "unreadable"
        raise SourceError(f"{name}: cannot read as a dataset ({first_line(e)})") from None
