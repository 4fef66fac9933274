"""Hugging Face export: a committed output's `ok` images and their manifest rows as an ImageFolder dataset.

Layout under DEST (Hugging Face's documented ImageFolder with a metadata file, so `load_dataset("imagefolder",
data_dir=DEST)` needs no recipe and infers no `label` from folder names):

    DEST/train/<image_key>.<png|jpg|webp>     the stored bytes, copied once (not re-encoded)
    DEST/train/metadata.parquet               one row per image, written last: `file_name` (relative to the
                                              metadata file), `text` (the prompt: the caption column), the
                                              manifest's SHARD_FIELDS and the run's pass-through columns, typed

The manifest is read in batches (a few parts in memory, never the run) and each image goes through memory alone
(a few copy threads, one image each). A rerun into the same DEST copies only what is missing, rewrites the same
metadata and removes images an earlier export wrote that the output no longer has.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from imagefleet.actors.layout import CONTENT_TYPES, EXTENSIONS, MANIFEST_INDEX, image_rel
from imagefleet.actors.manifest_schema import SHARD_FIELDS
from imagefleet.actors.storage import ObjectStore, StorageError
from imagefleet.actors.store_errors import explain_s3_error
from imagefleet.pipelines.commit import PARQUET_TYPE, current_parts
from imagefleet.pipelines.manifest import iter_manifest_batches, manifest_dataset
from imagefleet.pipelines.schema import MANIFEST

if TYPE_CHECKING:
    import pyarrow as pa

logger = logging.getLogger(__name__)

FORMATS = ("hf-imagefolder",)
"""Export formats `imagefleet export --format` takes."""
SPLIT = "train"
METADATA = f"{SPLIT}/metadata.parquet"
MARKER = b"imagefleet.export"
"""Key of the metadata file's Parquet key-value metadata naming the output it was exported from (JSON)."""
NUM_COPY_THREADS = 16  # object reads and writes are I/O-bound; each thread holds one image
BATCH_ROWS = 8192
"""Manifest rows per step: their images are copied, then their metadata rows appended."""

_IMAGE_NAME = re.compile(rf"{SPLIT}/[0-9a-f]{{40}}\.(?:{'|'.join(EXTENSIONS.values())})")
_FORMAT_OF_EXT = {ext: fmt for fmt, ext in EXTENSIONS.items()}
_OWN_COLUMNS = ("file_name", "text")
_READ = ("status", "image_uri")
"""Manifest columns read besides SHARD_FIELDS: which rows have an image, and its extension."""


class ExportError(ValueError):
    """The export can't start or has nothing to do: one line saying what to change (the CLI exits 2)."""


@dataclass(frozen=True)
class ExportSummary:
    """What an export did."""

    dest_uri: str
    metadata_uri: str
    num_images: int
    """Rows of the metadata file (one per `ok` image)."""
    num_copied: int
    num_present: int
    """Images an earlier export into DEST had already copied."""
    num_removed: int
    """Images of an earlier export that the output no longer has, removed."""
    left_out: dict[str, int] = field(default_factory=dict)
    """Rows without an image, by status (error, refused, skipped)."""

    def line(self) -> str:
        """The command's one-line summary."""
        left = sum(self.left_out.values())
        why = ", ".join(f"{n} {status}" for status, n in sorted(self.left_out.items()))
        removed = f", {self.num_removed} no longer in the output removed" if self.num_removed else ""
        return (f"exported {_count(self.num_images, 'image')} to {self.dest_uri} ({self.num_copied} copied, "
                f"{self.num_present} already there{removed}); left out {_count(left, 'row')} without an image"
                f"{f' ({why})' if why else ''}; load: datasets.load_dataset(\"imagefolder\", "
                f"data_dir=\"{self.dest_uri}\")")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def export_imagefolder(source: ObjectStore, dest: ObjectStore) -> ExportSummary:
    """Export the committed output `source` into `dest` as a Hugging Face ImageFolder dataset.

    Args:
        source: the output (a run's `output.uri`).
        dest: where the dataset goes: empty, or holding an earlier export of the same output.

    Returns:
        What was exported, copied and left out.

    Raises:
        ExportError: no committed manifest, no `ok` image, or DEST holds something else.
        StorageError: a store can't be read or written (one line).
    """
    import pyarrow.parquet as pq

    # 1 the committed manifest (never a half-written run) and the columns its run carried
    with _store_errors(source.location.uri, "read"):
        extra = _pass_through(source)
    schema = metadata_schema(extra).with_metadata({MARKER: json.dumps({"output": source.location.uri})})
    # 2 what DEST holds: nothing, or an earlier export of this output (its images are kept, not copied again)
    with _store_errors(dest.location.uri, "read"):
        present = _earlier_export(dest, source.location.uri)
    # 3 the manifest in batches: each batch's images copied, then its rows appended to a local metadata file
    counts: Counter[str] = Counter()  # images, copied, present
    left_out: Counter[str] = Counter()  # rows without an image, by status
    fd, tmp = tempfile.mkstemp(suffix=".parquet", prefix="imagefleet-hf-")
    os.close(fd)
    try:
        with pq.ParquetWriter(tmp, schema) as writer, ThreadPoolExecutor(NUM_COPY_THREADS) as pool:
            for batch in _batches(source, [f.name for f in extra]):
                rows, names = _image_rows(batch, left_out)
                copied = _copy_images(source, dest, pool, rows, names, present)
                counts["copied"] += copied
                counts["present"] += len(set(names)) - copied
                if rows.num_rows:
                    writer.write_table(metadata_rows(rows, names, schema))
                    counts["images"] += rows.num_rows
        if not counts["images"]:
            raise ExportError(f"nothing to export: the manifest of {source.location.uri} has no ok image "
                              f"({sum(left_out.values())} rows without one); run the job (again, or with "
                              f"--retry-failed) first")
        # 4 the metadata file last (a reader sees the earlier export or this one, whole), then the images no row
        #   names any more (an earlier export's, of rows the output has since dropped)
        with _store_errors(dest.location.uri, "write"):
            dest.put_file(METADATA, tmp, PARQUET_TYPE)
            for rel in present:
                dest.delete(rel)
    finally:
        os.unlink(tmp)
    return ExportSummary(dest.location.uri, dest.uri_of(METADATA), counts["images"], counts["copied"],
                         counts["present"], len(present), dict(sorted(left_out.items())))


