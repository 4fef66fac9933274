"""Where the prompt table comes from and how its columns map onto imagefleet's fields."""

from pydantic import Field

from configs.base import StrictModel
from configs.storage import S3Config


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
    s3: S3Config = S3Config()
    """Connection for s3:// sources."""
    max_prompt_chars: int = Field(default=10_000, ge=1)
    """Longer prompts become error rows."""
    num_rows_per_block: int = Field(default=0, ge=0)
    """Rows per Ray Data block before generation; 0 = pick from the pool sizes so all actors get work."""
