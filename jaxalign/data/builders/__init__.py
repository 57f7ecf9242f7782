"""TFDS dataset builders. They write array_record files, read back as random-access data sources
(`builder.as_data_source()`) that feed `jaxalign.data.pipeline.make_batches` without TensorFlow."""

from jaxalign.data.builders.jsonl_preference import JsonlPreference, decode_record, prepare

__all__ = ["JsonlPreference", "decode_record", "prepare"]
