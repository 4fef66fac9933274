"""The prompt table's file formats (Parquet, CSV, JSON Lines), told apart by file extension: what the driver learns
of each file before a run (schema, rows) and how a read task reads one file's columns.

Parquet files are described by their footers (no data read). A CSV or JSON Lines file has no footer: the driver
reads it whole once (types inferred over every row, as pyarrow's `read_csv`/`read_json` infer them), and each read
task then reads it with the types the driver settled on, so every block of the run has the same schema. CSV
values the run uses as text (the prompt, the id, the negative prompt, text settings, template and routing columns)
are read as text whatever they look like: an id `001` stays `001`.
"""

from __future__ import annotations

import codecs
import csv
import json
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from imagefleet.pipelines.schema import OPTIONAL_INPUT_COLUMNS

if TYPE_CHECKING:
    import pyarrow as pa

    from imagefleet.configs.source import SourceConfig

PARQUET, CSV, JSONL = "Parquet", "CSV", "JSON Lines"
TEXT_SUFFIXES = {".csv": CSV, ".jsonl": JSONL, ".ndjson": JSONL}
"""File name endings read as CSV or JSON Lines (each may also end in `.gz`); any other name is read as Parquet."""
COMPRESSED = ".gz"
TABLE_SUFFIXES: tuple[str, ...] = (".parquet", ".pq", *TEXT_SUFFIXES, *(s + COMPRESSED for s in TEXT_SUFFIXES))
"""Endings that name one table file (not a folder)."""
CSV_FIX = ("a CSV file is a header row and comma-separated rows, UTF-8; a field holding a comma, a quote or a line "
           "break goes in double quotes, a quote inside it written twice")
JSONL_FIX = "a JSON Lines file holds one JSON object per line, UTF-8, each column's values of one type"

Facts = tuple["pa.Schema", tuple[int, ...]]
"""A file's schema and the rows of each of its row groups (CSV and JSON Lines: one group, the whole file)."""


class TableError(ValueError):
    """A prompt table file can't be read; the message names the file (and the line) and says what to change."""


def file_format(path: str) -> str:
    """PARQUET, CSV or JSONL, from the name's ending (`.csv`, `.csv.gz`, `.jsonl`, `.ndjson`...; else Parquet)."""
    name = path.rsplit("/", 1)[-1].lower().removesuffix(COMPRESSED)
    return next((fmt for suffix, fmt in TEXT_SUFFIXES.items() if name.endswith(suffix)), PARQUET)


def table_stem(path: str) -> str:
    """A table file's name without its table ending (`prompts.csv.gz` → `prompts`)."""
    name = path.rstrip("/").rsplit("/", 1)[-1]
    suffix = next((s for s in sorted(TABLE_SUFFIXES, key=len, reverse=True) if name.lower().endswith(s)), "")
    return name[: len(name) - len(suffix)] if suffix and len(name) > len(suffix) else name


def one_format(files: Sequence[str], display: Callable[[str], str] = str) -> str:
    """The format every one of `files` has; TableError naming one file of each of two formats otherwise."""
    first: dict[str, str] = {}
    for f in files:
        first.setdefault(file_format(f), f)
    if len(first) > 1:
        (a, fa), (b, fb) = list(first.items())[:2]
        raise TableError(f"source holds {a} ({display(fa)}) and {b} ({display(fb)}) files; keep one format per "
                         f"source (a glob such as folder/*.csv picks one; names not ending .csv, .jsonl or .ndjson "
                         f"are read as Parquet)")
    return next(iter(first), PARQUET)


def text_columns(source: SourceConfig, routing_column: str = "") -> list[str]:
    """The columns the run uses as text, read as text from a CSV whatever their values look like."""
    mapped = {"negative_prompt": source.negative_prompt_column, **source.columns.by_field()}
    names = [source.id_column, routing_column,
             *(mapped.get(c, c) for c, family in OPTIONAL_INPUT_COLUMNS.items() if family in ("string", "uris"))]
    if source.template is None:
        names.append(source.prompt_column)
    else:
        names += source.template.columns()
    return [n for n in dict.fromkeys(names) if n]