def metadata_schema(extra: list[pa.Field]) -> pa.Schema:
    """The metadata file's columns: `file_name`, `text`, the manifest's SHARD_FIELDS, then the pass-through
    columns `extra` under the names and types `datasets` reads them by (`hf_name`, `hf_type`)."""
    import pyarrow as pa

    fields = [pa.field("file_name", pa.string()), pa.field("text", pa.string())]
    fields += [MANIFEST.field(name).with_type(hf_type(MANIFEST.field(name).type)) for name in SHARD_FIELDS]
    taken = {f.name for f in fields}
    for f in extra:
        name = hf_name(f.name, taken)
        taken.add(name)
        fields.append(pa.field(name, hf_type(f.type)))
    return pa.schema(fields)


def metadata_rows(rows: pa.Table, names: list[str], schema: pa.Schema) -> pa.Table:
    """Metadata rows for `rows` (ok rows with images, `names` their files under DEST), typed as `schema`
    (`metadata_schema`: the columns after `file_name` and `text` are the rows' own, in order)."""
    import pyarrow as pa

    files = pa.array([name.rsplit("/", 1)[-1] for name in names], pa.string())
    own = [c for c in rows.column_names if c not in _READ]
    columns = [files, rows.column("prompt"), *(rows.column(c) for c in own)]
    return pa.Table.from_arrays([c.cast(f.type) for c, f in zip(columns, schema, strict=True)], schema=schema)


def hf_name(name: str, taken: set[str]) -> str:
    """The metadata column a pass-through column becomes: its own name, unless `datasets` would read it as an
    image path (`file_name`, `*_file_name`, `file_names`, `*_file_names` get `_value`) or it is a column the
    export adds or ImageFolder makes (`text`, `image`: `source_<name>`); never one of `taken`."""
    if name.endswith(("file_name", "file_names")):
        name = f"{name}_value"
    elif name in (*_OWN_COLUMNS, "image"):
        name = f"source_{name}"
    while name in taken:
        name = f"source_{name}"
    return name


def hf_type(t: pa.DataType) -> pa.DataType:
    """`t` as `datasets` can hold it: maps (which it has no feature for) become lists of {key, value} structs,
    the same entries in order; every other type is kept."""
    import pyarrow as pa

    if pa.types.is_map(t):
        entry = pa.struct([pa.field("key", hf_type(t.key_type), nullable=False),
                           pa.field("value", hf_type(t.item_type))])
        return pa.list_(entry)
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        inner = t.value_field.with_type(hf_type(t.value_type))
        if pa.types.is_fixed_size_list(t):
            return pa.list_(inner, t.list_size)
        return pa.large_list(inner) if pa.types.is_large_list(t) else pa.list_(inner)
    if pa.types.is_struct(t):
        return pa.struct([t.field(i).with_type(hf_type(t.field(i).type)) for i in range(t.num_fields)])
    return t


