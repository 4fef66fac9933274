"""Runs the graph by writing the manifest: staged parts first, committed last, then run.json."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from imagefleet.actors.hosted import STOPPED
from imagefleet.actors.layout import IMAGES_DIR, MANIFEST_DIR, RUN_JSON
from imagefleet.actors.manifest_schema import CARRIED, COLUMNS, PRIOR, iter_parts, prior_values
from imagefleet.actors.manifest_types import CODECS, encode
from imagefleet.actors.pass_through import PASS_THROUGH, decode_columns
from imagefleet.actors.storage import ObjectStore
from imagefleet.actors.stores import open_store
from imagefleet.configs.storage import StoreSpec
from imagefleet.pipelines.commit import Lease, commit, current_parts, stage_part
from imagefleet.pipelines.schema import MANIFEST
from imagefleet.pipelines.units import throughput

if TYPE_CHECKING:
    import pyarrow as pa
    import ray.data

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunSummary:
    """What one run did; printed at the end and saved in run.json."""

    run_id: str
    num_rows: int
    num_ok: int
    num_error: int
    num_refused: int
    num_skipped: int
    num_already_present: int
    num_written: int
    bytes_written: int
    cost_usd: float
    wall_s: float
    """Seconds from the start of the run's graph until its last manifest row was staged (before the commit)."""
    images_per_s: float
    """The run's throughput (`pipelines.units.THROUGHPUT_MEANS`): num_written / wall_s."""
    manifest_uri: str
    images_uri: str
    errors_sample: list[str]
    stopped: str = ""
    """Why the provider stopped the run's requests (quota, spend cap; '' = it didn't): its skipped rows say so."""
    unread: str = ""
    """Why the counts are zero although the run committed (the store failed while they were read back)."""
    started_at: float = 0.0
    """Unix time the run's graph started (where wall_s starts)."""
    commit_s: float = 0.0
    """Seconds the commit took after the last row was staged (row-count check, index write, garbage)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def write_manifest(ds: ray.data.Dataset, objects: ObjectStore, lease: Lease, expected_rows: int,
                   pass_through: pa.Schema | None = None) -> RunSummary:
    """Execute the graph and commit the manifest (pipelines/commit.py: the protocol).

    Parts stream into `manifest/`, unlisted, while images are written; only when every row is done, and
    there is exactly one row per requested image, do they become the current manifest (`_manifest.json`, written
    last), so a reader never sees a partial manifest.

    Args:
        ds: the run's lazy graph.
        objects: the output store.
        lease: this run's hold on the output.
        expected_rows: manifest rows the run must produce (one per requested image).
        pass_through: the prompt table's columns the manifest carries after its own (`SourceInfo.
            pass_through_schema`); None: none.
    """
    started = time.time()
    # 1 run: rows stream through the pools; this attempt's parts land in manifest/, unlisted until the commit
    from imagefleet.pipelines.staged_parts import StagedParts

    ds = manifest_rows(ds, lease.run_id, pass_through)
    ds.write_datasink(StagedParts(objects.location.uri, objects.spec, lease.attempt, part_rows(expected_rows)))
    return _commit_and_summarize(objects, lease, expected_rows, started)


def manifest_rows(ds: ray.data.Dataset, run_id: str, pass_through: pa.Schema | None = None) -> ray.data.Dataset:
    """The last stage's rows as manifest rows (lazy): the manifest's columns typed, then the pass-through ones."""
    return ds.map_batches(_to_manifest_rows, fn_kwargs={"run_id": run_id,  # type: ignore[arg-type]
                                                        "pass_through": pass_through}, batch_format="pyarrow")


def write_manifest_tables(tables: Iterable[pa.Table], objects: ObjectStore, lease: Lease,
                          expected_rows: int, pass_through: pa.Schema | None = None) -> RunSummary:
    """`write_manifest` for a run without Ray (pipelines/in_process.py): the last stage's output `tables` are
    staged as parts of `part_rows` rows here, then committed and summarized the same way."""
    import pyarrow as pa

    started = time.time()
    size = part_rows(expected_rows)
    pending: list[pa.Table] = []
    for table in tables:
        pending.append(_to_manifest_rows(table, lease.run_id, pass_through))
        if sum(t.num_rows for t in pending) >= size:
            stage_part(objects, lease.attempt, pa.concat_tables(pending))
            pending = []
    if pending:
        stage_part(objects, lease.attempt, pa.concat_tables(pending))
    return _commit_and_summarize(objects, lease, expected_rows, started)


def _commit_and_summarize(objects: ObjectStore, lease: Lease, expected_rows: int, started: float) -> RunSummary:
    wall = time.time() - started
    # 2 commit: rows checked from one listing, then one index write makes the parts current; older parts go
    commit(objects, lease, expected_rows)
    commit_s = round(time.time() - started - wall, 3)
    # 3 summarize from the committed parts (column batches: driver memory stays flat); the run is committed now,
    #   so a store that fails past its retry budget here leaves a summary that says so, not a failed run
    try:
        return replace(_summarize(objects, lease.run_id, wall, started), commit_s=commit_s)
    except Exception as exc:  # noqa: BLE001 - after the commit point nothing fails the run
        logger.warning("committed; the summary could not be read back: %s", exc)
        return RunSummary(lease.run_id, expected_rows, 0, 0, 0, 0, 0, 0, 0, 0.0, round(wall, 3), 0.0,
                          objects.uri_of(MANIFEST_DIR), objects.uri_of(IMAGES_DIR), [],
                          unread=f"committed, but the manifest could not be read back for this summary: {exc}",
                          started_at=started, commit_s=commit_s)


MAX_PART_ROWS = 512
"""Rows per manifest part, at most: what a killed run can lose per part in flight (see `part_rows`). Writer
output blocks already this big are not bundled at all: bundling them to 1,024 rows cost the driver ~25 MB at
100k rows (bench/scale.py)."""


def part_rows(expected_rows: int) -> int:
    """The fewest rows a staged manifest part gets: writer batches are bundled into parts of about 1/16 of the run,
    at most MAX_PART_ROWS. Each part is one write task and one object (measured on the
    stand-in benchmark: parts of one writer batch cost ~3 ms of CPU per image, parts of 512 rows ~1.3).

    The cost of bigger parts: a run killed before a bundle is staged leaves those images without a manifest row,
    so a rerun makes them again (their objects are found already stored and never written twice) — at most
    MAX_PART_ROWS images per part in flight."""
    return max(1, min(MAX_PART_ROWS, expected_rows // 16))


def _to_manifest_rows(batch: Any, run_id: str, pass_through: pa.Schema | None = None) -> Any:
    """Select and type the manifest columns (drops pipeline-internal ones). Rows an earlier run completed
    (`cached`) keep what that run recorded about their image (their PRIOR): score, route, draft, timing, cost.
    The prompt table's `pass_through` columns follow the manifest's own, typed as in the data."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = batch.num_rows
    priors = batch.column(PRIOR).to_pylist() if PRIOR in batch.column_names else []
    earlier = [prior_values(text or "") for text in priors]
    recorded_names = set().union(*earlier)  # the CARRIED columns some cached row of this batch recorded
    flat = {c.name: c.flat for c in COLUMNS}  # as the pipeline carries them; typed columns are encoded last
    columns = []
    for f in MANIFEST:
        if f.name == "run_id":
            column = pa.array([run_id] * n, pa.string())
        elif f.name not in batch.column_names:  # a stage this run didn't have (scorer, cascade)
            column = pa.nulls(n, flat[f.name])
        else:
            column = batch.column(f.name).cast(flat[f.name])
        if f.name in CARRIED and f.name in recorded_names:
            recorded = pa.array([values.get(f.name) for values in earlier], flat[f.name])
            column = pc.if_else(pc.is_valid(recorded), recorded, column)
        columns.append(encode(f.name, column) if f.name in CODECS else column)
    if not pass_through:
        return pa.Table.from_arrays(columns, schema=MANIFEST)
    texts = batch.column(PASS_THROUGH).to_pylist() if PASS_THROUGH in batch.column_names else [""] * n
    columns += decode_columns(texts, pass_through)
    return pa.Table.from_arrays(columns, schema=pa.schema([*MANIFEST, *pass_through]))


def manifest_dataset(objects: ObjectStore) -> Any:
    """The committed manifest as a lazy `pyarrow.dataset.Dataset` (the parts the index names; empty when none):
    the manifest's columns, then the prompt table's pass-through columns its run carried."""
    import pyarrow as pa
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

    fs, root = objects.arrow()
    paths = [f"{root}/{p}" for p in current_parts(objects)]
    schema = MANIFEST
    if paths:  # every part of a committed manifest is one run's: the first one's columns are all of them
        found = pq.read_schema(paths[0], filesystem=fs)
        # a manifest written before the typed columns holds them flat (`read_manifest_columns` types them)
        own = [found.field(f.name) if f.name in CODECS and f.name in found.names else f for f in MANIFEST]
        schema = pa.schema([*own, *(f for f in found if f.name not in MANIFEST.names)])
    return pads.dataset(paths, filesystem=fs, format="parquet", schema=schema)


def manifest_files(objects: ObjectStore) -> list[str]:
    """The URIs of the committed manifest's parts, in order (`s3://bucket/…/part-….parquet` or absolute local
    paths): what `_manifest.json` lists, so an engine given exactly these files (DuckDB's `read_parquet(list)`,
    Polars, Spark, pyarrow) reads the current manifest, typed, even while another run is committing. Empty when
    nothing is committed."""
    return [objects.uri_of(part) for part in current_parts(objects)]


def iter_manifest_batches(objects: ObjectStore, columns: list[str], batch_size: int = 65536) -> Any:
    """The committed manifest's selected columns, one record batch at a time, typed as MANIFEST (a column an
    older part lacks is null). Memory: a few parts, not the run (`actors.manifest_schema.iter_parts`)."""
    fs, root = objects.arrow()
    paths = [f"{root}/{part}" for part in current_parts(objects)]
    for table in iter_parts(fs, paths, columns, objects.spec.retry_budget_s):
        yield from table.to_batches(max_chunksize=batch_size)


def read_manifest_columns(output_uri: str, store: StoreSpec, columns: list[str]) -> Any:
    """The committed manifest (selected columns) of the output at `output_uri` as one Arrow table. For tests,
    benchmarks and small runs."""
    import pyarrow as pa

    batches = list(iter_manifest_batches(open_store(output_uri, store), columns))
    if batches:  # typed as the parts hold them (pass-through columns as in the prompt table)
        return pa.Table.from_batches(batches)
    return pa.schema([MANIFEST.field(c) if c in MANIFEST.names else pa.field(c, pa.null())
                      for c in columns]).empty_table()


def _summarize(objects: ObjectStore, run_id: str, wall: float, started: float) -> RunSummary:
    import pyarrow.compute as pc

    counts = {"rows": 0, "ok": 0, "error": 0, "refused": 0, "skipped": 0, "present": 0, "bytes": 0}
    cost = 0.0
    errors: list[str] = []
    stopped = ""
    cols = ["status", "error", "already_present", "bytes", "cost_usd"]  # cost: this run's, not carried
    for batch in iter_manifest_batches(objects, cols):
        status = batch.column("status")
        ok = pc.equal(status, "ok")
        counts["rows"] += batch.num_rows
        counts["ok"] += pc.sum(ok).as_py() or 0
        for name in ("error", "refused", "skipped"):
            counts[name] += pc.sum(pc.equal(status, name)).as_py() or 0
        present = pc.and_(ok, batch.column("already_present"))
        counts["present"] += pc.sum(present).as_py() or 0
        counts["bytes"] += pc.sum(pc.if_else(present, 0, batch.column("bytes"))).as_py() or 0
        cost += pc.sum(pc.if_else(present, 0.0, batch.column("cost_usd"))).as_py() or 0.0
        if len(errors) < 5:
            for msg in pc.filter(batch.column("error"), pc.invert(ok)).to_pylist()[: 5 - len(errors)]:
                errors.append(str(msg))
        if not stopped:
            by_provider = pc.filter(batch.column("error"), pc.starts_with(batch.column("error"), STOPPED))
            stopped = str(by_provider[0]) if len(by_provider) else ""
    return RunSummary(
        run_id=run_id,
        num_rows=counts["rows"],
        num_ok=counts["ok"],
        num_error=counts["error"],
        num_refused=counts["refused"],
        num_skipped=counts["skipped"],
        num_already_present=counts["present"],
        num_written=counts["ok"] - counts["present"],
        bytes_written=counts["bytes"],
        cost_usd=round(cost, 6),
        wall_s=round(wall, 3),
        images_per_s=round(throughput(counts["ok"] - counts["present"], round(wall, 3)), 3),
        manifest_uri=objects.uri_of(MANIFEST_DIR),
        images_uri=objects.uri_of(IMAGES_DIR),
        errors_sample=errors,
        stopped=stopped,
        started_at=started,
    )


def write_run_json(objects: ObjectStore, record: dict[str, Any]) -> str:
    """Write `run.json` next to the manifest (the caller passes a secret-free record)."""
    objects.put(RUN_JSON, json.dumps(record, indent=2, sort_keys=True, default=str).encode(), "application/json")
    return objects.uri_of(RUN_JSON)
