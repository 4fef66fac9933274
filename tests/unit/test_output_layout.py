"""The output layout (actors/layout.py): the paths README.md documents, spelled literally here once."""

from __future__ import annotations

import pytest

from imagefleet.actors import layout
from imagefleet.actors.keys import image_key

KEY = "ab" + "0" * 38
UID = "0123456789abcdef" * 2


def test_paths_are_the_documented_ones() -> None:
    assert layout.image_rel(KEY, "png") == f"images/ab/{KEY}.png"
    assert layout.image_rel(KEY, "webp") == f"images/ab/{KEY}.webp"
    assert layout.image_pattern("png") == "images/<key[:2]>/<key>.png"
    assert layout.MANIFEST_DIR == "manifest"
    assert layout.run_part("r7.ab12", UID, 512) == f"manifest/part-r7.ab12-{UID}-512r.parquet"
    assert layout.attempt_prefix("r7.ab12") == "manifest/part-r7.ab12-"
    assert layout.manifest_part("r7", 3) == "manifest/part-r7-00003.parquet"  # older versions' committed copies
    assert layout.STAGING_DIR == "manifest/_staging"  # older versions' staged parts
    assert layout.batches_dir("openai") == "_batches/openai"
    assert layout.batch_record("gemini", "batches/x1") == "_batches/gemini/batches_x1.json"
    assert layout.webdataset_dir("r7") == "webdataset/r7"
    assert layout.shard_rel("r7", 12) == "webdataset/r7/shard-000012.tar"
    assert layout.shard_pattern("r7", 3) == "webdataset/r7/shard-{000000..000002}.tar"
    assert layout.WEBDATASET_INDEX == "webdataset/index.json"
    assert (layout.RUN_JSON, layout.REPORT_HTML) == ("run.json", "report.html")


def test_jpeg_is_stored_as_jpg() -> None:
    """The writer, the plan (`--dry-run`) and readers all take the extension from here."""
    assert layout.image_ext("jpeg") == "jpg"
    assert layout.image_rel(KEY, "jpeg").endswith(".jpg")
    assert layout.image_pattern("jpeg") == "images/<key[:2]>/<key>.jpg"
    with pytest.raises(ValueError, match="unknown image format"):
        layout.image_ext("gif")


def test_image_paths_never_escape_the_prefix() -> None:
    key = image_key(model="m", revision="main", scheduler="", prompt="a cat", negative_prompt="", seed=1, width=64,
                    height=64, num_steps=2, guidance_scale=0.0)
    assert layout.image_rel(key, "png") == f"images/{key[:2]}/{key}.png"
    for bad in ("../../etc/passwd", "a/b", key[:-1] + "/", "", key.upper()):
        with pytest.raises(ValueError):
            layout.image_rel(bad, "png")


def test_parsing_inverts_building() -> None:
    assert layout.key_of_image(layout.image_rel(KEY, "jpeg")) == KEY
    assert layout.is_manifest_part(layout.manifest_part("r7", 0))
    assert layout.is_manifest_part(layout.run_part("r7.1", UID, 3))
    assert not layout.is_manifest_part(f"{layout.STAGING_DIR}/r7/part-0.parquet")  # staged by an older version
    assert not layout.is_manifest_part("manifest/notes.txt")
    assert layout.MANIFEST_INDEX == "manifest/_manifest.json" and layout.LEASE == "manifest/_lease.json"


def test_a_part_name_states_its_rows_and_whose_it_is() -> None:
    """The commit counts rows from one listing and takes only its own attempt's parts: `r.1`'s listing prefix
    also matches the parts of a run named `r.1-x`, whose attempt is not `r.1`."""
    part = layout.run_part("r.1", UID, 37)
    assert layout.run_part_rows(part) == 37 and layout.run_part_rows(part, "r.1") == 37
    other = layout.run_part("r.1-x.2", UID, 5)
    assert other.startswith(layout.attempt_prefix("r.1")) and layout.run_part_rows(other, "r.1") is None
    assert layout.run_part_rows(other, "r.1-x.2") == 5
    assert layout.run_part_rows(layout.manifest_part("r.1", 0)) is None  # an older version's name
    assert layout.run_part_rows(f"{layout.STAGING_DIR}/{part.rsplit('/', 1)[1]}") is None  # not in manifest/
    with pytest.raises(ValueError, match="32-hex-char uid"):
        layout.run_part("r.1", "../x", 1)


def test_plan_text_names_the_stored_extension() -> None:
    """`--dry-run` prints the path the writer really uses (`.jpg` for jpeg, not the format name)."""
    import pyarrow as pa

    from imagefleet.configs.loader import parse_config
    from imagefleet.jobs.run_text import plan_text
    from imagefleet.pipelines.text_to_image import SourceInfo
    from tests.helpers import sleep_job

    raw = sleep_job("in.parquet", "out")
    raw["output"]["format"] = "jpeg"
    from imagefleet.configs.storage import StoreSpec
    from imagefleet.pipelines.plan import Stores, make_plan

    cfg = parse_config(raw)
    source = SourceInfo(files=["in.parquet"], num_rows=1, schema=pa.schema([("prompt", pa.string())]))
    plan = make_plan(cfg, Stores(source=StoreSpec(kind="local"), output=StoreSpec(kind="local")), ["prompt"], 1)
    assert "/images/<key[:2]>/<key>.jpg  +  manifest/  +  run.json" in plan_text(cfg, source, plan)


def test_hosted_images_stored_as_sent_are_named_in_the_plan() -> None:
    """A hosted API's bytes are kept in its own format: the plan (and serve's hint) say so, not output.format."""
    from imagefleet.configs.loader import parse_config
    from imagefleet.jobs.run_text import odd_formats, stored_format
    from tests.helpers import sleep_job

    raw = sleep_job("in.parquet", "out")
    raw["generators"]["gpt"] = {"backend": "openai", "model": "gpt-image-2", "output_format": "jpeg"}
    raw["generators"]["nano"] = {"backend": "gemini", "model": "gemini-3.1-flash-image"}
    raw["routing"] = {"mode": "fanout", "fanout": ["gpt", "nano", "sleepy"]}
    cfg = parse_config(raw)
    assert stored_format(cfg, "gpt") == "jpeg" and stored_format(cfg, "nano") == "" and \
        stored_format(cfg, "sleepy") == "png"
    odd = odd_formats(cfg)
    assert set(odd) == {"gpt", "nano"} and odd["gpt"].startswith("<key>.jpg") and "the API sends" in odd["nano"]
    raw["output"]["keep_provider_bytes"] = False  # re-encoded to output.format
    assert odd_formats(parse_config(raw)) == {}
