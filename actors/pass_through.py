"""Pass-through columns: the prompt table's own columns (`source.pass_through`), carried to the manifest unchanged.

Their values ride through the pools as one text column, PASS_THROUGH (compact JSON per row, keyed by manifest
column name), as PRIOR does for an earlier run's values: the stages between the preprocessor and the manifest pass
it on untouched, and numpy batches can't change its types (an int64 column with nulls would come out as floats).
The manifest step turns it back into columns of the input's Arrow types (`decode_columns`), so an int64 `label`
stays int64, a string `sku` a string, a list or a struct the same list or struct, and a null stays null. The
values never enter the image key.

JSON holds what Arrow gives it after `json_type`: dates, times, timestamps and durations as their integers,
decimals as text, and binary cells as base64 (JSON has no bytes); decoding reverses each exactly.
"""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

PASS_THROUGH = "pass_through"
"""The pipeline column holding a row's pass-through values ('' when the run carries none, or none could be)."""

SOURCE_PREFIX = "source_"
"""A prompt-table column named like a manifest column is carried as `source_<name>` (it never replaces the
manifest's own column)."""


def manifest_name(column: str, manifest_names: frozenset[str] | set[str]) -> str:
    """The manifest column a pass-through `column` becomes: its own name, or `source_<name>` when the manifest
    has a column of that name."""
    return f"{SOURCE_PREFIX}{column}" if column in manifest_names else column


def carry_problem(t: pa.DataType) -> str:
    """Why a column of type `t` can't be carried ('' when it can: every type Parquet stores but intervals)."""
    import pyarrow as pa

    if isinstance(t, pa.ExtensionType) or pa.types.is_union(t) or pa.types.is_interval(t):
        return f"has type {t}, which the manifest can't carry"
    if pa.types.is_dictionary(t):
        return carry_problem(t.value_type)
    if _is_list(t):
        return carry_problem(t.value_type)
    if pa.types.is_map(t):
        return carry_problem(t.key_type) or carry_problem(t.item_type)
    if pa.types.is_struct(t):
        names = [t.field(i).name for i in range(t.num_fields)]
        if len(set(names)) < len(names):
            return f"has type {t}, a struct naming a field twice, which the manifest can't carry"
        return next((p for p in (carry_problem(t.field(i).type) for i in range(t.num_fields)) if p), "")
    return ""


def _is_list(t: pa.DataType) -> bool:
    import pyarrow as pa

    return bool(pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)
                or pa.types.is_list_view(t) or pa.types.is_large_list_view(t))


def stored_type(t: pa.DataType) -> pa.DataType:
    """The manifest's type for a pass-through column of type `t`: `t` itself, but a dictionary as its values and a
    view as its plain layout (the same values; Parquet stores them so anyway)."""
    import pyarrow as pa

    if pa.types.is_dictionary(t):
        return stored_type(t.value_type)
    if pa.types.is_string_view(t):
        return pa.string()
    if pa.types.is_binary_view(t):
        return pa.binary()
    if pa.types.is_list(t) or pa.types.is_list_view(t):
        return pa.list_(t.value_field.with_type(stored_type(t.value_type)))
    if pa.types.is_large_list(t) or pa.types.is_large_list_view(t):
        return pa.large_list(t.value_field.with_type(stored_type(t.value_type)))
    if pa.types.is_fixed_size_list(t):
        return pa.list_(t.value_field.with_type(stored_type(t.value_type)), t.list_size)
    if pa.types.is_map(t):
        return pa.map_(t.key_field.with_type(stored_type(t.key_type)), t.item_field.with_type(stored_type(t.item_type)),
                       t.keys_sorted)
    if pa.types.is_struct(t):
        return pa.struct([t.field(i).with_type(stored_type(t.field(i).type)) for i in range(t.num_fields)])
    return t


def json_type(t: pa.DataType) -> pa.DataType:
    """The type a column of type `t` is cast to before its values go into JSON (and is read back as): temporal
    types as their integers, decimals as text, dictionaries as their values, views as plain strings and lists;
    any other type as it is. Casting back to `t` is exact."""
    import pyarrow as pa

    if pa.types.is_dictionary(t):
        return json_type(t.value_type)
    if pa.types.is_date32(t) or pa.types.is_time32(t):
        return pa.int32()
    if pa.types.is_temporal(t):  # date64, time64, timestamp, duration
        return pa.int64()
    if pa.types.is_decimal(t):
        return pa.string()
    if pa.types.is_string_view(t):
        return pa.string()
    if pa.types.is_binary_view(t):
        return pa.binary()
    if pa.types.is_fixed_size_list(t):
        return pa.list_(pa.field(t.value_field.name, json_type(t.value_type)), t.list_size)
    if pa.types.is_list(t) or pa.types.is_list_view(t):
        return pa.list_(pa.field(t.value_field.name, json_type(t.value_type)))
    if pa.types.is_large_list(t) or pa.types.is_large_list_view(t):
        return pa.large_list(pa.field(t.value_field.name, json_type(t.value_type)))
    if pa.types.is_map(t):
        return pa.map_(json_type(t.key_type), json_type(t.item_type), t.keys_sorted)
    if pa.types.is_struct(t):
        return pa.struct([t.field(i).with_type(json_type(t.field(i).type)) for i in range(t.num_fields)])
    return t


