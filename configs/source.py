"""Where the prompt table comes from and how its columns map onto imagefleet's fields."""

import functools
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, create_model, model_validator

from imagefleet.configs.base import StrictModel
from imagefleet.configs.generator_base import Task
from imagefleet.configs.request import MAX_SIDE, REQUEST
from imagefleet.configs.storage import S3Config


class _ColumnMap(StrictModel):
    """Which column of the prompt table holds each optional per-row setting (a missing column = the generator's
    default for every row). E.g. `columns: {num_steps: steps, guidance_scale: cfg, seed: row_seed}`."""

    def by_field(self) -> dict[str, str]:
        """Setting → the data's column holding it."""
        return dict(self)

    def of(self, setting: str) -> str:
        """The data's column holding `setting` (a `source.columns` key; KeyError for another name)."""
        return self.by_field()[setting]


# one field per per-row setting of the request table (configs/request.py), named after it, default = its name
if TYPE_CHECKING:
    ColumnNames = _ColumnMap
else:
    ColumnNames = create_model(
        "ColumnNames", __base__=_ColumnMap, __doc__=_ColumnMap.__doc__,
        **{s.column: (str, Field(default=s.column, description=s.column_doc or s.description))
           for s in REQUEST if s.column})


MAX_COMBINATIONS = 100_000
"""A template may expand one row into at most this many prompts (a typo in a list shouldn't order 10^9 images)."""


JINJA_RESERVED = {"self", "varargs", "kwargs", "caller"}
"""Names Jinja gives its own meaning in a template (a column so named would render as Jinja's object)."""


class PromptTemplate(StrictModel):
    """Prompts written by a Jinja template filled from the row's columns and from lists of values.

    Each row expands into one prompt per combination of the lists' values (instead of reading a prompt column).

    E.g. `text: "a {{ style }} photo of a {{ object }} in {{ scene }}"` with `vars: {style: [studio, film],
    scene: [kitchen, street]}` and a column `object`: every row becomes 4 prompts (`expand: product`).
    """

    text: str = Field(min_length=1)
    """Jinja template (sandboxed). Names in `vars` take their values from there; any other name is a column of the
    prompt table (a null value makes that row's prompts error rows). Each prompt is bounded: at most
    `max_prompt_chars` characters, as is every value it uses or makes, and 100,000 loop iterations, calls and
    filters; a prompt over a bound is an error row."""
    vars: dict[str, list[str | int | float]] = {}
    """Lists of values the template's names range over."""
    expand: Literal["product", "zip", "sample"] = "product"
    """product: every combination of the lists; zip: the i-th value of every list together (equal lengths);
    sample: `samples` distinct combinations per row, drawn with a seed from the job seed and the row id."""
    samples: int = Field(default=1, ge=1)
    """sample mode: combinations per row."""

    def names(self) -> set[str]:
        """Every name the template uses."""
        import jinja2.meta

        return set(jinja2.meta.find_undeclared_variables(_jinja().parse(self.text)))

    def columns(self) -> list[str]:
        """Names the template takes from the row's columns (sorted)."""
        return sorted(self.names() - set(self.vars))

    def space(self) -> int:
        """Combinations of the lists' values (product) or their common length (zip)."""
        if not self.vars:
            return 1
        if self.expand == "zip":
            return len(next(iter(self.vars.values())))
        total = 1
        for values in self.vars.values():
            total *= len(values)
        return total

    def per_row(self) -> int:
        """Prompts each row expands into."""
        return min(self.samples, self.space()) if self.expand == "sample" else self.space()

    def combination(self, k: int) -> dict[str, str | int | float]:
        """The k-th combination (0 <= k < space()): zip takes position k of every list; product counts through the
        lists like digits, the last list fastest."""
        if self.expand == "zip":
            return {name: values[k] for name, values in self.vars.items()}
        out: dict[str, str | int | float] = {}
        for name, values in reversed(self.vars.items()):
            k, digit = divmod(k, len(values))
            out[name] = values[digit]
        return dict(reversed(out.items()))

    @model_validator(mode="after")
    def _check(self) -> "PromptTemplate":
        import jinja2

        try:
            used = self.names()
        except jinja2.TemplateSyntaxError as exc:
            raise ValueError(f"source.template.text: {exc.message} (line {exc.lineno})") from exc
        import jinja2.nodes

        tree = _jinja().parse(self.text)
        if any(loop.recursive for loop in tree.find_all(jinja2.nodes.For)):
            raise ValueError("source.template.text: recursive loops are not supported (a prompt's work is bounded "
                             "by counting loop iterations)")
        named = {n.name for n in tree.find_all(jinja2.nodes.Name)}
        reserved = sorted(named & JINJA_RESERVED)
        if reserved:
            raise ValueError(f"source.template.text uses {reserved[0]!r}, which Jinja reserves; name the list or "
                             f"column otherwise")
        for name, values in self.vars.items():
            if not values:
                raise ValueError(f"source.template.vars.{name} is empty: give at least one value")
            if name not in used:
                raise ValueError(f"source.template.vars.{name} is not used by the template text "
                                 f"(it uses {sorted(used) or 'no names'})")
        if self.expand == "zip" and len({len(v) for v in self.vars.values()}) > 1:
            sizes = {n: len(v) for n, v in self.vars.items()}
            raise ValueError(f"source.template.expand=zip needs lists of equal length; got {sizes}")
        if self.expand != "sample" and self.samples != 1:
            raise ValueError("source.template.samples is for expand: sample")
        if self.per_row() > MAX_COMBINATIONS:
            raise ValueError(f"source.template would expand each row into {self.per_row():,} prompts (limit "
                             f"{MAX_COMBINATIONS:,}); use expand: sample with samples: K")
        return self


