"""PromptPreprocessor (CPU): validates rows, routes them, expands num_images, derives seeds and image keys."""

from __future__ import annotations

import json
import math
import random
import time
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from imagefleet.actors.bounded_template import compile_template
from imagefleet.actors.cells import ERROR_TEXT_CHARS, MAX_ID_CHARS, Undecodable, clipped, column_values
from imagefleet.actors.gain_model import PREDICTED, GainRouter
from imagefleet.actors.input_reader import INPUT_OUTPUT_COLUMNS
from imagefleet.actors.keys import adapters_text, combination_id, derive_row_id, derive_seed, key_of
from imagefleet.actors.manifest_schema import PRIOR
from imagefleet.actors.pass_through import PASS_THROUGH, encode_rows
from imagefleet.actors.row_settings import convert, parse_adapters
from imagefleet.actors.run_ledger import PENDING, RunLedger, resume_states, row_reader, settle
from imagefleet.configs.generator_base import STRENGTH_TASKS
from imagefleet.configs.prep import PrepConfig
from imagefleet.configs.request import BY_NAME, DEFAULTED_SETTINGS, MAX_SIDE, ROW_COLUMNS, ROW_SET, numpy_dtype
from imagefleet.configs.source import variant_size

if TYPE_CHECKING:
    import pyarrow as pa

Batch = dict[str, np.ndarray]
Prompt = tuple[Any, Any, dict[str, str]]
"""(prompt text or a marker, row id, template record) of one prompt a row makes."""