def describe_files(fs: Any, files: Sequence[str], text: Sequence[str] = (),
                   display: Callable[[str], str] = str) -> dict[str, Facts]:
    """Schema and row-group sizes of every file (one format: `one_format`), read concurrently. CSV and JSON Lines
    files without rows are left out (unless every file is empty). Raises TableError.

    Args:
        fs: the pyarrow filesystem the paths are on.
        files: the paths, as `fs` names them.
        text: CSV columns to read as text (`text_columns`).
        display: how messages name a file (e.g. with its s3:// scheme).
    """
    from concurrent.futures import ThreadPoolExecutor

    fmt = one_format(files, display)
    workers = min(16 if fmt == PARQUET else 4, len(files))  # a CSV/JSON Lines file is held whole while read
    with ThreadPoolExecutor(max_workers=workers) as pool:
        found = dict(zip(files, pool.map(lambda f: describe_file(fs, f, text, display), files), strict=True))
    kept = {f: (schema, rows) for f, (schema, rows) in found.items() if fmt == PARQUET or any(rows)}
    return kept or dict(list(found.items())[:1])


def describe_file(fs: Any, path: str, text: Sequence[str] = (), display: Callable[[str], str] = str) -> Facts:
    """One file's schema and row-group sizes (Parquet: from its footer). Raises TableError."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fmt = file_format(path)
    if fmt == PARQUET:
        try:
            meta = pq.read_metadata(path, filesystem=fs)
        except (pa.ArrowInvalid, OSError) as exc:
            raise TableError(f"source file {display(path)} is not a readable Parquet file ({_first_line(exc)}); "
                             f"convert it to Parquet, or name a CSV or JSON Lines file .csv or .jsonl") from exc
        return meta.schema.to_arrow_schema(), tuple(meta.row_group(i).num_rows for i in range(meta.num_row_groups))
    table = _read_text(fs, path, fmt, None, None, text, display)
    if any(pa.types.is_binary(f.type) for f in table.schema):  # inferred as bytes: some value is not UTF-8
        raise _located(fs, path, fmt, display, ValueError("a column holds text that is not UTF-8"))
    if fmt == CSV and table.num_rows and _ends_in_open_quote(table):
        problem = _csv_problem(_lines(fs, path))
        if problem:
            raise TableError(f"source file {display(path)} line {problem[0]}: {problem[1]}; {CSV_FIX}")
    return table.schema, (table.num_rows,)


def read_file(fs: Any, path: str, columns: Sequence[str] | None = None, types: pa.Schema | None = None) -> pa.Table:
    """The `columns` (None: all) of one whole file, typed as `types` where a column is there (CSV and JSON Lines:
    read as those types; Parquet: as stored, the caller casts)."""
    import pyarrow.parquet as pq

    fmt = file_format(path)
    if fmt == PARQUET:
        return pq.read_table(path, filesystem=fs, columns=None if columns is None else list(columns))
    return _read_text(fs, path, fmt, columns, types)


def _read_text(fs: Any, path: str, fmt: str, columns: Sequence[str] | None, types: pa.Schema | None,
               text: Sequence[str] = (), display: Callable[[str], str] = str) -> pa.Table:
    """A CSV or JSON Lines file (decompressed by its ending) as a table: its `columns` (None: all), typed as
    `types` where given, else inferred over every row (`text`: CSV columns read as strings)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson

    given = {f.name: f.type for f in types} if types is not None else {}
    try:
        with fs.open_input_stream(path, compression="detect") as stream:
            if fmt == CSV:
                convert = pacsv.ConvertOptions(
                    column_types={**{c: pa.string() for c in text}, **given},
                    include_columns=None if columns is None else list(columns),
                    null_values=[""], strings_can_be_null=True)  # an empty cell is null; "NA" stays "NA"
                return pacsv.read_csv(stream, parse_options=pacsv.ParseOptions(newlines_in_values=True),
                                      convert_options=convert)
            wanted = list(given) if columns is None else list(columns)
            schema = pa.schema([pa.field(c, given[c]) for c in wanted if c in given]) if given else None
            covered = schema is not None and all(c in given for c in wanted)  # else the others are inferred
            options = pajson.ParseOptions(explicit_schema=schema,
                                          unexpected_field_behavior="ignore" if covered else "infer")
            table = pajson.read_json(stream, parse_options=options)
    except pa.ArrowInvalid as exc:
        if str(exc).startswith(("Empty CSV file", "Empty JSON file")):
            return pa.table({})
        raise _located(fs, path, fmt, display, exc) from exc
    except OSError as exc:
        raise TableError(f"cannot read source file {display(path)}: {_first_line(exc)}") from exc
    return table if columns is None else table.select([c for c in columns if c in table.column_names])


