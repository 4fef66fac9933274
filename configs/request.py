"""The per-image request, declared once: every setting one image is made with, and each generator's defaults.

`REQUEST` has one row per per-image setting: its type, the prompt-table column that sets it per row, where its
default comes from, whether it enters the image key, whether it reaches the backend, what a cascade's escalation
does with it, and whether a resumed row restores it. Everything that lists settings derives from it: the column
mapping (`source.columns`) and its schema check, the preprocessor's overrides and dtypes, the key (`actors.keys.
key_of`), the escalator's heavy settings and `draft_*` columns, what resume restores, the manifest's types.

Adding a per-row setting is one `Setting` here (with its `GenerationDefaults` field when generators give it a
default) plus the backends that honour it (ARCHITECTURE.md, "Adding a per-row setting").
"""

from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from imagefleet.configs.base import StrictModel

Kind = Literal["int32", "int64", "float64", "text", "uris"]
"""A setting's type, written once: the preprocessor's numpy dtype, the manifest's Arrow type and the Python type a
column's value converts to all follow from it (`uris`: a string or a list of strings)."""


@dataclass(frozen=True)
class Setting:
    """One per-image setting of the request."""

    name: str
    """Its name in pipeline rows and the manifest (and the backend's `Request` field)."""
    kind: Kind
    """Its type."""
    description: str
    """What it is (the config reference and the manifest say this)."""
    column: str = ""
    """`source.columns` key (and default column name) that sets it per row; '' = no column of its own."""
    default: Literal["generator", "loras", "derived", "one", "none"] = "generator"
    """Where a row that doesn't set it gets it: its generator's `defaults` (the `GenerationDefaults` field of the same
    name), its generator's default LoRA set, derived (the seed: from the job seed, row id and image index), 1
    (num_images), or nowhere (inputs the row must carry)."""
    keyed: Literal["key", "conditioning", ""] = "key"
    """How it enters the image key: as a field of its own, through the conditioning text (the image's non-prompt
    inputs), or not at all (it doesn't change the image: e.g. how many images a row asks for)."""
    key_when_set: bool = False
    """It enters the key only when a row sets it (not '' or 0): a key setting added after images were stored must
    be, so that the keys of rows that don't use it stay what they were. The six settings keys have always held
    (seed, size, steps, guidance, negative prompt) are always in the key."""
    backend: bool = True
    """It reaches the generator (a field of `actors.backend_io.Request`)."""
    heavy: bool = False
    """A cascade's escalated row takes the heavy generator's value unless the row set it itself."""
    drafted: bool = False
    """A cascade keeps the draft's value of an escalated row in `draft_<name>`."""
    resumed: bool = False
    """A resumed (or adopted) row reports the value the stored image was made with, not its own."""
    column_doc: str = ""
    """What the column holds, for `source.columns` (defaults to `description`)."""


REQUEST: tuple[Setting, ...] = (
    Setting("seed", "int64", "per-image seed", column="seed", default="derived", resumed=True,
            column_doc="Per-row seed (integer; null = derived from the job seed, row id and image index)."),
    Setting("width", "int32", "pixels (as returned by hosted APIs)", column="width", heavy=True, drafted=True,
            resumed=True, column_doc="Width in pixels (integer)."),
    Setting("height", "int32", "pixels (as returned by hosted APIs)", column="height", heavy=True, drafted=True,
            resumed=True, column_doc="Height in pixels (integer)."),
    Setting("num_steps", "int32", "denoising steps", column="num_steps", heavy=True, drafted=True, resumed=True,
            column_doc="Denoising steps (integer)."),
    Setting("guidance_scale", "float64", "CFG scale", column="guidance_scale", heavy=True, drafted=True,
            resumed=True, column_doc="CFG scale (number)."),
    # its column is `source.negative_prompt_column` (older than `source.columns`)
    Setting("negative_prompt", "text", "negative prompt", heavy=True, resumed=True),
    Setting("num_images", "int32", "images to make from the row", column="num_images", default="one", keyed="",
            backend=False,
            column_doc="Images to make from the row (integer, 1..routing.max_images_per_row)."),
    Setting("strength", "float64", "image-to-image / inpaint strength (null for other tasks)", column="strength",
            keyed="conditioning", heavy=True,
            column_doc="image-to-image / inpaint: how far the result may move from the input image (number, 0..1)."),
    Setting("image", "uris", "input images", column="image", default="none", keyed="conditioning",
            column_doc="Input image URI (local path, relative to the prompt table's folder, or s3://; under that "
                       "folder or `source.allowed_roots`), or a list of URIs (reference images for `edit`); read "
                       "when `source.task` is not text-to-image (a null cell is that row's error)."),
    Setting("mask", "text", "mask image", column="mask", default="none", keyed="conditioning",
            column_doc="Mask image URI for inpaint / edit (white = change; the size of the first input image)."),
    Setting("adapters", "text", "LoRA adapters applied, `name:weight` comma-separated ('' = none)", column="loras",
            default="loras", keyed="conditioning", heavy=True,
            column_doc="LoRA adapters for the row, `name` or `name:weight` separated by commas, from its "
                       "generator's `loras` (null = the generator's default set, '' = none)."),
)

