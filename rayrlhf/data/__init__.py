"""Datasets for Safe RLHF: typed, validated rows, their loaders and prompt templates."""

from rayrlhf.data.errors import DataValidationError
from rayrlhf.data.loaders import (
    DEMO_DATASETS,
    FILE_FORMATS,
    SCHEMA_TYPES,
    LoadResult,
    demo_dir,
    iter_raw_records,
    load_dataset_from_config,
    load_rows,
    spread,
    schema_type,
    write_rows,
)
from rayrlhf.data.schemas import (
    DEFAULT_MAX_CHARS,
    HARM_CATEGORIES,
    HARM_CATEGORY_ID,
    ROW_SCHEMAS,
    PreferenceRow,
    PromptRow,
    QAClassificationRow,
    Row,
    SFTRow,
)
from rayrlhf.data.templates import (
    SAFE_RLHF_TEMPLATE,
    TEMPLATES,
    encode_prompts,
    format_conversation,
    format_prompt,
)

__all__ = [
    "DEFAULT_MAX_CHARS",
    "DEMO_DATASETS",
    "DataValidationError",
    "FILE_FORMATS",
    "HARM_CATEGORIES",
    "HARM_CATEGORY_ID",
    "LoadResult",
    "PreferenceRow",
    "PromptRow",
    "QAClassificationRow",
    "ROW_SCHEMAS",
    "Row",
    "SAFE_RLHF_TEMPLATE",
    "SCHEMA_TYPES",
    "SFTRow",
    "TEMPLATES",
    "demo_dir",
    "encode_prompts",
    "format_conversation",
    "format_prompt",
    "iter_raw_records",
    "load_dataset_from_config",
    "load_rows",
    "schema_type",
    "spread",
    "write_rows",
]
