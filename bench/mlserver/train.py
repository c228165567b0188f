"""Writes the iris RandomForest (the demo model: same data, split, seed and
hyper-parameters as scripts/train_demo_models.py) as a joblib file for Seldon
MLServer, with its model-settings.json, into the folder given. bench/run.sh
serves it with `mlserver start` over the Open Inference Protocol (v2)."""

import json
import sys
from pathlib import Path

import joblib
import numpy as np
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import train_test_split

SEED = 20261123
out = Path(sys.argv[1])
(out / "iris").mkdir(parents=True, exist_ok=True)
iris = load_iris()
x_train, _, y_train, _ = train_test_split(iris.data, iris.target, test_size=0.25, random_state=SEED,
                                          stratify=iris.target)
model = RandomForestClassifier(n_estimators=50, max_depth=6, random_state=SEED).fit(
    x_train.astype(np.float32), y_train)
joblib.dump(model, out / "iris" / "model.joblib")
(out / "iris" / "model-settings.json").write_text(json.dumps({
    "name": "iris", "implementation": "mlserver_sklearn.SKLearnModel",
    "parameters": {"uri": "./model.joblib", "version": "1"},
    # Declared so that its metadata describes the tensors (what `warden
    # model init --upstream` writes a gateway card from).
    "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}],
    "outputs": [{"name": "predict", "datatype": "INT64", "shape": [-1]},
                {"name": "predict_proba", "datatype": "FP64", "shape": [-1, 3]}]}))
(out / "settings.json").write_text(json.dumps({"debug": False, "parallel_workers": 0,
                                               "metrics_endpoint": None}))
