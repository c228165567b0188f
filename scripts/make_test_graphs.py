#!/usr/bin/env python3
"""Build the small ONNX graphs the integration tests serve (not demo models).

crates/warden/tests/models/mixed/1/model.onnx: one graph with an input of
each kind the demo models lack, so that the tests reach every datatype path:
  text  BYTES [N]     -> ai.onnx.ml LabelEncoder ("red" 1, "green" 2, "blue" 3, else 0)
  half  FP16  [N, 2]  -> summed per row
  flag  BOOL  [N]     -> 10 if true
  score FP32  [N]     = code(text) + sum(half) + 10 * flag
  echo  BYTES [N]     = text, unchanged
  even  BOOL  [N]     = code(text) is even
The card next to it is written by hand (tests/models/mixed/model.toml).

    python3 -m venv .venv && .venv/bin/pip install onnx onnxruntime==1.32.0 numpy
    .venv/bin/python scripts/make_test_graphs.py
"""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "crates" / "warden" / "tests" / "models" / "mixed" / "1" / "model.onnx"

nodes = [
    helper.make_node("LabelEncoder", ["text"], ["code"], domain="ai.onnx.ml",
                     keys_strings=["red", "green", "blue"], values_int64s=[1, 2, 3], default_int64=0),
    helper.make_node("Cast", ["code"], ["code_f"], to=TensorProto.FLOAT),
    helper.make_node("Cast", ["half"], ["half_f"], to=TensorProto.FLOAT),
    helper.make_node("ReduceSum", ["half_f", "axes"], ["half_sum"], keepdims=0),
    helper.make_node("Cast", ["flag"], ["flag_f"], to=TensorProto.FLOAT),
    helper.make_node("Mul", ["flag_f", "ten"], ["flag_10"]),
    helper.make_node("Add", ["code_f", "half_sum"], ["partial"]),
    helper.make_node("Add", ["partial", "flag_10"], ["score"]),
    helper.make_node("Identity", ["text"], ["echo"]),
    helper.make_node("Mod", ["code", "two"], ["rem"]),
    helper.make_node("Equal", ["rem", "zero"], ["even"]),
]
graph = helper.make_graph(
    nodes, "mixed",
    [helper.make_tensor_value_info("text", TensorProto.STRING, ["batch"]),
     helper.make_tensor_value_info("half", TensorProto.FLOAT16, ["batch", 2]),
     helper.make_tensor_value_info("flag", TensorProto.BOOL, ["batch"])],
    [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"]),
     helper.make_tensor_value_info("echo", TensorProto.STRING, ["batch"]),
     helper.make_tensor_value_info("even", TensorProto.BOOL, ["batch"])],
    initializer=[helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
                 helper.make_tensor("ten", TensorProto.FLOAT, [], [10.0]),
                 helper.make_tensor("two", TensorProto.INT64, [], [2]),
                 helper.make_tensor("zero", TensorProto.INT64, [], [0])],
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)])
model.ir_version = 9
onnx.checker.check_model(model)
OUT.parent.mkdir(parents=True, exist_ok=True)
OUT.write_bytes(model.SerializeToString())

sess = ort.InferenceSession(str(OUT), providers=["CPUExecutionProvider"])
score, echo, even = sess.run(None, {
    "text": np.array(["red", "blue", "purple"], dtype=object),
    "half": np.array([[0.5, 0.25], [1, 1], [0, 0]], dtype=np.float16),
    "flag": np.array([True, False, False]),
})
assert score.tolist() == [11.75, 5.0, 0.0], score
assert echo.tolist() == ["red", "blue", "purple"], echo
assert even.tolist() == [False, False, True], even
print(f"{OUT.relative_to(ROOT)}: {OUT.stat().st_size} bytes, checked")