def _pass_through(source: ObjectStore) -> list[pa.Field]:
    """The pass-through columns of the committed manifest (those after the manifest's own); ExportError without
    a commit."""
    if not current_parts(source) and not source.exists(MANIFEST_INDEX):
        raise ExportError(f"no committed manifest at {source.location.uri}: pass the output.uri of a finished run")
    return [f for f in manifest_dataset(source).schema if f.name not in MANIFEST.names]


def _earlier_export(dest: ObjectStore, output: str) -> dict[str, int]:
    """The images DEST holds (name → size) when it is empty or an export of `output`; ExportError otherwise.
    Memory: ~150 bytes per image an earlier export left (none for a new DEST)."""
    import pyarrow.parquet as pq

    present: dict[str, int] = {}
    metadata = False
    for rel, size in dest.list(""):
        if rel == METADATA:
            metadata = True
        elif _IMAGE_NAME.fullmatch(rel):
            present[rel] = size
        else:
            raise ExportError(f"{dest.location.uri} holds {rel}, which an export doesn't write: export into an "
                              f"empty folder or prefix (or one an earlier export of this output wrote)")
    if metadata:
        fs, root = dest.arrow()
        found = (pq.read_schema(f"{root}/{METADATA}", filesystem=fs).metadata or {}).get(MARKER)
        origin = str(json.loads(found).get("output", "")) if found else ""
        if origin != output:
            what = f"an export of {origin}" if origin else f"a {METADATA} imagefleet didn't write"
            raise ExportError(f"{dest.location.uri} holds {what}: export into an empty folder or prefix")
    return present


def _batches(source: ObjectStore, extra: list[str]) -> Iterator[pa.RecordBatch]:
    columns = [*_READ, *SHARD_FIELDS, *extra]  # `metadata_rows` relies on this order
    with _store_errors(source.location.uri, "read"):
        yield from iter_manifest_batches(source, columns, BATCH_ROWS)


def _image_rows(batch: pa.RecordBatch, left_out: Counter[str]) -> tuple[pa.Table, list[str]]:
    """The batch's `ok` rows with a stored image and each one's file under DEST (`train/<key>.<ext>`); the rest
    are counted in `left_out` by status."""
    import pyarrow as pa
    import pyarrow.compute as pc

    table = pa.Table.from_batches([batch])
    has_image = pc.and_(pc.equal(table.column("status"), "ok"),
                        pc.and_(pc.not_equal(table.column("image_key"), ""),
                                pc.not_equal(table.column("image_uri"), "")))
    has_image = pc.fill_null(has_image, False)
    left = pc.filter(table.column("status"), pc.invert(has_image)).to_pylist()
    left_out.update(status if status and status != "ok" else "without an image" for status in left)
    rows = table.filter(has_image)
    names = [f"{SPLIT}/{key}.{uri.rsplit('.', 1)[-1]}" for key, uri in
             zip(rows.column("image_key").to_pylist(), rows.column("image_uri").to_pylist(), strict=True)]
    return rows, names


def _copy_images(source: ObjectStore, dest: ObjectStore, pool: ThreadPoolExecutor, rows: pa.Table,
                 names: list[str], present: dict[str, int]) -> int:
    """Copy the images of `rows` that DEST lacks (or holds torn: another size than the manifest's `bytes`);
    returns how many were copied. `present` loses every name this export keeps."""
    wanted: dict[str, int] = dict(zip(names, rows.column("bytes").to_pylist(), strict=True))
    todo = [name for name, size in wanted.items() if present.pop(name, None) != size]

    def copy(name: str) -> None:
        key, ext = name.rsplit("/", 1)[-1].split(".", 1)
        fmt = _FORMAT_OF_EXT[ext]
        rel = image_rel(key, fmt)
        with _store_errors(source.uri_of(rel), "read"):
            data = source.get(rel)
        with _store_errors(dest.uri_of(name), "write"):
            dest.put(name, data, CONTENT_TYPES[fmt])

    list(pool.map(copy, todo))  # list() re-raises the first failure
    return len(todo)


@contextmanager
def _store_errors(uri: str, verb: str) -> Iterator[None]:
    """A store's failure as one StorageError line naming `uri` (botocore's and the filesystem's errors)."""
    try:
        yield
    except (ExportError, StorageError):
        raise
    except OSError as exc:
        reason = exc.strerror if exc.strerror else str(exc)
        raise StorageError(f"cannot {verb} {uri}: {reason}") from exc
    except Exception as exc:
        if type(exc).__module__.startswith(("botocore", "boto3")):
            raise StorageError(explain_s3_error(exc, uri)) from exc
        raise
