#!/usr/bin/env python3
"""Build Warden's tensor-format demo models: ONNX graphs written by hand with onnx.helper.

For each model this writes, under models/<name>/:
  1/model.onnx     the ONNX graph (opset 17, IR version 9, batch dimension "batch")
  model.toml       the model card in the tensor format: [[inputs]] / [[outputs]] tables,
                   task, [regression] or [classification], policy
  fixtures.json    three test cases (batch sizes 1, 5, 12) and every output Python
                   onnxruntime gives for them
and, for sentiment, vocab.json (token -> id; tokenize by lower-casing and splitting
on whitespace, unknown words -> 1 "[UNK]", padding -> 0 "[PAD]").

The models:
  diabetes     ridge regression on scikit-learn's bundled diabetes data (MatMul + Add)
  recommender  rating = user . item embeddings + biases + global mean, fitted by ALS
               on a synthetic 100-user x 200-item factor model (Gather on the id inputs)
  digits-cnn   Conv 3x3 (8 filters) + Relu + dense, trained with numpy on scikit-learn's
               bundled 8x8 digits; outputs label, probabilities, logits
  sentiment    masked mean of token embeddings + dense, trained with numpy on synthetic
               sentences; inputs input_ids and attention_mask [batch, sequence]

Nothing is downloaded: the data sets ship inside scikit-learn or are generated from
SEED. Training is single-threaded numpy, so re-running the script reproduces the same
graphs, cards and fixtures given the same library versions.

    python3 -m venv .venv && .venv/bin/pip install numpy scikit-learn onnx onnxruntime==1.32.0
    .venv/bin/python scripts/train_tensor_models.py
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # modest CPU use, and bit-identical float sums

import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import sklearn  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from sklearn.datasets import load_diabetes, load_digits  # noqa: E402
from sklearn.linear_model import RidgeCV  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

SEED = 20261123
ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
OPSET = 17
IR_VERSION = 9  # onnx >= 1.16 would stamp a newer IR by default; 9 is what opset 17 needs
SCRIPT = "scripts/train_tensor_models.py"
BATCHES = (1, 5, 12)  # fixture case batch sizes
DATATYPES = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64"}


# ---------------------------------------------------------------- shared helpers

def toml_str(s: str) -> str:
    return json.dumps(s)  # a JSON string is a valid TOML basic string for our ASCII names


def toml_value(v) -> str:
    if isinstance(v, str):
        return toml_str(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, float):
        return repr(float(v))
    return str(int(v))


# Comments placed above a key in the card, wherever the key appears.
KEY_COMMENTS = {
    "ids": "# ids = N: an index into a table of N rows; valid ids are 0..N-1",
    "range": "# range: the accepted values of every element (inclusive)",
    "max_shape": "# max_shape: the largest accepted [batch, sequence]; the sequence length may vary per request",
    "image": "# image = true: an image tensor [batch, channels, height, width] (enables image defenses)",
    "clamp": "# clamp: the returned value is clipped to [min, max]",
}


def tensor_lines(table: str, spec: dict) -> list[str]:
    lines = ["", f"[[{table}]]"]
    for key, value in spec.items():
        if key == "features":
            continue
        if key in KEY_COMMENTS:
            lines.append(KEY_COMMENTS[key])
        line = f"{key} = {toml_value(value)}"
        if key == "shape":
            line = f"{line:<29}# -1: dynamic; the first dimension is the batch"
        lines.append(line)
    for feature in spec.get("features", []):
        lines += ["", f"[[{table}.features]]"] + [f"{k} = {toml_value(v)}" for k, v in feature.items()]
    return lines


# Query similarity (Blacklight), acting by default on the image model as on
# digits (docs/defenses.md, "Query-based attacks: similarity").
SIMILARITY = [
    "[defenses.similarity]",
    "# Refuse a query that closely resembles an earlier one, from any key (query-based",
    "# attacks iterate in small steps; exact repeats are not matches). Defaults:",
    "# levels = 4, window = 8 (the image's width), top_k = 30, threshold = 25, capacity = 50000.",
    'action = "reject"',
]


def write_card(out_dir: Path, *, description: str, task: str, inputs: list[dict], outputs: list[dict],
               section: dict, policy: dict, defenses: list[str] | None = None) -> None:
    other = "classification" if task == "regression" else "regression"
    lines = [
        f"# Model card: {out_dir.name}. Written by {SCRIPT} (docs/models.md).",
        f"description = {toml_str(description)}",
        f"{'task = ' + toml_str(task):<29}# or {toml_str(other)}",
        "max_batch = 64",
    ]
    for spec in inputs:
        lines += tensor_lines("inputs", spec)
    for spec in outputs:
        lines += tensor_lines("outputs", spec)
    lines += ["", f"[{task}]"]
    if task == "regression":
        lines.append("# the output that holds the predicted value")
    else:
        lines.append("# the outputs with the class index (int64 [N]) and class probabilities (float [N, classes])")
    lines += [f"{k} = {toml_value(v)}" for k, v in section.items()]
    lines += ["", "[policy]"]
    for key, value in policy.items():
        if key in KEY_COMMENTS:
            lines.append(KEY_COMMENTS[key])
        elif key == "output":
            lines.append('# "label": predictions only; "probabilities": labels and rounded probabilities')
        elif key == "decimals":
            lines.append("# returned floats are rounded to this many decimals")
        lines.append(f"{key} = {toml_value(value)}")
    if defenses:
        lines += [""] + defenses
    (out_dir / "model.toml").write_text("\n".join(lines) + "\n")


def feature_stats(names: list[str], x_train: np.ndarray) -> list[dict]:
    mins, maxs = x_train.min(axis=0), x_train.max(axis=0)
    means, stds = x_train.mean(axis=0), x_train.std(axis=0)
    return [{"name": n, "min": float(mins[i]), "max": float(maxs[i]),
             "mean": round(float(means[i]), 6), "std": round(float(stds[i]), 6)} for i, n in enumerate(names)]


def init(name: str, array: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(array), name)


def save_model(name: str, graph: onnx.GraphProto, doc: str) -> tuple[Path, ort.InferenceSession]:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="warden/" + SCRIPT, producer_version="1", doc_string=doc)
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    out_dir = MODELS / name
    (out_dir / "1").mkdir(parents=True, exist_ok=True)
    path = out_dir / "1" / "model.onnx"
    path.write_bytes(model.SerializeToString())
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return path, sess


def run(sess: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def tensor_json(name: str, array: np.ndarray) -> dict:
    data = [float(v) if array.dtype == np.float32 else int(v) for v in array.reshape(-1)]
    return {"name": name, "datatype": DATATYPES[array.dtype], "shape": list(array.shape), "data": data}


def write_fixtures(name: str, sess: ort.InferenceSession, cases: list[dict[str, np.ndarray]]) -> None:
    out = []
    for feeds in cases:
        outputs = run(sess, feeds)
        out.append({"inputs": [tensor_json(k, v) for k, v in feeds.items()],
                    "outputs": [tensor_json(k, v) for k, v in outputs.items()]})
    fixture = {
        "model": name,
        "generated_by": SCRIPT,
        "versions": {"numpy": np.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__,
                     "scikit-learn": sklearn.__version__},
        "cases": out,
    }
    (MODELS / name / "fixtures.json").write_text(json.dumps(fixture, indent=1) + "\n")


def check_batches(sess: ort.InferenceSession, make_feeds, reference) -> None:
    """Runs batch sizes 1 and 7 and compares every output with the numpy reference."""
    for n in (1, 7):
        feeds = make_feeds(n)
        got, want = run(sess, feeds), reference(feeds)
        for key, value in want.items():
            assert got[key].shape == value.shape, (key, got[key].shape, value.shape)
            if value.dtype == np.int64:
                assert np.array_equal(got[key], value), key
            else:
                np.testing.assert_allclose(got[key], value, rtol=1e-4, atol=1e-4, err_msg=key)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def classifier_tail(nodes: list, logits: str) -> None:
    nodes.append(helper.make_node("Softmax", [logits], ["probabilities"], axis=-1))
    nodes.append(helper.make_node("ArgMax", [logits], ["label"], axis=1, keepdims=0))


def classifier_outputs(n_classes: int) -> list:
    return [helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", n_classes]),
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", n_classes])]


def classifier_card_outputs(n_classes: int) -> list[dict]:
    return [{"name": "label", "datatype": "INT64", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, n_classes]},
            {"name": "logits", "datatype": "FP32", "shape": [-1, n_classes]}]


class Adam:
    def __init__(self, params: dict[str, np.ndarray], lr: float) -> None:
        self.params, self.lr, self.t = params, lr, 0
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}

    def step(self, grads: dict[str, np.ndarray]) -> None:
        self.t += 1
        for k, g in grads.items():
            self.m[k] = 0.9 * self.m[k] + 0.1 * g
            self.v[k] = 0.999 * self.v[k] + 0.001 * g * g
            m_hat = self.m[k] / (1 - 0.9 ** self.t)
            v_hat = self.v[k] / (1 - 0.999 ** self.t)
            self.params[k] -= self.lr * m_hat / (np.sqrt(v_hat) + 1e-8)


# ---------------------------------------------------------------- diabetes

def diabetes() -> str:
    data = load_diabetes()
    x_train, x_test, y_train, y_test = train_test_split(data.data, data.target, test_size=0.25, random_state=SEED)
    reg = RidgeCV(alphas=np.logspace(-4, 2, 25)).fit(x_train, y_train)
    w = reg.coef_.astype(np.float32).reshape(10, 1)
    b = np.array([reg.intercept_], dtype=np.float32)

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "weights"], ["product"]),
         helper.make_node("Add", ["product", "bias"], ["value"])],
        "diabetes",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 10])],
        [helper.make_tensor_value_info("value", TensorProto.FLOAT, ["batch", 1])],
        [init("weights", w), init("bias", b)])
    path, sess = save_model("diabetes", graph, f"Ridge regression (alpha {reg.alpha_:.4g}) on sklearn load_diabetes")

    x_test32 = x_test.astype(np.float32)
    check_batches(sess, lambda n: {"input": x_test32[:n]}, lambda f: {"value": f["input"] @ w + b})
    pred = run(sess, {"input": x_test32})["value"][:, 0].astype(np.float64)
    np.testing.assert_allclose(pred, reg.predict(x_test), rtol=1e-4, atol=1e-3)
    r2 = 1 - ((y_test - pred) ** 2).sum() / ((y_test - y_test.mean()) ** 2).sum()
    rmse = float(np.sqrt(((y_test - pred) ** 2).mean()))

    write_card(MODELS / "diabetes",
               description="Diabetes disease progression one year after baseline, from 10 measurements (ridge regression)",
               task="regression",
               inputs=[{"name": "input", "datatype": "FP32", "shape": [-1, 10],
                        "features": feature_stats(list(data.feature_names), x_train)}],
               outputs=[{"name": "value", "datatype": "FP32", "shape": [-1, 1]}],
               section={"output": "value"}, policy={"decimals": 2})
    starts = np.cumsum((0,) + BATCHES)
    write_fixtures("diabetes", sess, [{"input": x_test32[s:s + n]} for s, n in zip(starts, BATCHES)])
    return (f"diabetes: {path.stat().st_size} bytes, test R² {r2:.3f}, RMSE {rmse:.1f} "
            f"(target std {y_test.std():.1f}), ridge alpha {reg.alpha_:.4g}")


# ---------------------------------------------------------------- recommender

def recommender() -> str:
    rng = np.random.default_rng(SEED)
    n_users, n_items, dim = 100, 200, 8
    # Hidden factor model: rating = 3.4 + user bias + item bias + <p_u, q_i> + noise, rounded into 1..5.
    p_true = rng.normal(0, 0.5, (n_users, dim))
    q_true = rng.normal(0, 0.5, (n_items, dim))
    bu_true, bi_true = rng.normal(0, 0.3, n_users), rng.normal(0, 0.4, n_items)
    pairs = rng.choice(n_users * n_items, size=8000, replace=False)  # 40% of the matrix observed
    users, items = pairs // n_items, pairs % n_items
    raw = 3.4 + bu_true[users] + bi_true[items] + (p_true[users] * q_true[items]).sum(1) + rng.normal(0, 0.3, len(pairs))
    ratings = np.clip(np.rint(raw), 1, 5)
    n_train = 6400
    tr_u, tr_i, tr_r = users[:n_train], items[:n_train], ratings[:n_train]
    te_u, te_i, te_r = users[n_train:], items[n_train:], ratings[n_train:]

    # Alternating least squares on [embedding, bias] with L2 regularisation.
    mu = float(tr_r.mean())
    p, q = rng.normal(0, 0.1, (n_users, dim)), rng.normal(0, 0.1, (n_items, dim))
    bu, bi = np.zeros(n_users), np.zeros(n_items)
    lam = 2.0
    by_user = [np.flatnonzero(tr_u == u) for u in range(n_users)]
    by_item = [np.flatnonzero(tr_i == i) for i in range(n_items)]
    for _ in range(25):
        for u, rows in enumerate(by_user):
            x = np.hstack([q[tr_i[rows]], np.ones((len(rows), 1))])
            sol = np.linalg.solve(x.T @ x + lam * np.eye(dim + 1), x.T @ (tr_r[rows] - mu - bi[tr_i[rows]]))
            p[u], bu[u] = sol[:dim], sol[dim]
        for i, rows in enumerate(by_item):
            x = np.hstack([p[tr_u[rows]], np.ones((len(rows), 1))])
            sol = np.linalg.solve(x.T @ x + lam * np.eye(dim + 1), x.T @ (tr_r[rows] - mu - bu[tr_u[rows]]))
            q[i], bi[i] = sol[:dim], sol[dim]

    p32, q32 = p.astype(np.float32), q.astype(np.float32)
    bu32, bi32, mu32 = bu.astype(np.float32), bi.astype(np.float32), np.array(mu, dtype=np.float32)
    nodes = [
        # The embedding and bias Gathers index the graph inputs directly: Warden reads the
        # tables' sizes (the valid id ranges) from them.
        helper.make_node("Gather", ["user_embedding", "user_id"], ["user_vec"], axis=0),
        helper.make_node("Gather", ["item_embedding", "item_id"], ["item_vec"], axis=0),
        helper.make_node("Mul", ["user_vec", "item_vec"], ["interaction"]),
        helper.make_node("ReduceSum", ["interaction", "axis_1"], ["dot"], keepdims=0),
        helper.make_node("Gather", ["user_bias", "user_id"], ["user_b"], axis=0),
        helper.make_node("Gather", ["item_bias", "item_id"], ["item_b"], axis=0),
        helper.make_node("Add", ["dot", "user_b"], ["s1"]),
        helper.make_node("Add", ["s1", "item_b"], ["s2"]),
        helper.make_node("Add", ["s2", "global_mean"], ["score"]),
    ]
    graph = helper.make_graph(
        nodes, "recommender",
        [helper.make_tensor_value_info("user_id", TensorProto.INT64, ["batch"]),
         helper.make_tensor_value_info("item_id", TensorProto.INT64, ["batch"])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"])],
        [init("user_embedding", p32), init("item_embedding", q32), init("user_bias", bu32),
         init("item_bias", bi32), init("global_mean", mu32), init("axis_1", np.array([1], dtype=np.int64))])
    path, sess = save_model("recommender", graph, "Matrix factorisation (ALS) on a synthetic 100x200 rating matrix")

    def reference(f):
        u, i = f["user_id"], f["item_id"]
        return {"score": (p32[u] * q32[i]).sum(1) + bu32[u] + bi32[i] + mu32}

    te_u64, te_i64 = te_u.astype(np.int64), te_i.astype(np.int64)
    check_batches(sess, lambda n: {"user_id": te_u64[:n], "item_id": te_i64[:n]}, reference)
    pred = run(sess, {"user_id": te_u64, "item_id": te_i64})["score"].astype(np.float64)
    rmse = float(np.sqrt(((np.clip(pred, 1, 5) - te_r) ** 2).mean()))
    base = float(np.sqrt(((mu - te_r) ** 2).mean()))

    write_card(MODELS / "recommender",
               description="Predicted 1-5 rating of an item by a user, from learned embeddings (synthetic data)",
               task="regression",
               inputs=[{"name": "user_id", "datatype": "INT64", "shape": [-1], "ids": n_users},
                       {"name": "item_id", "datatype": "INT64", "shape": [-1], "ids": n_items}],
               outputs=[{"name": "score", "datatype": "FP32", "shape": [-1]}],
               section={"output": "score"}, policy={"decimals": 2, "clamp": [1.0, 5.0]})
    starts = np.cumsum((0,) + BATCHES)
    write_fixtures("recommender", sess, [{"user_id": te_u64[s:s + n], "item_id": te_i64[s:s + n]}
                                         for s, n in zip(starts, BATCHES)])
    return f"recommender: {path.stat().st_size} bytes, test RMSE {rmse:.3f} (global-mean baseline {base:.3f})"


# ---------------------------------------------------------------- digits-cnn

def patches3x3(x: np.ndarray) -> np.ndarray:
    """[N, 8, 8] -> [N, 8, 8, 9]: the zero-padded 3x3 neighbourhood of every pixel (k = 3*di + dj)."""
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    return np.stack([xp[:, di:di + 8, dj:dj + 8] for di in range(3) for dj in range(3)], axis=-1)


def digits_cnn() -> str:
    data = load_digits()
    images = data.images.astype(np.float32)  # [N, 8, 8], grey levels 0..16
    x_train, x_test, y_train, y_test = train_test_split(images, data.target, test_size=0.25,
                                                        random_state=SEED, stratify=data.target)
    rng = np.random.default_rng(SEED)
    n_filters, n_classes = 8, 10
    params = {
        "wc": rng.normal(0, np.sqrt(2 / 9), (9, n_filters)),
        "bc": np.zeros(n_filters),
        "wd": rng.normal(0, np.sqrt(1 / (64 * n_filters)), (64 * n_filters, n_classes)),
        "bd": np.zeros(n_classes),
    }

    def forward(x):
        pat = patches3x3(x.astype(np.float64) / 16.0)                   # [N, 8, 8, 9]
        pre = pat @ params["wc"] + params["bc"]                          # [N, 8, 8, C]
        act = np.maximum(pre, 0)
        flat = act.transpose(0, 3, 1, 2).reshape(len(x), -1)             # NCHW flatten, as ONNX Flatten
        return pat, pre, flat, flat @ params["wd"] + params["bd"]

    opt, decay = Adam(params, lr=0.005), 1e-4
    for _epoch in range(40):
        order = rng.permutation(len(x_train))
        for s in range(0, len(order), 32):
            idx = order[s:s + 32]
            pat, pre, flat, logits = forward(x_train[idx])
            d = softmax(logits)
            d[np.arange(len(idx)), y_train[idx]] -= 1
            d /= len(idx)
            dflat = d @ params["wd"].T
            dpre = dflat.reshape(len(idx), n_filters, 8, 8).transpose(0, 2, 3, 1) * (pre > 0)
            opt.step({"wd": flat.T @ d + decay * params["wd"], "bd": d.sum(0),
                      "wc": pat.reshape(-1, 9).T @ dpre.reshape(-1, n_filters) + decay * params["wc"],
                      "bc": dpre.reshape(-1, n_filters).sum(0)})

    conv_w = params["wc"].T.reshape(n_filters, 1, 3, 3).astype(np.float32)  # ONNX Conv: [M, C, kH, kW]
    nodes = [
        helper.make_node("Mul", ["image", "scale"], ["scaled"]),  # grey levels 0..16 -> 0..1
        helper.make_node("Conv", ["scaled", "conv_weight", "conv_bias"], ["conv"], kernel_shape=[3, 3],
                         pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["conv_relu"]),
        helper.make_node("Flatten", ["conv_relu"], ["features"], axis=1),
        helper.make_node("MatMul", ["features", "dense_weight"], ["dense"]),
        helper.make_node("Add", ["dense", "dense_bias"], ["logits"]),
    ]
    classifier_tail(nodes, "logits")
    graph = helper.make_graph(
        nodes, "digits_cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        classifier_outputs(n_classes),
        [init("scale", np.array(1 / 16, dtype=np.float32)), init("conv_weight", conv_w),
         init("conv_bias", params["bc"].astype(np.float32)),
         init("dense_weight", params["wd"].astype(np.float32)), init("dense_bias", params["bd"].astype(np.float32))])
    path, sess = save_model("digits-cnn", graph, "Conv3x3(8)+Relu+Dense CNN trained with numpy on sklearn load_digits")

    x_test4 = x_test[:, None, :, :]

    def reference(f):
        logits = forward(f["image"][:, 0])[3].astype(np.float32)
        return {"logits": logits, "probabilities": softmax(logits)}

    check_batches(sess, lambda n: {"image": x_test4[:n]}, reference)
    out = run(sess, {"image": x_test4})
    assert np.array_equal(out["label"], out["logits"].argmax(1))
    acc = float((out["label"] == y_test).mean())
    train_acc = float((forward(x_train)[3].argmax(1) == y_train).mean())
    assert acc > 0.9, acc

    write_card(MODELS / "digits-cnn",
               description="Handwritten digit from an 8x8 grey-level image (small convolutional network)",
               task="classification",
               inputs=[{"name": "image", "datatype": "FP32", "shape": [-1, 1, 8, 8], "range": [0.0, 16.0],
                        "image": True}],
               outputs=classifier_card_outputs(n_classes),
               section={"label": "label", "probabilities": "probabilities",
                        "classes": [str(c) for c in data.target_names]},
               policy={"output": "probabilities", "decimals": 2},
               defenses=SIMILARITY)
    starts = np.cumsum((0,) + BATCHES)
    write_fixtures("digits-cnn", sess, [{"image": x_test4[s:s + n]} for s, n in zip(starts, BATCHES)])
    return f"digits-cnn: {path.stat().st_size} bytes, test accuracy {acc:.3f} (train {train_acc:.3f})"


# ---------------------------------------------------------------- sentiment

POSITIVE = """good great excellent amazing wonderful fantastic love loved lovely best brilliant superb enjoyable
delightful perfect beautiful happy pleasant fun awesome outstanding charming favorite recommend impressive enjoyed
nice solid terrific masterpiece gorgeous friendly helpful clean fresh smooth satisfying liked glad excited""".split()
NEGATIVE = """bad terrible awful horrible worst boring poor hate hated disappointing dull ugly annoying broken waste
mediocre weak rude dirty slow painful sad useless unpleasant bland stupid mess failed failure worse cheap noisy
confusing overpriced disgusting tedious lame pathetic angry refund""".split()
NEUTRAL = """the a an and or but of to in on at by for with from about as into over after before under between
through during without within along across behind beyond this that these those it its they them their we our you
your he she his her i me my is was are were be been being have has had do does did will would can could should may
might must shall movie film book story plot actor actress scene music song album restaurant food meal dish menu
waiter table hotel room bed staff service price product phone screen battery camera app update delivery package
order store shop car drive road trip city town house garden kitchen window door chair desk computer laptop game
level player team season episode series chapter page author director character ending beginning middle time day
night week month year morning evening weekend today yesterday tomorrow hour minute people person friend family
child kid parent brother sister mother father dog cat water coffee tea bread cheese chicken soup salad pizza sauce
colour size model version brand box bag ticket seat show stage light sound voice word line part side point place
thing way kind type number group area street station train bus plane flight airport email letter call message""".split()


def build_vocab(rng: np.random.Generator, size: int = 500) -> list[str]:
    words = ["[PAD]", "[UNK]"] + POSITIVE + NEGATIVE
    seen = set(words)
    for w in NEUTRAL:
        if w not in seen:
            words.append(w)
            seen.add(w)
    # Fill up with pronounceable made-up neutral words (names, jargon) from fixed syllables.
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    while len(words) < size:
        w = "".join(rng.choice(syllables, size=int(rng.integers(2, 4))))
        if w not in seen:
            words.append(w)
            seen.add(w)
    return words


def make_sentences(rng: np.random.Generator, n: int, pos_ids: np.ndarray, neg_ids: np.ndarray,
                   neutral_ids: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    sentences, labels = [], np.empty(n, dtype=np.int64)
    for k in range(n):
        length = int(rng.integers(3, 41))
        intended = int(rng.integers(0, 2))
        kind = rng.random(length)  # < 0.2 sentiment word, < 0.22 unknown word, else neutral
        kind[rng.integers(0, length)] = 0.0  # at least one sentiment word
        toks = rng.choice(neutral_ids, size=length)
        toks[(kind >= 0.2) & (kind < 0.22)] = 1
        sent = np.flatnonzero(kind < 0.2)
        positive = rng.random(len(sent)) < (0.75 if intended else 0.25)
        toks[sent[positive]] = rng.choice(pos_ids, size=int(positive.sum()))
        toks[sent[~positive]] = rng.choice(neg_ids, size=int((~positive).sum()))
        if 2 * int(positive.sum()) == len(sent):  # a tie: one more word of the intended polarity
            free = np.flatnonzero(kind >= 0.2)
            slot = int(rng.choice(free)) if len(free) else int(sent[positive != bool(intended)][0])
            toks[slot] = rng.choice(pos_ids if intended else neg_ids)
            if slot in sent:
                positive[np.flatnonzero(sent == slot)[0]] = bool(intended)
            else:
                sent, positive = np.append(sent, slot), np.append(positive, bool(intended))
        label = int(2 * int(positive.sum()) > len(sent))  # the majority polarity of the sentiment words
        if rng.random() < 0.03:  # label noise
            label = 1 - label
        sentences.append(toks.astype(np.int64))
        labels[k] = label
    return sentences, labels


def pad(sentences: list[np.ndarray], length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    length = length or max(len(s) for s in sentences)
    ids = np.zeros((len(sentences), length), dtype=np.int64)
    mask = np.zeros((len(sentences), length), dtype=np.int64)
    for r, s in enumerate(sentences):
        ids[r, :len(s)], mask[r, :len(s)] = s, 1
    return ids, mask


def sentiment() -> str:
    rng = np.random.default_rng(SEED)
    vocab = build_vocab(rng)
    vsize, dim = len(vocab), 16
    pos_ids = np.arange(2, 2 + len(POSITIVE))
    neg_ids = np.arange(2 + len(POSITIVE), 2 + len(POSITIVE) + len(NEGATIVE))
    neutral_ids = np.arange(2 + len(POSITIVE) + len(NEGATIVE), vsize)
    sentences, labels = make_sentences(rng, 6000, pos_ids, neg_ids, neutral_ids)
    n_train = 4500
    tr_ids, tr_mask = pad(sentences[:n_train])
    tr_y = labels[:n_train]
    te_sent, te_y = sentences[n_train:], labels[n_train:]

    params = {"emb": rng.normal(0, 0.1, (vsize, dim)), "w": rng.normal(0, 0.1, (dim, 2)), "b": np.zeros(2)}
    params["emb"][0] = 0.0  # [PAD]: always masked out

    def forward(ids, mask):
        m = mask.astype(np.float64)
        count = np.maximum(m.sum(1, keepdims=True), 1.0)
        pooled = (params["emb"][ids] * m[:, :, None]).sum(1) / count
        return count, pooled, pooled @ params["w"] + params["b"]

    opt, decay = Adam(params, lr=0.02), 1e-3
    for _epoch in range(30):
        order = rng.permutation(n_train)
        for s in range(0, n_train, 128):
            idx = order[s:s + 128]
            ids, mask = tr_ids[idx], tr_mask[idx]
            count, pooled, logits = forward(ids, mask)
            d = softmax(logits)
            d[np.arange(len(idx)), tr_y[idx]] -= 1
            d /= len(idx)
            dpooled = (d @ params["w"].T) / count                       # [n, dim], per token
            rows, cols = np.nonzero(mask)
            demb = np.zeros_like(params["emb"])
            np.add.at(demb, ids[rows, cols], dpooled[rows])
            opt.step({"w": pooled.T @ d + decay * params["w"], "b": d.sum(0),
                      "emb": demb + decay * params["emb"]})

    emb32, w32, b32 = (params[k].astype(np.float32) for k in ("emb", "w", "b"))
    nodes = [
        helper.make_node("Gather", ["embedding", "input_ids"], ["token_vecs"], axis=0),   # [N, T, 16]
        helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),   # [N, T]
        helper.make_node("Unsqueeze", ["mask_f", "axis_2"], ["mask_3d"]),                 # [N, T, 1]
        helper.make_node("Mul", ["token_vecs", "mask_3d"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis_1"], ["summed"], keepdims=0),      # [N, 16]
        helper.make_node("ReduceSum", ["mask_f", "axis_1"], ["count"], keepdims=1),       # [N, 1]
        helper.make_node("Max", ["count", "one"], ["count_safe"]),  # an all-padding row pools to 0
        helper.make_node("Div", ["summed", "count_safe"], ["pooled"]),
        helper.make_node("MatMul", ["pooled", "dense_weight"], ["dense"]),
        helper.make_node("Add", ["dense", "dense_bias"], ["logits"]),
    ]
    classifier_tail(nodes, "logits")
    graph = helper.make_graph(
        nodes, "sentiment",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"])],
        classifier_outputs(2),
        [init("embedding", emb32), init("dense_weight", w32), init("dense_bias", b32),
         init("axis_1", np.array([1], dtype=np.int64)), init("axis_2", np.array([2], dtype=np.int64)),
         init("one", np.array(1.0, dtype=np.float32))])
    path, sess = save_model("sentiment", graph, "Masked-mean token embeddings + dense, trained with numpy on synthetic sentences")

    def reference(f):
        m = f["attention_mask"].astype(np.float32)
        pooled = (emb32[f["input_ids"]] * m[:, :, None]).sum(1) / np.maximum(m.sum(1, keepdims=True), 1.0)
        logits = pooled @ w32 + b32
        return {"label": logits.argmax(1), "probabilities": softmax(logits), "logits": logits}

    for length in (1, 3, 17, 40, 128):  # batch sizes 1 and 7 at several sequence lengths
        check_batches(sess, lambda n: dict(zip(("input_ids", "attention_mask"),
                                               pad([s[:length] for s in te_sent[:n]], length))), reference)
    te_ids, te_mask = pad(te_sent)
    out = run(sess, {"input_ids": te_ids, "attention_mask": te_mask})
    acc = float((out["label"] == te_y).mean())
    train_acc = float((forward(tr_ids, tr_mask)[2].argmax(1) == tr_y).mean())
    # Padding is masked out: each row alone, unpadded, gives the same logits.
    for r in range(12):
        alone = run(sess, {"input_ids": te_sent[r][None], "attention_mask": np.ones((1, len(te_sent[r])), np.int64)})
        np.testing.assert_allclose(alone["logits"][0], out["logits"][r], rtol=1e-5, atol=1e-5)

    out_dir = MODELS / "sentiment"
    (out_dir / "vocab.json").write_text(json.dumps({w: i for i, w in enumerate(vocab)}, indent=1) + "\n")
    write_card(out_dir,
               description="Sentiment (negative / positive) of a short English text given as token ids (synthetic data; vocab.json)",
               task="classification",
               inputs=[{"name": "input_ids", "datatype": "INT64", "shape": [-1, -1], "ids": vsize,
                        "max_shape": [64, 128]},
                       {"name": "attention_mask", "datatype": "INT64", "shape": [-1, -1], "range": [0, 1],
                        "max_shape": [64, 128]}],
               outputs=classifier_card_outputs(2),
               section={"label": "label", "probabilities": "probabilities", "classes": ["negative", "positive"]},
               policy={"output": "probabilities", "decimals": 2})
    # Cases: 1 row unpadded; 5 rows padded to their longest; 12 rows padded to 48 (past any sentence).
    cases = []
    for (s, n), length in zip(zip(np.cumsum((0,) + BATCHES), BATCHES), (None, None, 48)):
        ids, mask = pad(te_sent[s:s + n], length)
        cases.append({"input_ids": ids, "attention_mask": mask})
    write_fixtures("sentiment", sess, cases)
    lengths = [c["input_ids"].shape[1] for c in cases]
    return (f"sentiment: {path.stat().st_size} bytes, vocab {vsize}, test accuracy {acc:.3f} "
            f"(train {train_acc:.3f}), fixture sequence lengths {lengths}")


def main() -> int:
    summaries = [diabetes(), recommender(), digits_cnn(), sentiment()]
    for line in summaries:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