@functools.cache
def _jinja() -> Any:
    """The sandboxed Jinja environment templates are parsed and inspected with at load (the preprocessor renders
    them with actors/bounded_template.py). It evaluates nothing: inspecting a template, Jinja computes its constant
    expressions, and `9 ** 9 ** 9` or `'x'|center(10**9)` would run here, unbounded."""
    import jinja2
    import jinja2.sandbox

    class Inspecting(jinja2.sandbox.SandboxedEnvironment):
        # operators a sandbox intercepts are never computed at compile time, nor filters that take the context
        intercepted_binops = frozenset({"+", "-", "*", "/", "//", "%", "**"})
        intercepted_unops = frozenset({"+", "-"})

    env = Inspecting(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=False)
    env.filters = {name: jinja2.pass_context(_not_at_load) for name in env.filters}
    return env


def _not_at_load(*args: Any, **kwargs: Any) -> Any:
    raise TypeError("templates are not rendered at config load")


class InputLimits(StrictModel):
    """Limits on the input images and masks rows point at (checked per row: a violation is that row's error)."""

    max_image_bytes: int = Field(default=50 * 2**20, ge=1)
    """Larger files are refused (OpenAI's edit limit is 50 MB per image)."""
    max_image_pixels: int = Field(default=4096 * 4096, ge=64)
    """Larger images are refused (guards against decompression bombs)."""
    max_readers: int = Field(default=2, ge=1, le=1024)
    """Input reader actors at most (half a CPU each; the pool grows from one as rows queue). A row's files are
    read, decoded and hashed once: ~17 ms of CPU a 512 px PNG, ~1.7 ms a JPEG (BENCHMARKS.md), so one GPU at
    200+ img/s needs ~4 readers with PNG inputs."""


def parse_variant(text: str) -> tuple[str, float | tuple[int, int]]:
    """A variant's kind and value: ('ratio', w/h) for `4:5`, ('size', (w, h)) for `768x1344`; ValueError when it
    is neither."""
    for sep, kind in ((":", "ratio"), ("x", "size")):
        left, found, right = text.strip().partition(sep)
        if found and left.isdigit() and right.isdigit() and int(left) > 0 and int(right) > 0:
            w, h = int(left), int(right)
            if kind == "ratio":
                if not 1 / 8 <= w / h <= 8:
                    raise ValueError(f"variant {text!r}: aspect ratios between 1:8 and 8:1 only")
                return "ratio", w / h
            if w % 8 or h % 8 or w > MAX_SIDE or h > MAX_SIDE:
                raise ValueError(f"variant {text!r}: sides must be multiples of 8 up to {MAX_SIDE}")
            return "size", (w, h)
    raise ValueError(f"variant {text!r} is neither an aspect ratio (4:5) nor a size (768x1344)")


def variant_size(variant: str, width: int, height: int) -> tuple[int, int]:
    """The size a row of `width`x`height` gets in `variant`: an exact size as given; a ratio keeps the row's pixel
    area, sides rounded to multiples of 16 (at least 16)."""
    kind, value = parse_variant(variant)
    if kind == "size":
        return value  # type: ignore[return-value]
    ratio = float(value)  # type: ignore[arg-type]
    area = width * height
    w = max(16, round((area * ratio) ** 0.5 / 16) * 16)
    h = max(16, round((area / ratio) ** 0.5 / 16) * 16)
    return w, h


def _root_problem(root: str) -> str:
    """What is wrong with an allowed root ('' when it names an absolute folder or an s3:// bucket or prefix)."""
    if root.startswith("s3://"):
        bucket, _, prefix = root[5:].partition("/")
        if not bucket or ".." in prefix.split("/"):
            return "is not an s3:// prefix: write s3://bucket or s3://bucket/folder"
        return ""
    path = root.removeprefix("file://")
    if not path.startswith("/") or ".." in path.split("/"):
        return "is not an absolute folder: write it from the root, e.g. /data/shared (or s3://bucket/folder)"
    return ""