def _located(fs: Any, path: str, fmt: str, display: Callable[[str], str], exc: BaseException) -> TableError:
    """The error for an unreadable CSV/JSON Lines file, naming its first bad line when a scan finds it."""
    problem = (_csv_problem if fmt == CSV else _jsonl_problem)(_lines(fs, path))
    fix = CSV_FIX if fmt == CSV else JSONL_FIX
    if problem is None:
        return TableError(f"source file {display(path)} is not a readable {fmt} file ({_first_line(exc)}); {fix}")
    return TableError(f"source file {display(path)} line {problem[0]}: {problem[1]}; {fix}")


def _ends_in_open_quote(table: pa.Table) -> bool:
    """Whether a text value of the last row holds a line break: what a quote left open swallows (pyarrow reads
    such a field to the end of the file), so the rows are scanned for one."""
    last = table.slice(table.num_rows - 1).to_pylist()[0]
    return any(isinstance(v, str) and ("\n" in v or "\r" in v) for v in last.values())


def _lines(fs: Any, path: str, chunk_bytes: int = 1 << 20) -> Iterator[bytes]:
    """The file's lines (decompressed), each with its line break."""
    with fs.open_input_stream(path, compression="detect") as stream:
        rest = b""
        while chunk := stream.read(chunk_bytes):
            *lines, rest = (rest + chunk).split(b"\n")
            yield from (line + b"\n" for line in lines)
        if rest:
            yield rest


def _decoded(lines: Iterator[bytes], bad: list[int]) -> Iterator[str]:
    """`lines` as text (a leading byte-order mark dropped); stops at the first one that isn't UTF-8, recording
    its number in `bad`."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    for number, line in enumerate(lines, 1):
        try:
            yield decoder.decode(line)
        except UnicodeDecodeError:
            bad.append(number)
            return


def _csv_problem(lines: Iterator[bytes]) -> tuple[int, str] | None:
    """The first malformed record of a CSV file, as (line where it starts, what is wrong); None when it reads."""
    bad: list[int] = []
    reader = csv.reader(_decoded(lines, bad), strict=True)
    width, start = 0, 1
    try:
        for record in reader:
            if record and not width:
                width = len(record)
            elif record and len(record) != width:
                hint = " (a field holding a comma must be quoted)" if len(record) > width else ""
                return start, f"{len(record)} fields where the header has {width}{hint}"
            start = reader.line_num + 1
    except csv.Error as exc:
        if "end of data" in str(exc):
            return start, "a quoted field starting in this row is never closed"
        return start, f"{exc}"
    return (bad[0], "not UTF-8 text (save the file as UTF-8)") if bad else None


def _jsonl_problem(lines: Iterator[bytes]) -> tuple[int, str] | None:
    """The first line of a JSON Lines file that isn't one JSON object, or gives a column a value of another type
    than an earlier line did, as (line, what is wrong); None when every line reads."""
    bad: list[int] = []
    kinds: dict[str, tuple[str, int]] = {}
    for number, line in enumerate(_decoded(lines, bad), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            return number, f"not valid JSON ({exc.msg}, column {exc.colno})"
        if not isinstance(value, dict):
            return number, f"a JSON {_json_kind(value)}, not an object"
        for key, item in value.items():
            kind = _json_kind(item)
            if kind == "null":
                continue
            seen, where = kinds.setdefault(key, (kind, number))
            if seen != kind:
                return number, f"{key!r} is a {kind} but line {where} gave it a {seen}"
    return (bad[0], "not UTF-8 text (save the file as UTF-8)") if bad else None


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    kinds: dict[type, str] = {str: "string", list: "array", dict: "object"}
    return kinds.get(type(value), type(value).__name__)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
