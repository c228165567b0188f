#!/usr/bin/env python3
"""Attacks against a running Warden, measured (docs/defenses.md). Run by eval/run.sh,
which starts Warden with the model copies this script expects:

  digits-open   probabilities (6 decimals), PRADA with action "reject", no quota
  digits-watch  as digits-open with PRADA "flag": an attacker that is never stopped
  digits-hard   label-only, PRADA "reject", and a 300-row daily quota (role attacker)
  digits-adv    feature squeezing with action "reject" (nothing else)
  digits-ood    out-of-distribution with action "reject" (nothing else)
  digits-probs  no defense, probabilities with 6 decimals  } output hardening
  digits-round  no defense, probabilities with 1 decimal   } against a
  digits-label  no defense, label only                     } distilling attacker
  iris-open     the iris card's defenses, PRADA "reject": benign iris traffic

(a) extraction: an attacker sampling uniformly within the feature ranges, and one
    growing a synthetic set Papernot-style (Jacobian-based augmentation of a
    surrogate), train a surrogate on Warden's answers; agreement with the real
    model on the test set as queries grow; the query at which PRADA rejects.
    Benign principals replay disjoint test rows: their false-positive rate
    (digits, and iris). The Papernot attacker also runs against digits-hard.
    Output hardening: an attacker with its own unlabelled natural digits (the
    training split) distils a surrogate from Warden's answers, probabilities
    or labels, as the query budget grows.
(b) adversarial: FGSM and BIM on the digits MLP with gradients computed in numpy
    from the ONNX weights; detection rate (422 from digits-adv) of successful
    adversarial examples, and the false-positive rate on clean held-out rows.
(c) out of distribution: rejected rate on the test set vs shifted and noised copies.

Usage: attacks.py URL CA_FILE KEYS_JSON OUT_JSON
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import requests
from onnx import numpy_helper
from sklearn.datasets import load_digits, load_iris
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier, MLPRegressor

SEED = 20261123
ROOT = Path(__file__).resolve().parent.parent
ONNX = ROOT / "models/digits/1/model.onnx"
LO, HI = 0.0, 16.0
rng = np.random.default_rng(7)


class Warden:
    def __init__(self, url: str, ca: str):
        self.url, self.session = url, requests.Session()
        self.session.verify = ca

    def predict(self, model: str, key: str, x: np.ndarray):
        """Returns (status, labels or None, probabilities or None)."""
        r = self.session.post(f"{self.url}/v1/models/{model}:predict", headers={"x-api-key": key},
                              json={"instances": np.asarray(x, dtype=float).tolist()}, verify=self.session.verify)
        if r.status_code != 200:
            return r.status_code, None, None
        preds = r.json()["predictions"]
        if not str(preds[0]["label"]).isdigit():  # iris: only the status is used
            return r.status_code, [p["label"] for p in preds], None
        labels = [int(p["label"]) for p in preds]
        probs = [[p["probabilities"][str(c)] for c in range(10)] for p in preds] if "probabilities" in preds[0] else None
        return 200, labels, probs


def data():
    d = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(d.data, d.target, test_size=0.25, random_state=SEED,
                                                        stratify=d.target)
    return x_train.astype(np.float32), x_test.astype(np.float32), y_train, y_test


def true_model():
    sess = ort.InferenceSession(str(ONNX), providers=["CPUExecutionProvider"])
    return lambda x: sess.run(None, {"input": np.asarray(x, dtype=np.float32)})[0].astype(int)


# --- (a) extraction -----------------------------------------------------------------------------

def surrogate_agreement(xs, ys, x_test, truth):
    if len(set(ys)) < 2:
        return 0.0
    s = MLPClassifier(hidden_layer_sizes=(64,), max_iter=300, random_state=0).fit(np.array(xs) / 16.0, ys)
    return float((s.predict(x_test / 16.0) == truth).mean())


def uniform_queries(n):
    return rng.uniform(LO, HI, size=(n, 64)).astype(np.float32)


def papernot_queries(warden, model, key, seed_x, budget, lam=2.0):
    """Jacobian-based dataset augmentation (Papernot et al. 2017): start from a
    few seed images; each round, train a surrogate on what was learnt and add,
    for every known point, a step of lam along the sign of the surrogate's
    gradient for the label Warden gave it. Queries one row at a time."""
    xs, ys, first_reject = [], [], None
    frontier = list(seed_x)
    while len(xs) < budget:
        new, new_labels = [], []
        for x in frontier:
            if len(xs) >= budget:
                break
            status, labels, _ = warden.predict(model, key, x[None, :])
            if status != 200:
                first_reject = first_reject or len(xs) + 1
                if status in (422, 429):
                    return xs, ys, first_reject
                continue
            xs.append(x)
            ys.append(labels[0])
            new.append(x)
            new_labels.append(labels[0])
        if not new:
            break
        if len(set(ys)) < 2:
            frontier = [np.clip(x + rng.normal(0, 2, 64), LO, HI).astype(np.float32) for x in new]
            continue
        sur = MLPClassifier(hidden_layer_sizes=(32,), max_iter=200, random_state=0).fit(np.array(xs) / 16.0, ys)
        grads = mlp_input_gradient(sur, np.array(new) / 16.0, new_labels)
        frontier = [np.clip(x + lam * np.sign(g), LO, HI).astype(np.float32) for x, g in zip(new, grads)]
    return xs, ys, first_reject


def mlp_input_gradient(mlp: MLPClassifier, x, labels):
    """d p(label|x) / dx for a one-hidden-layer sklearn MLP (ReLU, softmax)."""
    w1, w2 = mlp.coefs_
    b1, b2 = mlp.intercepts_
    h_pre = x @ w1 + b1
    h = np.maximum(h_pre, 0)
    z = h @ w2 + b2
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    grads = []
    classes = list(mlp.classes_)
    for i, lab in enumerate(labels):
        k = classes.index(lab) if lab in classes else int(np.argmax(p[i]))
        dz = -p[i] * p[i, k]
        dz[k] += p[i, k]
        dh = (w2 @ dz) * (h_pre[i] > 0)
        grads.append(w1 @ dh)
    return np.array(grads)


def extraction(warden, keys, x_test, truth_fn):
    truth = truth_fn(x_test)
    out = {}
    checkpoints = [50, 100, 200, 400, 800, 1500]
    for name, model, key in [("uniform", "digits-open", keys["attacker_uniform"]),
                             ("papernot", "digits-open", keys["attacker_papernot"]),
                             ("papernot_never_stopped", "digits-watch", keys["attacker_watch"])]:
        if name == "uniform":
            xs, ys, first_reject = [], [], None
            for x in uniform_queries(1500):
                status, labels, _ = warden.predict(model, key, x[None, :])
                if status != 200:
                    first_reject = len(xs) + 1
                    break
                xs.append(x)
                ys.append(labels[0])
        else:
            seeds = x_test[rng.choice(len(x_test), 10, replace=False)]
            xs, ys, first_reject = papernot_queries(warden, model, key, seeds, 1500)
        curve = {n: surrogate_agreement(xs[:n], ys[:n], x_test, truth) for n in checkpoints if n <= len(xs)}
        out[name] = {"queries_answered": len(xs), "rejected_at_query": first_reject,
                     "agreement_at_flag": surrogate_agreement(xs, ys, x_test, truth),
                     "agreement_curve": curve}
    # The same uniform attacker against label-only + quota (PRADA too): what it gets.
    xs, ys, stop = [], [], None
    for x in uniform_queries(1500):
        status, labels, _ = warden.predict("digits-hard", keys["attacker_hard"], x[None, :])
        if status != 200:
            stop = {"query": len(xs) + 1, "status": status}
            break
        xs.append(x)
        ys.append(labels[0])
    out["uniform_label_only_quota"] = {"queries_answered": len(xs), "stopped": stop,
                                       "agreement": surrogate_agreement(xs, ys, x_test, truth)}
    # Benign: five principals, each replaying its own 200 test rows (shuffled).
    benign = []
    for i in range(5):
        key = keys[f"benign_{i}"]
        rows = x_test[rng.permutation(len(x_test))[:200]]
        flagged_at = None
        for j, x in enumerate(rows):
            status, _, _ = warden.predict("digits-open", key, x[None, :])
            if status == 422:
                flagged_at = j + 1
                break
        benign.append(flagged_at)
    out["benign"] = {"principals": 5, "queries_each": 200, "flagged": sum(b is not None for b in benign),
                     "flagged_at": benign}
    return out


def papernot_vs_hardened(warden, keys, x_test, truth_fn):
    """The Papernot attacker against label-only + quota + PRADA reject."""
    truth = truth_fn(x_test)
    seeds = x_test[rng.choice(len(x_test), 10, replace=False)]
    xs, ys, stop = papernot_queries(warden, "digits-hard", keys["attacker_hard_papernot"], seeds, 1500)
    return {"queries_answered": len(xs), "rejected_at_query": stop,
            "agreement": surrogate_agreement(xs, ys, x_test, truth)}


def benign_iris(warden, keys):
    """Five principals, each sending 120 of iris's 150 rows in its own order."""
    x = load_iris().data.astype(np.float32)
    flagged = []
    for i in range(5):
        rows = x[rng.permutation(len(x))[:120]]
        at = None
        for j, row in enumerate(rows):
            if warden.predict("iris-open", keys[f"benign_{i}"], row[None, :])[0] == 422:
                at = j + 1
                break
        flagged.append(at)
    return {"principals": 5, "queries_each": 120, "flagged": sum(f is not None for f in flagged),
            "flagged_at": flagged}