class PromptPreprocessor:
    """Turns prompt rows into one row per requested image.

    Args:
        cfg: this stage's slice (column mapping, routing, generator identities).
        ledger: the run's ledger actor (resume index and budget), shared by the pool's actors; None: this actor
            keeps its own (`actors.run_ledger`; a run in process, a preview, serving's gateway).
        router: a cascade's predictive routing (`routing.cascade.predict`): a row whose prompt it predicts to gain
            enough goes to the heavy generator as its escalation would (same settings, same key, route
            `predicted_heavy`: an extra `route` column); None: every row is routed by `cfg.routing` alone.
    """

    INPUT_COLUMNS = {"<prompt_column>": "prompt text (required)"}
    OUTPUT_COLUMNS = {
        "id": "row id from the data (or derived from the prompt)",
        "image_index": "0..num_images-1 within the row",
        "prompt": "prompt text",
        "generator": "name of the generator the row is routed to",
        "model": "model id@revision of that generator",
        "model_version": "the commit or content digest that model is now ('' = not known)",
        **{name: BY_NAME[name].description for name in ROW_COLUMNS},
        "image_key": "content hash naming the image object ('' for error rows)",
        "status": "pending | error | cached (complete in an earlier run) | skipped (over budget)",
        "error": "why the row can't be generated ('' when fine)",
        "enqueued_at": "unix time the row entered the pipeline",
        "explicit": "settings the input row set itself (comma-separated; the rest are generator defaults)",
        PRIOR: "what an earlier run recorded about a cached row's image (JSON; '' for other rows)",
        "template": "the prompt template ('' when prompts come from a column)",
        "template_vars": "JSON of the values the template was filled with ('' without a template)",
        "task": "text-to-image | image-to-image | inpaint | edit",
        **{c: d for c, d in INPUT_OUTPUT_COLUMNS.items() if c != "input_error"},
        "variant": "the output variant (aspect ratio or size) this image is ('' without variants)",
        "num_candidates": "images to generate for this one before the best is kept (best-of-N; 1 = just this one)",
        PASS_THROUGH: "JSON of the input row's pass-through column values ('' when none are carried)",
    }

    def __init__(self, cfg: PrepConfig, ledger: Any = None, router: GainRouter | None = None) -> None:
        self.cfg = cfg
        self.router = router
        # a prompt template is compiled once per actor, and renders within the prompts' length limit
        self.template_columns = cfg.template.columns() if cfg.template is not None else []
        self.template = compile_template(cfg.template.text, cfg.max_prompt_chars) if cfg.template else None
        # resume and budget: counted over the whole run by one ledger (what the output holds, loaded once)
        self.ledger = ledger if ledger is not None else RunLedger(cfg.resume, cfg.budget_usd)
        self.rows = row_reader(cfg)  # reads the earlier rows the ledger finds, from their manifest parts

    def __call__(self, batch: pa.Table) -> Batch:
        # 1 read the columns once
        n = batch.num_rows
        cols = {name: column_values(batch.column(name)) for name in batch.column_names}
        prompts = cols.get(self.cfg.prompt_column, [None] * n)
        ids = cols.get(self.cfg.id_column, [None] * n)
        negs = cols.get(self.cfg.negative_prompt_column, [None] * n)
        column = self.cfg.routing.column_read
        routes = cols.get(column, [None] * n) if column else [None] * n
        inputs = [{c: str(cols[c][i] or "") if c in cols else "" for c in INPUT_OUTPUT_COLUMNS} for i in range(n)]
        loras_column = self.cfg.columns.get("loras", "loras")
        loras = cols.get(loras_column, [None] * n)
        # the row's own columns the manifest carries; a row whose values can't be carried is an error row, as
        # one whose input images can't be read
        carried = encode_rows(batch, self.cfg.pass_through, self.cfg.max_pass_through_bytes)
        for i, (_, problem) in enumerate(carried):
            inputs[i]["input_error"] = inputs[i]["input_error"] or problem
        # 2 one output row per requested image (or one error row per bad input row); fan-out modes send the
        #   same request to several generators
        out: list[dict[str, Any]] = []
        now = time.time()
        settings = {name: self.cfg.columns.get(BY_NAME[name].column, BY_NAME[name].column) for name in ROW_SET}
        settings = {name: column for name, column in settings.items() if column in cols}
        for i in range(n):
            overrides = {field: cols[column][i] for field, column in settings.items()}
            for prompt, row_id, filled in self._prompts(cols, i, prompts[i], ids[i]):
                facts = partial(self._facts, prompt, overrides)
                for route in self.cfg.routing.choose(routes[i], facts):
                    rows = self._expand(prompt, row_id, negs[i], route, overrides, now, inputs[i], loras[i])
                    if self.router is not None and isinstance(prompt, str) and self.router.sends_heavy(prompt):
                        rows = self._predicted(rows, self._expand(prompt, row_id, negs[i], self.router.heavy,
                                                                  overrides, now, inputs[i], loras[i], ""))
                    out.extend({**r, **filled, PASS_THROUGH: carried[i][0]} for r in rows)
        # 3 the run's ledger settles the images to make, in order: made by an earlier run (cached, or its error
        #   carried over), else made now within the budget, else skipped
        todo = [r for r in out if r["status"] == "pending"]
        usd = [self.cfg.generators[r["generator"]].est_usd_per_image for r in todo]
        answer = settle(self.ledger, [r["image_key"] for r in todo], usd)
        for r, state in zip(todo, resume_states(answer, len(todo), self.cfg.budget_usd,
                                                              self.rows.take if self.rows else None), strict=True):
            r.update(state)
        # 4 neighbours share a shape bucket, so downstream GPU batches are mostly homogeneous (a local,
        #   streaming sort: no all-to-all shuffle of the whole table)
        out.sort(key=lambda r: (r["generator"], r["task"], r["width"], r["height"], r["num_steps"],
                                r["guidance_scale"], r["adapters"]))
        # 5 columnar, fixed dtypes so every batch has the same schema
        return _to_batch(out, ("route",) if self.router is not None else ())

    @staticmethod
    def _predicted(drafts: list[dict[str, Any]], heavy: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """A predicted row's images as the heavy generator makes them (route `predicted_heavy`), where both it and
        the draft could make them; an image the heavy generator can't make (its max_pixels, its inputs) stays a
        draft, as its escalation would."""
        if len(heavy) != len(drafts):  # the heavy generator refuses the row itself (a count it can't make)
            return drafts
        return [{**h, "route": PREDICTED} if d["status"] == h["status"] == "pending" else d
                for d, h in zip(drafts, heavy, strict=True)]

    def _prompts(self, cols: dict[str, list[Any]], i: int, prompt: Any, row_id: Any) -> list[Prompt]:
        """The row's prompts with their ids and template record: the prompt column's text, or one prompt per
        combination of the template's values (ids `<row id>#<hash of the combination's values>`)."""
        t, render = self.cfg.template, self.template
        if t is None or render is None:
            return [(prompt, row_id, NO_TEMPLATE)]
        row = {c: cols[c][i] if c in cols else None for c in self.template_columns}
        rid = str(row_id) if row_id is not None else derive_row_id(json.dumps(row, sort_keys=True, default=str))
        bad = next((c for c, v in row.items() if v is None or isinstance(v, Undecodable)), "")
        if t.expand == "sample":
            picks = random.Random(derive_seed(self.cfg.job_seed, rid, -1)).sample(range(t.space()), t.per_row())
            combos = sorted(picks)
        else:
            combos = list(range(t.space()))
        out = []
        for k in combos:
            combination = t.combination(k)
            values = {**combination, **row}
            # a value over the prompt limit makes an error row (the renderer refuses it), recorded clipped
            shown = {k: clipped(v, self.cfg.max_prompt_chars) for k, v in values.items()}
            record = {"template": t.text,
                      "template_vars": json.dumps(shown, sort_keys=True, ensure_ascii=False, default=str)}
            if bad:
                text: Any = Unrendered(f"template column {bad!r} is "
                                       f"{'null' if row[bad] is None else 'not valid UTF-8 text'}")
            else:
                try:
                    text = render(values)
                except Exception as exc:  # noqa: BLE001 - a row the template can't render is an error row
                    text = Unrendered(f"template: {str(exc).splitlines()[0][:200]}")
            out.append((text, f"{rid}#{combination_id(combination)}", record))
        return out

    def _facts(self, prompt: Any, overrides: dict[str, Any]) -> dict[str, float]:
        """What routing rules test, with the default generator's defaults filled in (raises ValueError)."""
        d = self.cfg.generators[self.cfg.default_generator].defaults
        values = {
            "width": convert("width", overrides.get("width") or d.width),
            "height": convert("height", overrides.get("height") or d.height),
            "num_steps": convert("num_steps", overrides.get("num_steps") or d.num_steps),
            "guidance_scale": float(overrides.get("guidance_scale") or d.guidance_scale),
            "num_images": convert("num_images", overrides.get("num_images") or 1),
            "prompt_chars": len(prompt) if isinstance(prompt, str) else 0,
        }
        values["pixels"] = values["width"] * values["height"]
        return values

    def _expand(
        self, prompt: Any, row_id: Any, neg: Any, route: Any, overrides: dict[str, Any], now: float,
        inputs: dict[str, str], loras: Any, selection: str | None = None,
    ) -> list[dict[str, Any]]:
        """The row's images for generator `route` ('' = the default), keyed with `selection` (None: the run's)."""
        prompt_text = prompt if isinstance(prompt, str) and not isinstance(prompt, Unrendered) else ""
        rid = str(row_id) if row_id is not None else derive_row_id(prompt_text)
        gen_name = str(route) if route not in (None, "") else self.cfg.default_generator
        ident = self.cfg.generators.get(gen_name)
        d = ident.defaults if ident else self.cfg.generators[self.cfg.default_generator].defaults
        task = self.cfg.task
        base: dict[str, Any] = {
            "id": rid,
            "prompt": prompt_text,
            "negative_prompt": neg if isinstance(neg, str) else d.negative_prompt,
            "generator": gen_name,
            "model": f"{ident.model}@{ident.revision}" if ident else "",
            "model_version": ident.version if ident else "",
            **{name: getattr(d, name) for name in DEFAULTED_SETTINGS},
            "enqueued_at": now,
            "explicit": "negative_prompt" if isinstance(neg, str) else "",
            "task": task,
            **{c: v for c, v in inputs.items() if c != "input_error"},
            "strength": d.strength if task in STRENGTH_TASKS else math.nan,
            "adapters": "",
            "num_candidates": self.cfg.routing.candidates_per_image(),
        }
        num_images, row_seed, error, adapters = 1, None, "", []
        try:
            values = {k: convert(k, v) for k, v in overrides.items()
                      if v is not None and (k != "strength" or task in STRENGTH_TASKS)}
            given = [k for k in DEFAULTED_SETTINGS if k in values]
            base.update({k: values[k] for k in given})
            if task in STRENGTH_TASKS and "strength" in values:
                base["strength"] = values["strength"]
                given.append("strength")
            if loras is not None:
                given.append("loras")
            base["explicit"] = ",".join(filter(None, [base["explicit"], *given]))
            num_images = values.get("num_images", 1)
            row_seed = values.get("seed")
            error = self._row_problem(prompt, ident, gen_name, base, num_images, row_seed)
            error = error or inputs["input_error"] or self._input_problem(ident, gen_name, base)
            if not error and ident is not None:
                adapters = parse_adapters(loras, ident.adapters, ident.default_adapters, gen_name)
                base["adapters"] = adapters_text(adapters)
        except ValueError as exc:
            error = str(exc)
        variants = self.cfg.variants or [""]
        if error:
            return self._error_rows(base, error, variants, overrides.get("num_images"))
        assert ident is not None  # _row_problem names a missing generator
        rows: list[dict[str, Any]] = []
        for variant in variants:
            shaped = dict(base, variant=variant)
            if variant:
                shaped["width"], shaped["height"] = variant_size(variant, base["width"], base["height"])
                size_error = self._size_problem(ident, gen_name, shaped)
                if size_error:
                    rows.extend({**shaped, "image_index": idx, "seed": 0, "image_key": "", "status": "error",
                                 "error": f"variant {variant}: {size_error}", **NO_PRIOR} for idx in range(num_images))
                    continue
            for idx in range(num_images):
                seed = (row_seed + idx) % (2**31 - 1) if row_seed is not None else derive_seed(self.cfg.job_seed, rid,
                                                                                                 idx)
                key = key_of({**shaped, "seed": seed}, ident, adapters,
                             self.cfg.selection if selection is None else selection)
                rows.append({**shaped, "image_index": idx, "seed": seed, "image_key": key, **PENDING})
        return rows

    def _error_rows(self, base: dict[str, Any], error: str, variants: list[str], asked: Any) -> list[dict[str, Any]]:
        """One error row per image the row asked for, as the driver counted them (a valid num_images, else 1, times
        the variants): the commit checks there is exactly one manifest row per requested image."""
        # the row's own values are in the error message; int32 columns can't hold absurd ones (2**40 pixels)
        base.update({k: 0 for k in ("width", "height", "num_steps") if not 0 <= base[k] < 2**31})
        # an over-long prompt is kept as its start and length, never whole (nor a message quoting a whole cell)
        base.update({k: clipped(base[k], self.cfg.max_prompt_chars) for k in ("prompt", "negative_prompt")})
        base["id"] = clipped(base["id"], MAX_ID_CHARS)
        error = clipped(error, 2 * ERROR_TEXT_CHARS)
        count = asked if isinstance(asked, int) and 1 <= asked <= self.cfg.max_images_per_row else 1
        return [{**base, "variant": v, "image_index": idx, "seed": 0, "image_key": "", "status": "error",
                 "error": error, **NO_PRIOR} for v in variants for idx in range(count)]

    def _input_problem(self, ident: Any, gen_name: str, row: dict[str, Any]) -> str:
        """What the row's inputs ask that its generator can't do, or ''."""
        if row["task"] == "text-to-image":
            return ""
        count = len(row["input_sha256"].split(",")) if row["input_sha256"] else 0
        if count > ident.max_input_images:
            return (f"{count} input images, but generator {gen_name!r} takes at most {ident.max_input_images} "
                    f"for {row['task']}")
        if row["mask_uri"] and not ident.masks:
            return f"generator {gen_name!r} takes no mask for {row['task']}; drop the mask or route the row elsewhere"
        if row["task"] in STRENGTH_TASKS and not ident.takes_strength:
            row["strength"] = math.nan  # the generator has no such setting: not recorded, not keyed
        elif row["task"] in STRENGTH_TASKS and not 0 < row["strength"] <= 1:
            return f"strength={row['strength']} must be in (0, 1]"
        return ""

    def _row_problem(
        self, prompt: Any, ident: Any, gen_name: str, row: dict[str, Any], num_images: int, seed: int | None
    ) -> str:
        """Return a message naming what is wrong with the row, or ''."""
        if ident is None:
            return f"generator {gen_name!r} is not configured; choose one of {sorted(self.cfg.generators)}"
        if isinstance(prompt, Unrendered):
            return str(prompt)
        if isinstance(prompt, Undecodable):
            return f"prompt is not valid UTF-8 text ({prompt})"
        if isinstance(row["negative_prompt"], Undecodable):
            return f"negative_prompt is not valid UTF-8 text ({row['negative_prompt']})"
        if prompt is None:
            return "prompt is null"
        if not isinstance(prompt, str) or not prompt.strip():
            return "prompt is empty"
        for name, text in (("prompt", prompt), ("negative_prompt", row["negative_prompt"])):
            if len(text) > self.cfg.max_prompt_chars:
                return (f"{name} has {len(text):,} characters; the limit is {self.cfg.max_prompt_chars:,} "
                        f"(source.max_prompt_chars)")
        if len(row["id"]) > MAX_ID_CHARS:
            return f"id has {len(row['id']):,} characters; the limit is {MAX_ID_CHARS:,}: give rows shorter ids"
        size_error = self._size_problem(ident, gen_name, row)
        if size_error:
            return size_error
        if not 1 <= row["num_steps"] <= 1000:
            return f"num_steps={row['num_steps']} must be between 1 and 1000"
        if not 0 <= row["guidance_scale"] <= 50:
            return f"guidance_scale={row['guidance_scale']} must be between 0 and 50"
        if not 1 <= num_images <= self.cfg.max_images_per_row:
            return f"num_images={num_images} must be between 1 and {self.cfg.max_images_per_row}"
        if seed is not None and not 0 <= seed < 2**31 - 1:
            return f"seed={seed} must be between 0 and 2147483646"
        return ""

    def _size_problem(self, ident: Any, gen_name: str, row: dict[str, Any]) -> str:
        """What is wrong with the row's size for its generator, or ''."""
        step = ident.size_multiple
        for name in ("width", "height"):
            v = row[name]
            if v < 8 or v % step:
                return f"{name}={v} must be a positive multiple of {step}" if step > 1 else f"{name}={v} is under 8"
            if v > MAX_SIDE:
                return f"{name}={v} exceeds the maximum side of {MAX_SIDE} pixels"
        if row["width"] * row["height"] > ident.defaults.max_pixels:
            return f"size {row['width']}x{row['height']} exceeds max_pixels={ident.defaults.max_pixels} for {gen_name}"
        return ""


class Unrendered(str):
    """A templated prompt that could not be written (a null column, a template error): the message."""


NO_TEMPLATE = {"template": "", "template_vars": ""}

NO_PRIOR: dict[str, Any] = {PRIOR: ""}  # a row without an earlier result

_DTYPES: dict[str, Any] = {
    "image_index": np.int32,
    **{name: np.dtype(numpy_dtype(name)) for name in ROW_COLUMNS if numpy_dtype(name) != "object"},
    "enqueued_at": np.float64,
    "num_candidates": np.int32,
}


def _to_batch(rows: list[dict[str, Any]], extra: tuple[str, ...] = ()) -> Batch:
    out: Batch = {}
    for name in (*PromptPreprocessor.OUTPUT_COLUMNS, *extra):
        values = [r.get(name, "") for r in rows] if name in extra else [r[name] for r in rows]
        dtype = _DTYPES.get(name)
        out[name] = np.asarray(values, dtype=dtype) if dtype else np.asarray(values, dtype=object)
    return out
