"""StrictModel: the frozen, unknown-key-rejecting pydantic base of every config."""

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """Base for all configs: immutable, rejects unknown keys, documents fields by docstring."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)
