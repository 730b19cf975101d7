"""Triton's config fields (issue 16): model_warmup, input.format and output.label_filename
survive config.pbtxt -> ModelConfig -> the ModelConfig message; the classification strings
are Triton's, checked against numbers written out by hand."""

from __future__ import annotations

import numpy as np
from google.protobuf import text_format

from sluice.server.config.pbtxt import from_proto, parse_model_config, to_proto
from sluice.server.serving.classification import top_k

CONFIG = """
name: "m"
max_batch_size: 4
input [{ name: "x" data_type: TYPE_FP32 format: FORMAT_NHWC dims: [ 2, 2, 3 ] }]
output [{ name: "y" data_type: TYPE_FP32 dims: [ 5 ] label_filename: "labels.txt" }]
model_warmup [{ name: "w" batch_size: 2 count: 3
  inputs { key: "x" value: { data_type: TYPE_FP32 dims: [ 2, 2, 3 ] input_data_file: "x.bin" } }
}]
"""


def test_triton_fields_survive_a_round_trip_through_the_config_message():
    config = from_proto(parse_model_config(CONFIG, source="t"), "m")
    assert config.inputs[0].format == "FORMAT_NHWC"
    assert config.outputs[0].label_filename == "labels.txt"
    (sample,) = config.warmup
    assert (sample.name, sample.batch_size, sample.count) == ("w", 2, 3)
    assert sample.inputs["x"].source == "file" and sample.inputs["x"].data_file == "x.bin"
    again = parse_model_config(text_format.MessageToString(to_proto(config)), source="t")
    assert from_proto(again, "m") == config


def test_top_k_prints_values_as_std_to_string_does_with_the_label_when_there_is_one():
    values = np.array([[0.1, 0.25, 0.05], [1.5, -2.0, 1.5]], np.float32)
    assert top_k(values, 2, batched=True, labels=("a", "b")).tolist() == [
        [b"0.250000:1:b", b"0.100000:0:a"], [b"1.500000:0:a", b"1.500000:2"]]
    # a model that does not batch: one row, shape [k]; k past the elements: all of them
    assert top_k(np.array([200, 3], np.uint8), 5, batched=False).tolist() == [b"200:0", b"3:1"]
    assert top_k(np.array([0.5, 0.75]), 1, batched=False).tolist() == [b"0.750000:1"]
