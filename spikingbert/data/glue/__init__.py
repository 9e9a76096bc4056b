"""GLUE tasks for the pipeline: the TSV readers (`spikingbert.data.glue.tasks`), examples as model inputs with a
feature cache (`spikingbert.data.glue.features`), task and label names (`spikingbert.data.glue.info`), the dev
metrics (`spikingbert.data.glue.metrics`) and the downloader
(`spikingbert.data.glue.download`, used by ``download_glue_data.py``, not imported here).

The names below are the package's API: ``from spikingbert.data import glue`` then ``glue.load_task_dataset(...)``.
"""
from spikingbert.data.glue.features import (
    CACHE_FORMAT_VERSION,
    DatasetStats,
    InputFeatures,
    collate_trimmed,
    convert_examples_to_features,
    example_lengths,
    features_to_dataset,
    load_task_dataset,
    load_test_dataset,
    trim_batch,
    vocab_fingerprint,
)
from spikingbert.data.glue.info import TASK_INFO_NAME, TaskInfo, task_info, write_task_info
from spikingbert.data.glue.metrics import compute_metrics, main_metric
from spikingbert.data.glue.tasks import (
    DEFAULT_TASK_SETTINGS,
    PROCESSORS,
    SPLITS,
    GlueProcessor,
    InputExample,
    ReadStats,
    TaskSettings,
    canonical_task_name,
    default_task_settings,
    get_processor,
)

__all__ = [
    "CACHE_FORMAT_VERSION",
    "DEFAULT_TASK_SETTINGS",
    "PROCESSORS",
    "SPLITS",
    "TASK_INFO_NAME",
    "DatasetStats",
    "GlueProcessor",
    "InputExample",
    "InputFeatures",
    "ReadStats",
    "TaskInfo",
    "TaskSettings",
    "canonical_task_name",
    "collate_trimmed",
    "compute_metrics",
    "convert_examples_to_features",
    "default_task_settings",
    "example_lengths",
    "features_to_dataset",
    "get_processor",
    "load_task_dataset",
    "load_test_dataset",
    "main_metric",
    "task_info",
    "trim_batch",
    "vocab_fingerprint",
    "write_task_info",
]