# --- output hardening against a distilling attacker ---------------------------------------------

def distill_agreement(xs, targets, x_test, truth):
    """A surrogate fitted to Warden's answers as targets (probability vectors,
    or one-hot labels): the same regressor for every kind of answer."""
    r = MLPRegressor(hidden_layer_sizes=(64,), max_iter=1000, random_state=0)
    r.fit(np.asarray(xs) / 16.0, np.asarray(targets))
    return float((r.predict(x_test / 16.0).argmax(axis=1) == truth).mean())


def hardening(warden, keys, x_train, x_test, truth_fn):
    truth = truth_fn(x_test)
    budgets = [20, 50, 100, 200, 400]
    pool = x_train[rng.permutation(len(x_train))[:max(budgets)]]
    out = {}
    for name, model in [("probabilities, 6 decimals", "digits-probs"),
                        ("probabilities, 1 decimal", "digits-round"),
                        ("label only", "digits-label")]:
        targets = []
        for x in pool:
            status, labels, probs = warden.predict(model, keys["distiller"], x[None, :])
            assert status == 200, status
            targets.append(probs[0] if probs else np.eye(10)[labels[0]])
        out[name] = {n: distill_agreement(pool[:n], targets[:n], x_test, truth) for n in budgets}
    return out


# --- (b) adversarial ----------------------------------------------------------------------------

