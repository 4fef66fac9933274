"""Where the prompt table comes from and how its columns map onto imagefleet's fields."""

from pydantic import Field, model_validator

from configs.base import StrictModel
from configs.storage import S3Config


class ColumnNames(StrictModel):
    """Which column of the prompt table holds each optional per-row setting (a missing column = the generator's
    default for every row). E.g. `columns: {num_steps: steps, guidance_scale: cfg, seed: row_seed}`."""

    seed: str = "seed"
    """Per-row seed (integer; null = derived from the job seed, row id and image index)."""
    width: str = "width"
    """Width in pixels (integer)."""
    height: str = "height"
    """Height in pixels (integer)."""
    num_steps: str = "num_steps"
    """Denoising steps (integer)."""
    guidance_scale: str = "guidance_scale"
    """CFG scale (number)."""
    num_images: str = "num_images"
    """Images to make from the row (integer, 1..routing.max_images_per_row)."""

    def by_field(self) -> dict[str, str]:
        """Setting → the data's column holding it."""
        return dict(self)


class SourceConfig(StrictModel):
    """A Parquet prompt dataset: local path, glob, folder or s3:// URI."""

    uri: str = Field(min_length=1)
    """Parquet file, folder, glob (`data/*.parquet`) or `s3://bucket/prefix`."""
    prompt_column: str = "prompt"
    """Column holding the prompt text (required in the data)."""
    id_column: str = "id"
    """Column with a stable row id; when the data has no such column, ids are derived from the prompt."""
    negative_prompt_column: str = "negative_prompt"
    """Optional per-row negative prompt."""
    columns: ColumnNames = ColumnNames()
    """Columns holding the optional per-row settings, when the data names them differently (the generator column
    is `routing.column`)."""
    s3: S3Config = S3Config()
    """Connection for s3:// sources."""
    max_prompt_chars: int = Field(default=10_000, ge=1)
    """Longer prompts become error rows."""
    num_rows_per_block: int = Field(default=0, ge=0)
    """Rows per Ray Data block before generation; 0 = pick from the pool sizes so all actors get work."""

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
        return self