class SourceConfig(StrictModel):
    """A prompt table (Parquet, CSV or JSON Lines): local path, glob, folder or s3:// URI."""

    uri: str = Field(min_length=1)
    """Parquet, CSV or JSON Lines file, folder, glob (`data/*.csv`) or `s3://bucket/prefix`. The format is the
    file's ending: `.csv` (a header row, comma-separated, UTF-8, RFC 4180 quoting; columns the run uses as text, like
    the id, stay text), `.jsonl`/`.ndjson` (one JSON object per line), each also gzipped (`.csv.gz`); any other name
    is Parquet. A folder or glob holds one format."""
    prompt_column: str = "prompt"
    """Column holding the prompt text (required in the data)."""
    id_column: str = "id"
    """Column with a stable row id; when the data has no such column, ids are derived from the prompt."""
    negative_prompt_column: str = "negative_prompt"
    """Optional per-row negative prompt."""
    template: PromptTemplate | None = None
    """Write prompts from a template filled from the row's columns and lists of values, instead of reading
    `prompt_column` (see PromptTemplate)."""
    columns: ColumnNames = ColumnNames()
    """Columns holding the optional per-row settings, when the data names them differently (the generator column
    is `routing.column`)."""
    s3: S3Config = S3Config()
    """Connection for s3:// sources."""
    max_prompt_chars: int = Field(default=10_000, ge=1)
    """Longer prompts become error rows."""
    num_rows_per_block: int = Field(default=0, ge=0)
    """Rows per Ray Data block before generation; 0 = pick from the pool sizes so all actors get work."""
    task: Task = "text-to-image"
    """What rows ask of their generator: text-to-image; image-to-image (redraw `columns.image` with `strength`);
    inpaint (redraw the white area of `columns.mask`); edit (rewrite the input/reference images as the prompt says,
    inside the mask when one is given). Every generator rows can reach must support it (checked at load)."""
    inputs: InputLimits = InputLimits()
    """Limits on input images and masks (larger or unreadable ones become error rows)."""
    allowed_roots: list[str] = []
    """Other places rows' input images and masks may come from: absolute folders (`/data/shared`) and s3:// prefixes
    (`s3://bucket/packshots`). Without them only files under the prompt table's folder are read (symlinks
    resolved); any other path or URI is that row's error."""
    variants: list[str] = []
    """Output variants per row for campaigns: aspect ratios (`1:1`, `4:5`, `9:16`, `16:9`: the row's pixel area in
    that shape, sides multiples of 16) or exact sizes (`768x1344`); each is a separate image of the same request,
    recorded in the manifest's `variant`. Empty = one image at the row's size."""
    pass_through: Literal["all", "none"] | list[str] = "all"
    """The prompt table's columns copied into the manifest unchanged, typed as in the data (nulls stay null), on
    every manifest row made from their row, so the output joins back to the input: `all` (the columns in every
    file, but those the manifest already records under their own name: `prompt`, `id`, `negative_prompt`, a
    `seed`/`width`/... column read as that setting, a `generator` routing column), `none`, or a list of columns.
    A column named like a manifest column is carried as `source_<name>` (never over the manifest's own). Never part
    of the image key."""
    max_pass_through_bytes: int = Field(default=65_536, ge=1)
    """A row whose pass-through values take more than this many bytes (as JSON) becomes an error row saying so."""

    @model_validator(mode="after")
    def _distinct_columns(self) -> "SourceConfig":
        named = {"prompt_column": self.prompt_column, "id_column": self.id_column,
                 "negative_prompt_column": self.negative_prompt_column,
                 **{f"columns.{k}": v for k, v in self.columns.by_field().items()}}
        seen: dict[str, str] = {}
        for key, column in named.items():
            if not column:
                raise ValueError(f"source.{key} is empty: name a column")
            if column in seen:
                raise ValueError(f"source.{seen[column]} and source.{key} both read column {column!r}; "
                                 f"each setting needs its own column")
            seen[column] = key
        if isinstance(self.pass_through, list):
            for column in self.pass_through:
                if not column:
                    raise ValueError("source.pass_through names an empty column")
                if self.pass_through.count(column) > 1:
                    raise ValueError(f"source.pass_through names column {column!r} twice; list it once")
        shapes: dict[Any, str] = {}
        for v in self.variants:
            try:
                kind, value = parse_variant(v)
            except ValueError as exc:
                raise ValueError(f"source.variants: {exc}") from exc
            if v != v.strip():
                raise ValueError(f"source.variants: {v!r} has spaces around it; write {v.strip()!r}")
            shape = (kind, round(value, 9) if isinstance(value, float) else value)
            if shape in shapes:
                raise ValueError(f"source.variants: {shapes[shape]!r} and {v!r} are the same shape; list it once")
            shapes[shape] = v
        for root in self.allowed_roots:
            problem = _root_problem(root)
            if problem:
                raise ValueError(f"source.allowed_roots: {root!r} {problem}")
        return self

    def reads_inputs(self) -> bool:
        """Whether rows carry input images (any task but text-to-image)."""
        return self.task != "text-to-image"

    def images_per_row(self) -> int:
        """Images one request of a row makes: one per variant (1 without variants)."""
        return max(1, len(self.variants))

    def expansion(self) -> int:
        """Images one image a row asks for (`num_images` counts them) becomes: the template's prompts per row × the
        variants."""
        return (self.template.per_row() if self.template is not None else 1) * self.images_per_row()
