"""PromptPreprocessor's slice: column mapping, routing and each generator's key-relevant identity."""

from imagefleet.configs.base import StrictModel
from imagefleet.configs.request import GenerationDefaults
from imagefleet.configs.routing import RoutingConfig
from imagefleet.configs.source import InputLimits, PromptTemplate
from imagefleet.configs.storage import StoreSpec


class InputReaderConfig(StrictModel):
    """The input reader's slice: where each row's input images and mask are, and the limits they must meet."""

    task: str
    """source.task (not text-to-image: this stage runs only when rows carry inputs)."""
    image_column: str
    """Column of input image URIs (a string or a list of strings)."""
    mask_column: str
    """Column of mask URIs (may be absent from the data)."""
    base_uri: str
    """Folder relative input paths are resolved against (the prompt table's); inputs may come from under it."""
    allowed_roots: list[str] = []
    """Other folders and s3:// prefixes inputs may come from (source.allowed_roots)."""
    store: StoreSpec
    """Connection for s3:// inputs."""
    limits: InputLimits
    """Size limits."""


class GeneratorIdentity(StrictModel):
    """What of a generator goes into an image key, plus the defaults its rows inherit."""

    model: str
    """Model id or path (as configured: what the manifest's `model` column shows)."""
    content: str = ""
    """A local model folder's content digest (`sha256:…` of its files): the image key's model in place of the
    path, so the same weights anywhere keep their keys and retrained ones get new keys ('' = keyed by `model`)."""
    revision: str
    """Model revision."""
    version: str = ""
    """What the model is right now (the manifest's `model_version`): a hub revision's commit, or `content`."""
    scheduler: str
    """Scheduler override ('' = model default)."""
    defaults: GenerationDefaults
    """Defaults for rows that don't set them."""
    render: str = ""
    """Non-default settings that change the pixels (dtype, variant, quality…): part of the image key."""
    max_input_images: int = 0
    """Input images one request may carry (0 = text-to-image only)."""
    masks: bool = False
    """Whether it takes a mask with the run's task."""
    takes_strength: bool = False
    """Whether image-to-image / inpaint strength changes its images (part of their keys only then)."""
    adapters: dict[str, str] = {}
    """Its LoRA adapters: name → sha256 of the weights file (part of the image key)."""
    default_adapters: list[tuple[str, float]] = []
    """Adapters (name, weight) applied to rows that don't choose."""
    size_multiple: int = 8
    """Row widths and heights must be multiples of this (8 for diffusers; 1 for Gemini, which takes any size)."""
    est_usd_per_image: float = 0.0
    """Expected price of one image (for the run budget)."""


class ResumeConfig(StrictModel):
    """Where earlier results live, so finished images are skipped (resume) and failures carried or retried."""

    output_uri: str
    """Output root of the run."""
    store: StoreSpec
    """Resolved connection to the output."""
    skip_existing: bool
    """Skip rows whose image is complete."""
    image_format: str
    """Format the run stores images in (an image stored in another format must be made again)."""
    keep_provider_bytes: bool = True
    """The run stores hosted providers' files in their own format: such an image counts in the format its manifest
    row records, not only in `image_format`."""
    retry_failed: bool
    """Redo rows that failed before."""


class PrepConfig(StrictModel):
    """Everything the preprocessor needs and nothing more."""

    job_seed: int
    """Job seed for derived per-image seeds."""
    prompt_column: str
    """Column with the prompt."""
    id_column: str
    """Column with the row id (optional in the data)."""
    negative_prompt_column: str
    """Column with the negative prompt (optional in the data)."""
    template: PromptTemplate | None = None
    """Prompts written by this template from each row (None: read from prompt_column)."""
    task: str = "text-to-image"
    """source.task: what rows ask of their generator."""
    variants: list[str] = []
    """Output variants of each request (aspect ratios or sizes; [] = one image at the row's size)."""
    selection: str = ""
    """Best-of-N: `best_of=<N>,scorer=<backend>:<model>` (part of image keys: the kept image depends on both);
    '' = every image is the one generated."""
    columns: dict[str, str] = {}
    """Per-row setting (seed, width, height, num_steps, guidance_scale, num_images) → the data's column holding
    it; a setting not listed is read from the column of its own name."""
    max_prompt_chars: int
    """Longer prompts become error rows."""
    pass_through: dict[str, str] = {}
    """Prompt-table column → the manifest column it is carried to unchanged (source.pass_through)."""
    max_pass_through_bytes: int = 65_536
    """A row whose pass-through values take more JSON bytes than this becomes an error row."""
    max_images_per_row: int
    """Larger num_images become error rows."""
    routing: RoutingConfig
    """Row → generator assignment (the job's routing variant)."""
    budget_usd: float = 0.0
    """Estimated-cost budget for the run (0 = none)."""
    default_generator: str
    """Generator when nothing else decides."""
    generators: dict[str, GeneratorIdentity]
    """Identity of every configured generator."""
    resume: ResumeConfig | None = None
    """Earlier results to skip; None on a fresh output (nothing to read)."""

