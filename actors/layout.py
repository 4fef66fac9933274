"""The output layout: every path under `<output.uri>` spelled once (images, manifest, batches, shards, records)."""

from __future__ import annotations

import re

from imagefleet.actors.keys import KEY_HEX_CHARS

# Everything here is relative to the output root (`ObjectStore.uri_of` makes URIs of it) and pure, so the writer,
# the manifest commit, resume, exports and tests agree by construction. README.md's "Output layout" documents
# the same paths; tests/unit/test_output_layout.py pins them.

IMAGES_DIR = "images"
MANIFEST_DIR = "manifest"
STAGING_DIR = f"{MANIFEST_DIR}/_staging"
"""Where older versions staged a run's parts (`_staging/<attempt>/`, copied into `manifest/` at commit): an
interrupted old run's parts there are still read by resume, and the next commit removes the folder."""
MANIFEST_INDEX = f"{MANIFEST_DIR}/_manifest.json"
"""The commit point: the list of the current manifest's parts, written last (readers follow it)."""
LEASE = f"{MANIFEST_DIR}/_lease.json"
"""Which run owns the output right now (created with a conditional put, expires)."""
BATCHES_DIR = "_batches"
WEBDATASET_DIR = "webdataset"
WEBDATASET_INDEX = f"{WEBDATASET_DIR}/index.json"
RUN_JSON = "run.json"
LOGS_DIR = "logs"
"""`logs/<run_id>.log`: each run's log (what Ray and the actors printed, a failure's traceback)."""
REPORT_HTML = "report.html"
EVALUATIONS_DIR = "evaluations"
"""Optional `<name>.parquet` files of per-image metrics (column image_key + numeric columns, e.g. an offline
oracle's faithfulness or human ratings): the report shows their means per cascade route."""

# image format (`output.format`) → file extension of the stored object, and → its content type. A hosted
# provider's bytes are stored as sent, in the format their content type names (`format_of_mime`).
EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}
CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


def format_of_mime(mime: str) -> str:
    """The image format (`png`, `jpeg`, `webp`) a content type names, or '' for one images can't be stored as.

    Args:
        mime: a content type such as `image/png` (parameters and case are ignored; `image/jpg` is JPEG).

    Returns:
        The format name, or '' when it is not one of the stored formats.
    """
    base = mime.split(";", 1)[0].strip().lower()
    base = "image/jpeg" if base in ("image/jpg", "image/pjpeg") else base
    return next((fmt for fmt, ct in CONTENT_TYPES.items() if ct == base), "")


def image_ext(fmt: str) -> str:
    """File extension of images stored in `fmt` (`jpeg` is stored as `.jpg`).

    Args:
        fmt: an image format name (`png`, `jpeg`, `webp`).

    Returns:
        The extension without the dot.
    """
    try:
        return EXTENSIONS[fmt]
    except KeyError:
        raise ValueError(f"unknown image format {fmt!r}; expected one of {sorted(EXTENSIONS)}") from None


def image_rel(key: str, fmt: str) -> str:
    """Relative path of an image: `images/<k[:2]>/<k>.<ext>`.

    Only hex and a fixed extension go into the name, so user data can't escape the output prefix.

    Args:
        key: the image key (content hash, lowercase hex).
        fmt: the image format it is stored in.

    Returns:
        The path relative to the output root.
    """
    if len(key) != KEY_HEX_CHARS or any(c not in "0123456789abcdef" for c in key):
        raise ValueError(f"image key must be {KEY_HEX_CHARS} lowercase hex chars, got {key!r}")
    return f"{IMAGES_DIR}/{key[:2]}/{key}.{image_ext(fmt)}"


def image_pattern(fmt: str) -> str:
    """The image path pattern for people (plans, docs): `images/<key[:2]>/<key>.<ext>`."""
    return f"{IMAGES_DIR}/<key[:2]>/<key>.{image_ext(fmt)}"


def key_of_image(rel: str) -> str:
    """The image key an image path names (inverse of `image_rel`, any extension)."""
    return rel.rsplit("/", 1)[-1].split(".", 1)[0]


_UID = re.compile(r"[0-9a-f]{32}")


def attempt_prefix(attempt: str) -> str:
    """The name prefix of every manifest part of one run attempt (`<run_id>.<nonce>`): one LIST finds them."""
    return f"{MANIFEST_DIR}/part-{attempt}-"


def run_part(attempt: str, uid: str, rows: int) -> str:
    """Relative path of one manifest part of a run attempt, written once where it lives:
    `manifest/part-<attempt>-<uid>-<rows>r.parquet` (`uid`: 32 hex chars). It is part of the manifest once
    `_manifest.json` lists it; the row count in the name lets the commit check the rows from one listing."""
    if not _UID.fullmatch(uid) or rows < 0:
        raise ValueError(f"a part needs a 32-hex-char uid and a row count >= 0, got {uid!r}, {rows}")
    return f"{attempt_prefix(attempt)}{uid}-{rows}r.parquet"


_RUN_PART = re.compile(r"part-(.+)-[0-9a-f]{32}-([0-9]+)r\.parquet")


def run_part_rows(rel: str, attempt: str = "") -> int | None:
    """The row count a `run_part` name states, or None when `rel` is no such name (an older version's part), or,
    given `attempt`, a part of another attempt (`r.1`'s are not those of a run whose attempt is `r.1-x.2`)."""
    found = _RUN_PART.fullmatch(rel.removeprefix(f"{MANIFEST_DIR}/"))
    if rel.count("/") != 1 or found is None or (attempt and found.group(1) != attempt):
        return None
    return int(found.group(2))


def manifest_part(attempt: str, n: int) -> str:
    """Relative path of the n-th manifest part of one run attempt as older versions named it (copied there from
    staging at commit): outputs holding such parts read, resume and are collected the same way."""
    return f"{MANIFEST_DIR}/part-{attempt}-{n:05d}.parquet"


def is_manifest_part(rel: str) -> bool:
    """Whether `rel` is a manifest part (directly in `manifest/`, not staged by an older version): `run_part`
    names and older versions' alike; `_manifest.json` says which are the manifest."""
    name = rel.rsplit("/", 1)[-1]
    return (rel.count("/") == 1 and rel.startswith(f"{MANIFEST_DIR}/") and name.startswith("part-")
            and name.endswith(".parquet"))


def batches_dir(provider: str) -> str:
    """Folder of a hosted provider's batch records (batch id → image keys)."""
    return f"{BATCHES_DIR}/{provider}"


def batch_record(provider: str, batch_id: str) -> str:
    """Relative path of one batch record; a `/` in a provider's batch id can't nest folders."""
    return f"{batches_dir(provider)}/{batch_id.replace('/', '_')}.json"


def webdataset_dir(run_id: str) -> str:
    """Folder of one WebDataset export (named after the run that made it)."""
    return f"{WEBDATASET_DIR}/{run_id}"


def shard_rel(run_id: str, index: int) -> str:
    """Relative path of one shard of an export."""
    return f"{webdataset_dir(run_id)}/shard-{index:06d}.tar"


def shard_pattern(run_id: str, num_shards: int) -> str:
    """Brace pattern naming every shard of an export (what `webdataset.WebDataset` expands)."""
    return f"{webdataset_dir(run_id)}/shard-{{000000..{num_shards - 1:06d}}}.tar"