def encode_rows(table: pa.Table, names: dict[str, str], max_bytes: int) -> list[tuple[str, str]]:
    """Each row's pass-through values as (PASS_THROUGH text, problem): the text is '' and the problem says why
    when the row's values can't be carried (a text cell that is not UTF-8, more than `max_bytes` of JSON).

    Args:
        table: the prompt table's batch (it holds every column of `names`).
        names: prompt-table column → manifest column.
        max_bytes: the most JSON bytes one row may carry (`source.max_pass_through_bytes`).
    """
    n = table.num_rows
    if not names:
        return [("", "")] * n
    problems = [""] * n
    values = {out: _values(table.column(column), column, problems) for column, out in names.items()}
    rows: list[tuple[str, str]] = []
    for i in range(n):
        if problems[i]:
            rows.append(("", problems[i]))
            continue
        text = json.dumps({out: values[out][i] for out in values}, separators=(",", ":"), ensure_ascii=False,
                          default=_bytes_as_text)
        size = len(text.encode())
        if size > max_bytes:
            rows.append(("", f"pass-through columns hold {size:,} bytes of JSON in this row (limit "
                             f"source.max_pass_through_bytes={max_bytes:,}); raise the limit or leave the large "
                             f"columns out of source.pass_through"))
            continue
        rows.append((text, ""))
    return rows


def _values(column: Any, name: str, problems: list[str]) -> list[Any]:
    """The column's cells as JSON-ready Python values; a cell that can't be read (text that is not UTF-8) is None
    and its row's problem says so."""
    import pyarrow as pa

    target = json_type(column.type)
    try:
        return list((column.cast(target) if target != column.type else column).to_pylist())
    except (UnicodeDecodeError, pa.ArrowInvalid):
        pass
    out: list[Any] = []
    for i in range(len(column)):  # only a column holding a bad cell is read cell by cell
        try:
            cell = column.slice(i, 1)
            out.append((cell.cast(target) if target != column.type else cell).to_pylist()[0])
        except (UnicodeDecodeError, pa.ArrowInvalid):
            out.append(None)
            problems[i] = problems[i] or f"pass-through column {name!r} is not valid UTF-8 text in this row"
    return out


def _bytes_as_text(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    raise TypeError(f"a pass-through value of type {type(value).__name__} can't be written as JSON")


def decode_columns(texts: list[Any], schema: pa.Schema) -> list[pa.Array]:
    """The manifest's pass-through columns (one per field of `schema`, typed as it: `stored_type` of the input's
    types) from the rows' PASS_THROUGH texts; a row without values ('' or null) is null in each."""
    import pyarrow as pa

    rows = [json.loads(text) if text else {} for text in texts]
    columns = []
    for f in schema:
        target = json_type(f.type)
        values = [row.get(f.name) for row in rows]
        if _walks(target):
            values = [_restore(v, target) for v in values]
        column = pa.array(values, target)
        columns.append(column.cast(f.type) if target != f.type else column)
    return columns


def _walks(t: pa.DataType) -> bool:
    """Whether values of JSON type `t` hold something JSON changed: bytes (base64 text) or map entries (pairs as
    lists)."""
    import pyarrow as pa

    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t) or pa.types.is_map(t):
        return True
    if _is_list(t):
        return _walks(t.value_type)
    if pa.types.is_struct(t):
        return any(_walks(t.field(i).type) for i in range(t.num_fields))
    return False


def _restore(value: Any, t: pa.DataType) -> Any:
    """A JSON value back as Arrow takes it for type `t` (base64 text as bytes, map entries as pairs)."""
    import pyarrow as pa

    if value is None or not _walks(t):
        return value
    if pa.types.is_map(t):
        return [(_restore(k, t.key_type), _restore(v, t.item_type)) for k, v in value]
    if _is_list(t):
        return [_restore(v, t.value_type) for v in value]
    if pa.types.is_struct(t):
        return {t.field(i).name: _restore(value.get(t.field(i).name), t.field(i).type) for i in range(t.num_fields)}
    return base64.b64decode(value)
