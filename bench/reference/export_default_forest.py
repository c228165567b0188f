"""The seeds' model as teams write it: scikit-learn's RandomForestClassifier
with its defaults (100 trees, no depth limit), on iris with the demo models'
split and seed. bench/run.sh serves it from the reference stack
(REFERENCE_FOREST=default) and, as this ONNX file, from Warden, so both sides
run the same heavier model (docs/benchmarks.md).

    .venv/bin/python bench/reference/export_default_forest.py   # writes default-forest/model.onnx

Needs scikit-learn, skl2onnx and onnxruntime (the repository's .venv, as
scripts/train_demo_models.py).
"""

from pathlib import Path

import numpy as np
import onnxruntime as ort
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import train_test_split

SEED = 20261123  # scripts/train_demo_models.py and app.py
OPSETS = {"": 17, "ai.onnx.ml": 3}

iris = load_iris()
x_train, x_test, y_train, _ = train_test_split(iris.data, iris.target, test_size=0.25, random_state=SEED,
                                               stratify=iris.target)
model = RandomForestClassifier(random_state=SEED).fit(x_train.astype(np.float32), y_train)
onx = to_onnx(model, initial_types=[("input", FloatTensorType([None, 4]))],
              options={id(model): {"zipmap": False}}, target_opset=OPSETS)
out = Path(__file__).parent / "default-forest" / "model.onnx"
out.write_bytes(onx.SerializeToString())
# The graph must agree with scikit-learn on the test set.
labels, _ = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(
    None, {"input": x_test.astype(np.float32)})
assert (labels == model.predict(x_test.astype(np.float32))).all()
print(f"{out}: {out.stat().st_size} bytes, {len(model.estimators_)} trees, "
      f"max depth {max(e.tree_.max_depth for e in model.estimators_)}")
