"""Data layer: dataset schemas, validated CSV reading, feature encoding and partitioning.

A hospital brings its own CSV and a schema file; everything that shapes the features comes from
the schema, so all hospitals share one feature layout.
"""

from common.data.features import (
    ICD9_GROUPS,
    FeatureEncoder,
    column_feature_names,
    icd9_group,
    patient_ids,
)
from common.data.local import LocalData, encode_local, load_local_data
from common.data.partition import (
    home_values,
    partition,
    split_by_patient,
    write_partitions,
)
from common.data.reader import parse_frame, read_csv, read_raw
from common.data.schema import ColumnSpec, Schema, TargetRule
from common.data.schema_yaml import bundled_schema_names, load_schema, parse_schema, schema_text

__all__ = [
    "ICD9_GROUPS",
    "ColumnSpec",
    "FeatureEncoder",
    "LocalData",
    "Schema",
    "TargetRule",
    "bundled_schema_names",
    "column_feature_names",
    "encode_local",
    "home_values",
    "icd9_group",
    "load_local_data",
    "load_schema",
    "parse_frame",
    "parse_schema",
    "partition",
    "patient_ids",
    "read_csv",
    "read_raw",
    "schema_text",
    "split_by_patient",
    "write_partitions",
]
