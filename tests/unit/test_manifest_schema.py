"""The manifest column table (actors/manifest_schema.py) is the one source: README, schema and users follow it."""

from __future__ import annotations

import fnmatch
import math
import re

import numpy as np
import pyarrow as pa

from imagefleet.actors import manifest_schema as ms
from tests.helpers import REPO


def readme_section(title: str) -> str:
    text = (REPO / "README.md").read_text()
    start = text.index(f"### {title}\n")
    end = text.find("\n#", start + 1)
    return text[start:end if end != -1 else None]


def test_readme_lists_the_manifest_columns_in_order() -> None:
    section = readme_section("Output layout")
    listed = re.search(r"Manifest columns: `([^`]*)`", section)
    assert listed, "README.md's Output layout section has no `Manifest columns: `…`` list"
    names = [re.sub(r"\s*\(.*?\)", "", n).strip() for n in listed.group(1).split(",")]  # drop "(ok|error|…)"
    assert names == list(ms.NAMES), "README.md's manifest column list drifted from actors/manifest_schema.py"


def test_readme_lists_what_a_resumed_row_keeps() -> None:
    text = " ".join((REPO / "README.md").read_text().split())
    kept = re.search(r"keep what the earlier run recorded about them\**\s*\(([^)]*)\)", text)
    assert kept
    patterns = [p.strip(" `") for p in kept.group(1).split(",")]
    assert sorted(ms.CARRIED) == sorted(c for c in ms.NAMES if any(fnmatch.fnmatch(c, p) for p in patterns))


def test_table_is_well_formed() -> None:
    assert len(set(ms.NAMES)) == len(ms.NAMES)
    assert all(c.description and "\n" not in c.description for c in ms.COLUMNS)
    assert ms.SCHEMA.names == list(ms.NAMES)
    assert [ms.SCHEMA.field(c.name).type for c in ms.COLUMNS] == [c.type for c in ms.COLUMNS]
    # a resumed row tells "recorded" from "not recorded" by NaN (floats), '' (strings) or 0 (integers, e.g. a
    # draft's width): nothing else can carry
    assert all(pa.types.is_floating(c.flat) or pa.types.is_string(c.flat) or pa.types.is_integer(c.flat)
               for c in ms.COLUMNS if c.carried)
    # the report's stage timings are manifest columns it reads
    from imagefleet.pipelines.report import COLUMNS, STAGES

    assert set(STAGES) <= set(COLUMNS) == set(ms.REPORT_COLUMNS)


def test_pipeline_schema_is_the_table() -> None:
    from imagefleet.pipelines.schema import MANIFEST

    assert MANIFEST.equals(ms.SCHEMA) and MANIFEST.names == list(ms.NAMES)


def test_a_cached_rows_prior_keeps_only_recorded_values() -> None:
    """One `prior` column carries what an earlier run recorded (thin rows: not one column per value); values
    that stand for "nothing recorded" (null, NaN, '', 0) are left out, so the row's own value stays."""
    from imagefleet.actors.prompt_preprocessor import NO_PRIOR

    assert NO_PRIOR == {ms.PRIOR: ""} and ms.prior_values("") == {}
    carried = {"clip_score": 0.25, "draft_score": float("nan"), "route": "", "draft_width": 0, "requests": np.int32(2),
               "candidates": None, "mime": "image/png"}
    text = ms.prior_text("ab", 12, carried)
    assert ms.prior_values(text) == {"sha256": "ab", "bytes": 12, "clip_score": 0.25, "requests": 2,
                                     "mime": "image/png"}


def test_provider_and_billing_columns() -> None:
    """What a hosted image adds: its stored content type and what its requests cost or may have cost; a resumed row
    keeps them like cost_usd (the run report and WebDataset samples don't read them)."""
    by_name = {c.name: c for c in ms.COLUMNS}
    assert (by_name["mime"].type, by_name["requests"].type, by_name["maybe_billed_usd"].type) == (
        pa.string(), pa.int32(), pa.float64())
    for name in ("mime", "requests", "maybe_billed_usd"):
        assert by_name[name].carried and not by_name[name].shard and not by_name[name].report
    assert ms.empty_value("requests") == 0 and math.isnan(ms.empty_value("maybe_billed_usd"))