BY_NAME = {s.name: s for s in REQUEST}
KEY_SETTINGS: tuple[str, ...] = tuple(s.name for s in REQUEST if s.keyed == "key")
"""Settings that are fields of the image key of their own (with the prompt and the generator's identity)."""
ROW_SET: tuple[str, ...] = tuple(s.name for s in REQUEST if s.column and s.default in ("generator", "derived", "one"))
"""Settings the preprocessor reads from a row's own column (converted to their kind); the rest of the columns are
inputs (images, mask: the input reader) or LoRA adapters."""
DEFAULTED_SETTINGS: tuple[str, ...] = tuple(s.name for s in REQUEST if s.column and s.default == "generator"
                                            and s.keyed == "key")
"""Key fields a row sets through its column, else its generator's default (`explicit` names those it set)."""
ROW_COLUMNS: tuple[str, ...] = tuple(s.name for s in REQUEST if s.backend and s.default != "none")
"""Settings that travel in pipeline rows as a column of their own name (input images and the mask travel as
their URIs and content hashes)."""
SHAPE_SETTINGS: tuple[str, ...] = tuple(s.name for s in REQUEST if s.drafted)
"""The numeric settings a generator defaults and a cascade's draft keeps (`draft_<name>`)."""
HEAVY_SETTINGS: tuple[str, ...] = tuple(s.name for s in REQUEST if s.heavy and s.keyed == "key")
"""Key fields an escalated row takes from the heavy generator unless the row set them (strength and adapters
are taken too, through the conditioning)."""
RESUMED_SETTINGS: tuple[str, ...] = tuple(s.name for s in REQUEST if s.resumed)
"""What a stored image was made with; a resumed row reports these (an escalated row's are the heavy generator's,
a hosted image's size the one the API returned)."""
_FAMILIES = {"int32": "integer", "int64": "integer", "float64": "number", "text": "string", "uris": "uris"}
ROW_FIELDS: dict[str, str] = {s.column: _FAMILIES[s.kind] for s in REQUEST if s.column}
"""Every per-row setting a prompt table may carry (by its `source.columns` key), with the Arrow type family its
column must have (`uris`: a string or a list of strings)."""


def numpy_dtype(name: str) -> str:
    """The numpy dtype of setting `name` in pipeline batches ('object' for text)."""
    kind = BY_NAME[name].kind
    return kind if kind not in ("text", "uris") else "object"


MAX_SIDE = 8192
"""The largest width or height any request may ask for (defaults, row columns, variants, adopted records)."""


class GenerationDefaults(StrictModel):
    """Per-generator defaults; a row's own columns override them."""

    width: int = Field(default=512, ge=8, le=MAX_SIDE)
    """Image width in pixels (a multiple of the generator's `size_multiple()`: 8 for diffusers, 1 for Gemini)."""
    height: int = Field(default=512, ge=8, le=MAX_SIDE)
    """Image height in pixels (multiple of 8)."""
    num_steps: int = Field(default=30, ge=1, le=1000)
    """Denoising steps."""
    guidance_scale: float = Field(default=5.0, ge=0, le=50)
    """Classifier-free guidance; 0 disables it (turbo models)."""
    negative_prompt: str = ""
    """Negative prompt when the row has none."""
    max_pixels: int = Field(default=4096 * 4096, ge=64)
    """Rows asking for more pixels than this become error rows."""
    strength: float = Field(default=0.8, gt=0, le=1)
    """image-to-image / inpaint: how far the result may move from the input (1 = ignore it entirely)."""

    def size_problem(self, multiple: int) -> str:
        """Why the default size isn't a multiple of `multiple` ('' when it is)."""
        for name in ("width", "height"):
            if getattr(self, name) % multiple:
                return f"{name} must be a multiple of {multiple}, got {getattr(self, name)}"
        return ""