def onnx_mlp():
    m = onnx.load(str(ONNX))
    init = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    scaler = next(n for n in m.graph.node if n.op_type == "Scaler")
    attrs = {a.name: np.array(a.floats) for a in scaler.attribute}
    return attrs["offset"], attrs["scale"], init["coefficient"], init["intercepts"][0], init["coefficient1"], init["intercepts1"][0]


def loss_gradient(params, x, y):
    """d cross-entropy(y) / dx through Scaler -> Dense+ReLU -> Dense -> softmax."""
    off, sc, w1, b1, w2, b2 = params
    s = (x - off) * sc
    h_pre = s @ w1 + b1
    h = np.maximum(h_pre, 0)
    z = h @ w2 + b2
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    dz = p.copy()
    dz[np.arange(len(y)), y] -= 1
    dh = (dz @ w2.T) * (h_pre > 0)
    return (dh @ w1.T) * sc


def adversarial(warden, keys, x_test, y_test, truth_fn):
    params = onnx_mlp()
    held = x_test[len(x_test) // 2:]
    y = y_test[len(x_test) // 2:]
    correct = truth_fn(held) == y
    x, y = held[correct], y[correct]
    attacks = {}
    for eps in (2.0, 4.0):
        attacks[f"FGSM eps={eps:g}"] = np.clip(x + eps * np.sign(loss_gradient(params, x, y)), LO, HI)
    adv = x.copy()
    for _ in range(10):  # BIM: 10 steps of 0.5, within eps = 3
        adv = adv + 0.5 * np.sign(loss_gradient(params, adv, y))
        adv = np.clip(np.clip(adv, x - 3.0, x + 3.0), LO, HI)
    attacks["BIM eps=3 (10 x 0.5)"] = adv
    out = {}
    key = keys["adv"]
    for name, ax in attacks.items():
        success = truth_fn(ax) != y
        ax = ax[success].astype(np.float32)
        detected = sum(warden.predict("digits-adv", key, row[None, :])[0] == 422 for row in ax)
        out[name] = {"examples": int(len(x)), "successful": int(success.sum()),
                     "detected": int(detected), "detection_rate": detected / max(1, len(ax))}
    clean_flags = sum(warden.predict("digits-adv", key, row[None, :])[0] == 422 for row in held)
    out["clean_false_positive_rate"] = clean_flags / len(held)
    return out


# --- (c) out of distribution --------------------------------------------------------------------

def ood(warden, keys, x_train, x_test):
    key = keys["ood"]
    std = x_train.std(axis=0)
    sets = {
        "test set": x_test,
        "shifted (+2 std on every pixel)": np.clip(x_test + 2 * std, LO, HI),
        "noised (Gaussian, sigma 3)": np.clip(x_test + rng.normal(0, 3.0, x_test.shape), LO, HI),
        "uniform noise images": uniform_queries(len(x_test)),
    }
    out = {}
    for name, xs in sets.items():
        flagged = sum(warden.predict("digits-ood", key, row[None, :])[0] == 422 for row in xs.astype(np.float32))
        out[name] = flagged / len(xs)
    return out


def main():
    url, ca, keys_file, out_file = sys.argv[1:5]
    keys = json.loads(Path(keys_file).read_text())
    warden = Warden(url, ca)
    x_train, x_test, y_train, y_test = data()
    truth_fn = true_model()
    started = time.monotonic()
    results = {
        "extraction": extraction(warden, keys, x_test, truth_fn),
        "papernot_vs_label_only_quota_prada": papernot_vs_hardened(warden, keys, x_test, truth_fn),
        "benign_iris": benign_iris(warden, keys),
        "output_hardening": hardening(warden, keys, x_train, x_test, truth_fn),
        "adversarial": adversarial(warden, keys, x_test, y_test, truth_fn),
        "out_of_distribution": ood(warden, keys, x_train, x_test),
    }
    results["seconds"] = round(time.monotonic() - started, 1)
    Path(out_file).write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
