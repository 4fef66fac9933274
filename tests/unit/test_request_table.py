"""The per-image request table (configs/request.py): consistent with what derives from it, and the one place a new
per-row setting is declared."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa

from imagefleet.configs.request import BY_NAME, KEY_SETTINGS, REQUEST, ROW_COLUMNS, GenerationDefaults
from tests.helpers import REPO

ORIGINAL_KEY_SETTINGS = ("seed", "width", "height", "num_steps", "guidance_scale", "negative_prompt")
"""Settings every image key has held since the first stored image (test_golden_keys pins their spelling)."""


def test_generator_defaults_match_the_table() -> None:
    fields = GenerationDefaults.model_fields
    for s in REQUEST:
        if s.default == "generator":
            assert s.name in fields, f"{s.name}: default from the generator, but GenerationDefaults has no field"
            python = {"int32": int, "int64": int, "float64": float, "text": str}[s.kind]
            assert fields[s.name].annotation is python, s.name


def test_a_later_key_setting_leaves_existing_keys_alone() -> None:
    for name in KEY_SETTINGS:
        assert BY_NAME[name].key_when_set or name in ORIGINAL_KEY_SETTINGS, \
            f"{name} would re-key every stored image: mark it key_when_set"


def test_settings_rows_carry_are_manifest_columns_of_their_type() -> None:
    from imagefleet.actors.manifest_schema import FLAT_SCHEMA

    arrow = {"int32": pa.int32(), "int64": pa.int64(), "float64": pa.float64(), "text": pa.string()}
    for name in ROW_COLUMNS:  # as the pipeline carries them (the manifest types `adapters` as a list of structs)
        assert FLAT_SCHEMA.field(name).type == arrow[BY_NAME[name].kind], name


def test_the_column_mapping_and_schema_check_follow_the_table() -> None:
    from imagefleet.configs.source import ColumnNames
    from imagefleet.pipelines.schema import OPTIONAL_INPUT_COLUMNS

    assert set(ColumnNames().by_field()) == {s.column for s in REQUEST if s.column}
    assert all(s.column in OPTIONAL_INPUT_COLUMNS for s in REQUEST if s.column)


ADD_STYLE = '''
    Setting("style", "text", "style preset", column="style", key_when_set=True, heavy=True, resumed=True),
)
'''

PROBE = '''
import numpy as np, pyarrow as pa
from imagefleet.actors.escalator import Escalator
from imagefleet.actors.generation import _request
from imagefleet.actors.backend_io import GENERATOR_INPUT_COLUMNS
from imagefleet.actors.manifest_schema import SCHEMA
from imagefleet.actors.prompt_preprocessor import PromptPreprocessor
from imagefleet.actors.image_records import RECORD_FIELDS
from imagefleet.configs.loader import parse_config
from imagefleet.configs.source import ColumnNames
from imagefleet.pipelines.slices import prep_config
from imagefleet.pipelines.serve_protocol import parse_generate_request

job = {"name": "t", "seed": 7, "source": {"uri": "p.parquet", "columns": {"style": "look"}}, "output": {"uri": "o"},
       "generators": {"d": {"backend": "diffusers", "model": "org/d", "defaults": {"width": 64, "height": 64}},
                      "h": {"backend": "diffusers", "model": "org/h", "defaults": {"style": "noir"}}},
       "routing": {"mode": "cascade", "default": "d", "cascade": {"draft": "d", "escalate": "h", "threshold": 0.5}},
       "scorer": {"backend": "rule"}}
cfg = parse_config(job)
prep = prep_config(cfg)
out = dict(PromptPreprocessor(prep)(pa.table({"id": ["a", "b", "c"], "prompt": ["fox"] * 3,
                                               "seed": [1, 1, 1], "look": [None, "", "watercolor"]})))
keys = dict(zip(out["id"], out["image_key"]))
print("KEYS", keys["a"], keys["b"], keys["c"])
print("EXPLICIT", dict(zip(out["id"], out["explicit"]))["c"])
n = len(out["id"])
out.update(status=np.array(["generated"] * n, dtype=object), clip_score=np.zeros(n),
           image=np.array([b"x"] * n, dtype=object), image_mime=np.array([""] * n, dtype=object))
esc = Escalator(cfg.routing.cascade, "h", prep.generators["h"])(out)
print("HEAVY", dict(zip(esc["id"], esc["style"])))
print("REQUEST", _request(esc, 0).settings)
print("READS", "style" in GENERATOR_INPUT_COLUMNS, "style" in RECORD_FIELDS, SCHEMA.field("style").type)
print("COLUMNS", ColumnNames().of("style"), cfg.source.columns.of("style"))
print("SERVE", parse_generate_request(b'{"prompt": "fox", "style": "ink"}', "", default_format="png",
                                      default_response="json", max_request_bytes=10000, max_images=4).row)
'''


def test_adding_a_per_row_setting_is_one_table_row(tmp_path: Path) -> None:
    """ARCHITECTURE.md's worked example, done for real in a copy: `style` is one `Setting` and one
    `GenerationDefaults` field, both in configs/request.py. Nothing else is edited, and the setting is read from its
    column, keyed, named in `explicit`, taken from the heavy generator on escalation, handed to the backend,
    recorded for resume, in the manifest, mappable in `source.columns` and accepted by `serve` — while the keys of
    rows that don't set it stay what they were."""
    for package in ("configs", "actors", "pipelines"):
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "tests", tmp_path / "tests", ignore=shutil.ignore_patterns("__pycache__", "*.parquet"))
    (tmp_path / "imagefleet").mkdir()  # the package, its subpackages the copies (as in the repository: symlinks)
    shutil.copy(REPO / "imagefleet" / "__init__.py", tmp_path / "imagefleet")
    for package in ("configs", "actors", "pipelines", "jobs"):
        (tmp_path / "imagefleet" / package).symlink_to(tmp_path / package if package != "jobs" else REPO / package)
    request = tmp_path / "configs" / "request.py"
    text = request.read_text()
    assert text.count("\n)\n") >= 1
    head, _, tail = text.partition("\n)\n\nBY_NAME")  # the end of REQUEST
    text = head + textwrap.dedent(ADD_STYLE).rstrip("\n").replace("\nSetting", "\n    Setting") + "\n\nBY_NAME" + tail
    text = text.replace('''    negative_prompt: str = ""
''', '''    negative_prompt: str = ""
    """Negative prompt when the row has none."""
    style: str = ""
''', 1)
    request.write_text(text)
    run = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in run.stdout.splitlines())
    a, b, c = lines["KEYS"].split()
    golden = _unchanged_key()
    assert a == b == golden != c  # null and '' leave the key as it was; a style changes it
    assert lines["EXPLICIT"] == "style"
    assert lines["HEAVY"] == "{'a': 'noir', 'b': '', 'c': 'watercolor'}"  # b set '' itself
    assert "'style': 'noir'" in lines["REQUEST"]
    assert lines["READS"] == "True True string"
    assert lines["COLUMNS"] == "style look"
    assert "'style': 'ink'" in lines["SERVE"]


def _unchanged_key() -> str:
    """Row `a`'s draft key as this checkout (without `style`) computes it for the same job."""
    from imagefleet.actors.prompt_preprocessor import PromptPreprocessor
    from imagefleet.configs.loader import parse_config
    from imagefleet.pipelines.slices import prep_config

    job = {"name": "t", "seed": 7, "source": {"uri": "p.parquet"}, "output": {"uri": "o"},
           "generators": {"d": {"backend": "diffusers", "model": "org/d", "defaults": {"width": 64, "height": 64}}}}
    table = pa.table({"id": ["a"], "prompt": ["fox"], "seed": [1]})
    return str(PromptPreprocessor(prep_config(parse_config(job)))(table)["image_key"][0])
