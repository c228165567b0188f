#!/usr/bin/env python3
"""Train Warden's demo models from scikit-learn's bundled data sets and export them.

For each model this writes, under models/<name>/:
  1/model.onnx     the ONNX graph (skl2onnx, zipmap off, opsets {"": 17, "ai.onnx.ml": 3})
  model.toml       the model card: input schema with training statistics, classes, policy
  fixtures.json    test inputs and the outputs Python onnxruntime gives for them
then runs scripts/calibrate_defenses.py, which writes the cards' [defenses]
sections and ood_stats.json on the new graphs.

Nothing is downloaded: the data sets ship inside scikit-learn. Seeds are fixed, so
re-running the script reproduces the same cards, fixtures and defenses given the
same library versions (checked 2026-11-29 with scikit-learn 1.9.1: every file
identical except the gradient-boosting graph's bytes, whose predictions and
fixtures are unchanged).

    python3 -m venv .venv && .venv/bin/pip install scikit-learn skl2onnx onnxruntime
    .venv/bin/python scripts/train_demo_models.py
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import sklearn
import skl2onnx
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_breast_cancer, load_digits, load_iris
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

SEED = 20261123
ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
OPSETS = {"": 17, "ai.onnx.ml": 3}
FIXTURE_ROWS = 25


def snake(name: str) -> str:
    """'mean radius' -> 'mean_radius', 'sepal length (cm)' -> 'sepal_length_cm'."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def toml_str(s: str) -> str:
    return json.dumps(s)  # a JSON string is a valid TOML basic string for our ASCII names


def write_card(path: Path, *, description: str, features: list[str], x_train: np.ndarray,
               x_all: np.ndarray, classes: list[str], output: str, onnx_outputs: list[str],
               domain: tuple[float, float] | None) -> None:
    mins, maxs = x_train.min(axis=0), x_train.max(axis=0)
    # What validation accepts: the domain when known (pixels); otherwise
    # the whole data set's range (training and test rows alike) widened by
    # a quarter of it on each side, never below 0 for a feature that never
    # is. Not the training range: refusing a row the training set would
    # have accepted tells a caller the row is no member (docs/defenses.md,
    # "Membership").
    if domain is not None:
        accepted = [domain] * len(features)
    else:
        lo, hi = x_all.min(axis=0), x_all.max(axis=0)
        span = hi - lo
        accepted = [(round(max(0.0, float(lo[i] - span[i] / 4)) if lo[i] >= 0 else float(lo[i] - span[i] / 4), 6),
                     round(float(hi[i] + span[i] / 4), 6)) for i in range(len(features))]
    means, stds = x_train.mean(axis=0), x_train.std(axis=0)
    lines = [
        f"# Model card: {path.parent.name}. Written by scripts/train_demo_models.py;",
        "# the [policy] table is yours to edit, the statistics come from the training set.",
        f"description = {toml_str(description)}",
        "max_batch = 64",
        "",
        "[input]",
        '# Tensor name in the API (v2 "inputs[].name") and in the ONNX graph.',
        'name = "input"',
        'datatype = "FP32"',
    ]
    for i, name in enumerate(features):
        lines += [
            "",
            "[[input.features]]",
            f"name = {toml_str(name)}",
            f"min = {float(mins[i])!r}",
            f"max = {float(maxs[i])!r}",
            f"mean = {round(float(means[i]), 6)!r}",
            f"std = {round(float(stds[i]), 6)!r}",
        ]
        lines.append(f"range = [{float(accepted[i][0])!r}, {float(accepted[i][1])!r}]")
    lines += [
        "",
        "[output]",
        "# ONNX outputs: the predicted class index (int64 [N]) and class probabilities (float [N, classes]).",
        f"label = {toml_str(onnx_outputs[0])}",
        f"probabilities = {toml_str(onnx_outputs[1])}",
        f"classes = [{', '.join(toml_str(c) for c in classes)}]",
        "",
        "[policy]",
        '# "label": predictions only (SPEC default); "probabilities": labels and rounded probabilities.',
        f'output = "{output}"',
        "decimals = 2",
    ]
    path.write_text("\n".join(lines) + "\n")


def export(name: str, model, x: np.ndarray, y: np.ndarray, features: list[str], classes: list[str],
           description: str, output: str, domain: tuple[float, float] | None = None) -> None:
    """`domain`: the accepted value range of every feature when it is known a priori
    (pixels); otherwise the card accepts the whole data set's range widened by a quarter."""
    x_train64, x_test64, y_train, _ = train_test_split(x, y, test_size=0.25, random_state=SEED, stratify=y)
    x_train, x_test = x_train64.astype(np.float32), x_test64.astype(np.float32)
    model.fit(x_train, y_train)

    onx = to_onnx(
        model,
        initial_types=[("input", FloatTensorType([None, x.shape[1]]))],
        options={id(model): {"zipmap": False}} if not hasattr(model, "steps") else {id(model.steps[-1][1]): {"zipmap": False}},
        target_opset=OPSETS,
    )
    out_dir = MODELS / name
    (out_dir / "1").mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / "1" / "model.onnx"
    onnx_path.write_bytes(onx.SerializeToString())

    onnx_outputs = [o.name for o in onx.graph.output]  # skl2onnx: [label, probabilities]
    write_card(out_dir / "model.toml", description=description, features=features, x_train=x_train64,
               x_all=x, classes=classes, output=output, onnx_outputs=onnx_outputs, domain=domain)

    # Fixture rows: test rows, plus the training minimum and maximum of every feature.
    rows = np.vstack([x_test[: FIXTURE_ROWS - 2], x_train.min(axis=0), x_train.max(axis=0)]).astype(np.float32)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    labels, probs = sess.run(onnx_outputs, {"input": rows})
    fixture = {
        "model": name,
        "generated_by": "scripts/train_demo_models.py",
        "versions": {"scikit-learn": sklearn.__version__, "skl2onnx": skl2onnx.__version__,
                     "onnxruntime": ort.__version__},
        "inputs": rows.tolist(),
        "labels": [classes[int(i)] for i in labels],
        "label_indices": [int(i) for i in labels],
        "probabilities": probs.astype(np.float64).tolist(),
    }
    (out_dir / "fixtures.json").write_text(json.dumps(fixture, indent=1) + "\n")
    agree = float((model.predict(rows) == labels).mean())
    print(f"{name}: {onnx_path.stat().st_size} bytes, sklearn/onnxruntime label agreement {agree:.3f}")


def main() -> int:
    iris = load_iris()
    export("iris", RandomForestClassifier(n_estimators=50, max_depth=6, random_state=SEED),
           iris.data, iris.target, [snake(f) for f in iris.feature_names], list(iris.target_names),
           "Iris species from four flower measurements (random forest)", output="probabilities")

    bc = load_breast_cancer()
    export("breast-cancer", GradientBoostingClassifier(n_estimators=60, max_depth=3, random_state=SEED),
           bc.data, bc.target, [snake(f) for f in bc.feature_names], list(bc.target_names),
           "Breast tumour diagnosis from 30 cell-nucleus measurements (gradient boosting)", output="label")

    digits = load_digits()
    mlp = make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(64,), max_iter=400, random_state=SEED))
    export("digits", mlp, digits.data, digits.target, [snake(f) for f in digits.feature_names],
           [str(c) for c in digits.target_names],
           "Handwritten digit from an 8x8 grey-level image (multi-layer perceptron)", output="label",
           domain=(0.0, 16.0))
    # The cards just written carry no [defenses]: calibrate them on the new
    # graphs (scripts/calibrate_defenses.py, which can also run alone).
    import calibrate_defenses
    return calibrate_defenses.main()


if __name__ == "__main__":
    sys.exit(main())
