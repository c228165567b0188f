"""The query-attack evaluation of docs/defenses.md ("Query-based attacks:
similarity", "Membership", "Budgets"), with IBM's Adversarial Robustness
Toolbox, through Warden's HTTP API only. Run by eval/art.sh, which starts
Warden with the model copies named below:

    art_eval.py URL CA_FILE KEYS_FILE OUT_JSON FIXTURE_JSON [--quick]

- Decision-based evasion: HopSkipJump and the Boundary attack, each from a
  noise start and from a natural start (a test digit of another class),
  against digits as shipped, with no defense, and with each defense alone
  set to `reject`; HopSkipJump against digits-cnn as shipped and open. The
  attacker reads a refusal as "still the original class" (the best reading
  it has). A fresh key per attacked digit. Success: the model (run locally)
  answers another class for a query within L2 <= EPS of the digit (the
  closest such answered query is what the attacker holds when it stops).
- Natural traffic: every test row of each demo data set sent once by each of
  20 keys in shuffled batches, plus one key re-sending 5 rows 50 times;
  refused rows / rows sent.
- Distillation from natural queries (the digits training split, label
  answers), with and without the card's budget.
- Membership inference (ART's MembershipInferenceBlackBox, and
  LabelOnlyDecisionBoundary on a smaller sample) on digits and
  breast-cancer, as shipped and with no defense: members are the training
  split of scripts/train_demo_models.py, non-members its test split.

Also writes the e2e fixture: the first rows of a real HopSkipJump query
sequence (against the open copy) and the digits test rows.
"""

import json
import sys
import time

import numpy as np
import requests
from sklearn.datasets import load_breast_cancer, load_digits, load_iris
from sklearn.model_selection import train_test_split

SEED = 0  # scripts/train_demo_models.py's split
EPS = 2.0  # L2 in grey levels (pixels 0-16): an eighth of one pixel's range, ~4x HSJ's undefended result
BUDGET = 25_000  # queries per attacked digit: 1.4x what HopSkipJump needs undefended here
MODELS_DIR = "models"


def split(data):
    x, y = data.data.astype(np.float32), data.target
    return train_test_split(x, y, test_size=0.25, random_state=SEED, stratify=y)


class Warden:
    """Label answers over v2 REST; a refused batch reads as `fallback`."""

    def __init__(self, url, ca):
        self.url, self.s = url, requests.Session()
        self.s.verify = ca
        self.names = {}
        for m in ("iris", "breast-cancer", "breast-cancer-open"):
            card = open(f"{MODELS_DIR}/{m.replace('-open', '')}/model.toml").read()
            line = next(l for l in card.splitlines() if l.startswith("classes = "))
            self.names[m] = json.loads(line.split("=", 1)[1])

    def labels(self, model, key, x, shape=None):
        x = np.asarray(x, np.float32)
        shape = shape or [len(x), x.shape[1]]
        r = self.s.post(f"{self.url}/v2/models/{model}/infer", headers={"x-api-key": key},
                        json={"inputs": [{"name": "image" if model.startswith("digits-cnn") else "input",
                                          "datatype": "FP32", "shape": [len(x)] + list(shape[1:]),
                                          "data": x.ravel().tolist()}],
                              "outputs": [{"name": "label"}]}, verify=self.s.verify)
        if r.status_code == 200:
            out = {o["name"]: o for o in r.json()["outputs"]}["label"]
            # Class names (iris, breast-cancer) back to their indices.
            index = {str(n): i for i, n in enumerate(self.names.get(model, []))}
            return np.array([index[v] if v in index else int(v) for v in out["data"]]), None
        return None, r.json().get("code", str(r.status_code))


class OutOfBudget(Exception):
    """The attacker's query budget is spent."""


class Client:
    """ART's view of Warden: predict() with one-hot labels, counting queries
    up to BUDGET, and keeping the closest adversarial example Warden's
    answers confirmed (a query answered with another class than the
    digit's): that, not ART's return value, is what the attacker holds when
    it stops (ART's HopSkipJump never stops by itself when every answer is
    a refusal)."""

    def __init__(self, warden, model, key, fallback, origin, shape=None):
        self.w, self.model, self.key, self.fallback, self.shape = warden, model, key, fallback, shape
        self.origin = origin.reshape(-1)
        self.queries = self.refused = 0
        self.first_refusal = None
        self.best = float("inf")
        self.log = []

    def predict(self, x):
        if self.queries >= BUDGET:
            raise OutOfBudget()
        x = np.asarray(x, np.float32).reshape(len(x), -1)
        out = np.zeros((len(x), 10), np.float32)
        for i in range(0, len(x), 64):
            part = x[i:i + 64]
            self.log.extend(part.tolist())
            labels, code = self.w.labels(self.model, self.key, part,
                                         [len(part), 1, 8, 8] if self.shape else None)
            if labels is None:
                if self.first_refusal is None:
                    self.first_refusal = self.queries
                self.refused += len(part)
                labels = np.full(len(part), self.fallback)
            else:
                wrong = labels != self.fallback
                if wrong.any():
                    d = np.linalg.norm(part[wrong] - self.origin, axis=1).min()
                    self.best = min(self.best, float(d))
            self.queries += len(part)
            out[np.arange(i, i + len(part)), labels] = 1
        return out


def local_model(name):
    import onnxruntime as ort
    s = ort.InferenceSession(f"{MODELS_DIR}/{name}/1/model.onnx")
    inp = s.get_inputs()[0].name
    if name == "digits-cnn":
        return lambda x: s.run(["label"], {inp: np.asarray(x, np.float32).reshape(-1, 1, 8, 8)})[0].astype(int)
    return lambda x: s.run(None, {inp: np.asarray(x, np.float32)})[0].astype(int)


def evasion(warden, keys, model, attack, start, n, truth, x_test, y_test, budget):
    from art.attacks.evasion import BoundaryAttack, HopSkipJump
    from art.estimators.classification import BlackBoxClassifier
    rng = np.random.default_rng(1)
    rows = []
    picks = [i for i in range(len(x_test)) if truth(x_test[i:i + 1])[0] == y_test[i]][:n]
    for i in picks:
        x, y = x_test[i:i + 1], y_test[i]
        client = Client(warden, model, keys.pop(), y, x, shape=model.startswith("digits-cnn"))
        clf = BlackBoxClassifier(client.predict, (64,), 10, clip_values=(0, 16))
        init = None
        if start == "natural":
            others = [j for j in range(len(x_test)) if y_test[j] != y]
            init = x_test[rng.choice(others)][None, :]
        if attack == "hsj":
            a = HopSkipJump(clf, targeted=False, max_iter=40, max_eval=1000, init_eval=100, verbose=False)
        else:
            a = BoundaryAttack(clf, targeted=False, max_iter=budget // 25, num_trial=25, sample_size=20,
                               init_size=100, verbose=False)
        np.random.seed(1000 + int(i))  # ART draws from numpy's global generator
        try:
            a.generate(x, x_adv_init=init) if init is not None else a.generate(x)
        except OutOfBudget:
            pass
        # The closest confirmed adversarial example (Warden's own answer
        # said "another class"; the local model agrees, the same graph).
        l2 = client.best
        ok = bool(l2 <= EPS)
        rows.append({"success": ok, "l2": l2 if np.isfinite(l2) else None, "queries": client.queries, "refused": client.refused,
                     "first_refusal": client.first_refusal, "out_of_budget": client.queries >= BUDGET})
        if attack == "hsj" and model == "digits-open" and "log" not in evasion.__dict__:
            evasion.log = client.log
    l2s = [r["l2"] if r["l2"] is not None else float("inf") for r in rows]
    firsts = [r["first_refusal"] for r in rows if r["first_refusal"] is not None]
    return {"model": model, "attack": attack, "start": start, "digits": len(rows),
            "succeeded": sum(r["success"] for r in rows),
            "out_of_budget": sum(r["out_of_budget"] for r in rows),
            "median_l2": float(np.median(l2s)) if np.isfinite(np.median(l2s)) else None,
            "median_queries": float(np.median([r["queries"] for r in rows])),
            "refused_share": float(sum(r["refused"] for r in rows) / max(1, sum(r["queries"] for r in rows))),
            "median_first_refusal": float(np.median(firsts)) if firsts else None,
            "per_digit": rows}


def natural(warden, keys, model, x, shape=None):
    rng = np.random.default_rng(2)
    sent = refused = 0
    refused_rows = []
    plan = [(k, i) for k in range(20) for i in range(len(x))]
    order = rng.permutation(len(plan))
    who = [keys.pop() for _ in range(20)]
    pos = 0
    while pos < len(order):
        n = int(rng.integers(1, 17))
        batch = [plan[j] for j in order[pos:pos + n]]
        pos += n
        # One request per key in the batch (a key's own rows).
        for k in sorted({b[0] for b in batch}):
            rows = x[[i for kk, i in batch if kk == k]]
            labels, code = warden.labels(model, who[k], rows, [len(rows), 1, 8, 8] if shape else None)
            if labels is None:
                refused_rows.extend(rows.tolist())
            sent += len(rows)
            refused += 0 if labels is not None else len(rows)
    retry = keys.pop()
    for _ in range(50):
        labels, code = warden.labels(model, retry, x[:5], [5, 1, 8, 8] if shape else None)
        sent += 5
        refused += 0 if labels is not None else 5
    distinct = len({tuple(r) for r in refused_rows})
    return {"model": model, "rows": sent, "refused": refused, "rate": refused / sent,
            "distinct_refused_rows": distinct}


def distill(warden, keys, model, x_train, x_test, truth):
    from sklearn.neural_network import MLPClassifier
    key = keys.pop()
    xs, ys = [], []
    stopped = None
    for i in range(0, len(x_train), 32):
        labels, code = warden.labels(model, key, x_train[i:i + 32])
        if labels is None:
            stopped = {"at_query": i, "code": code}
            break
        xs.append(x_train[i:i + 32])
        ys.append(labels)
    xs, ys = np.concatenate(xs), np.concatenate(ys)
    sur = MLPClassifier(hidden_layer_sizes=(64,), max_iter=500, random_state=0).fit(xs / 16, ys)
    agree = float((sur.predict(x_test / 16) == truth(x_test)).mean())
    return {"model": model, "answers": len(xs), "stopped": stopped, "agreement": agree}


def membership(warden, keys, model, data, decision_boundary):
    from art.attacks.inference.membership_inference import (LabelOnlyDecisionBoundary,
                                                            MembershipInferenceBlackBox)
    from art.estimators.classification import BlackBoxClassifier
    x_train, x_test, y_train, y_test = split(data)
    classes = int(max(y_train)) + 1
    n = len(x_test)
    key = keys.pop()

    def predict(x):
        x = np.asarray(x, np.float32)
        out = np.zeros((len(x), classes), np.float32)
        for i in range(0, len(x), 64):
            labels, code = warden.labels(model, key, x[i:i + 64])
            if labels is None:
                # A refusal: the attacker sees no label (all zeros).
                continue
            out[np.arange(i, i + len(labels)), labels] = 1
        return out

    lo, hi = float(data.data.min()), float(data.data.max())
    clf = BlackBoxClassifier(predict, (x_train.shape[1],), classes, clip_values=(lo, hi))
    half = n // 2
    np.random.seed(7)
    mb = MembershipInferenceBlackBox(clf, attack_model_type="rf")
    mb.fit(x_train[:half], y_train[:half], x_test[:half], y_test[:half])
    pm = mb.infer(x_train[half:n], y_train[half:n])
    pn = mb.infer(x_test[half:n], y_test[half:n])
    result = {"model": model, "blackbox_advantage": float(pm.mean() - pn.mean()), "pairs": n - half}
    # The shipped defenses' own signal: refusals and uncertain answers.
    refused = {}
    for name, xs in (("members", x_train[half:n]), ("non_members", x_test[half:n])):
        refused[name] = 0
        for i in range(0, len(xs), 64):
            labels, code = warden.labels(model, key, xs[i:i + 64])
            refused[name] += 0 if labels is not None else len(xs[i:i + 64])
    result["refused"] = refused
    if decision_boundary:
        m = 20
        lob = LabelOnlyDecisionBoundary(clf)
        lob.calibrate_distance_threshold(x_train[:m], y_train[:m], x_test[:m], y_test[:m],
                                         max_iter=3, max_eval=200, init_eval=50, verbose=False)
        dm = lob.infer(x_train[m:2 * m], y_train[m:2 * m], max_iter=3, max_eval=200, init_eval=50, verbose=False)
        dn = lob.infer(x_test[m:2 * m], y_test[m:2 * m], max_iter=3, max_eval=200, init_eval=50, verbose=False)
        result["decision_boundary_advantage"] = float(dm.mean() - dn.mean())
        result["decision_boundary_pairs"] = m
    return result


def natural_traffic(warden, keys, out, log, after_attacks=True):
    # Fresh copies (their stores hold no one's queries yet), then digits as
    # shipped after the attacks above: a digit an attacker has probed
    # resembles the attack's queries, and is refused while they are stored.
    for model, data, shape in [("digits-natural", load_digits(), None), ("digits-cnn-natural", load_digits(), True),
                               ("iris", load_iris(), None), ("breast-cancer", load_breast_cancer(), None),
                               ("digits", load_digits(), None)]:
        if model == "digits" and not after_attacks:
            continue
        _, xt, _, _ = split(data)
        r = natural(warden, keys, model, xt, shape)
        r["after_attacks"] = model == "digits"
        out["natural"].append(r)
        log(r)


def main():
    url, ca, keys_file, out_file, fixture_file = sys.argv[1:6]
    quick = "--quick" in sys.argv
    keys = json.load(open(keys_file))
    warden = Warden(url, ca)
    if "--natural-only" in sys.argv:
        # Re-measure natural traffic alone into an existing results file.
        out = json.load(open(out_file))
        kept = [dict(n, after_attacks=True) for n in out["natural"] if n["model"] == "digits"]
        out["natural"] = []
        natural_traffic(warden, keys, out, lambda r: print(r, file=sys.stderr, flush=True), after_attacks=False)
        out["natural"] += kept
        json.dump(out, open(out_file, "w"), indent=1)
        return
    x_train, x_test, y_train, y_test = split(load_digits())
    truth = local_model("digits")
    truth_cnn = local_model("digits-cnn")
    n = 2 if quick else 5
    started = time.time()
    out = {"eps_l2": EPS, "evasion": [], "natural": [], "distillation": [], "membership": []}

    def log(what):
        print(f"[{time.time() - started:6.0f}s] {what}", file=sys.stderr, flush=True)

    attacks = [("hsj", "noise"), ("hsj", "natural"), ("boundary", "noise"), ("boundary", "natural")]
    plan = [("digits-open", attacks, n), ("digits", attacks, n)]
    if not quick:
        plan += [("digits-similarity", attacks[:2], 3)] + [
            (m, attacks[:2], 3) for m in ["digits-ood", "digits-squeeze", "digits-prada"]]
    else:
        plan = [("digits-open", attacks[:1], n), ("digits", attacks[:1], n)]
    for model, which, count in plan:
        for attack, start in which:
            r = evasion(warden, keys, model, attack, start, count, truth, x_test, y_test, budget=5000)
            out["evasion"].append(r)
            log(r)
    for model in ["digits-cnn-open", "digits-cnn"]:
        r = evasion(warden, keys, model, "hsj", "noise", 2 if quick else 4, truth_cnn, x_test, y_test, budget=5000)
        out["evasion"].append(r)
        log(r)
    natural_traffic(warden, keys, out, log)
    for model in ["digits", "digits-budget"]:
        r = distill(warden, keys, model, x_train, x_test, truth)
        out["distillation"].append(r)
        log(r)
    for model, data in [("digits-open", load_digits()), ("digits", load_digits()),
                        ("breast-cancer-open", load_breast_cancer()), ("breast-cancer", load_breast_cancer())]:
        r = membership(warden, keys, model, data, decision_boundary=not quick and model.startswith("digits"))
        out["membership"].append(r)
        log(r)
    json.dump(out, open(out_file, "w"), indent=1)
    # 4 decimals: coarser rounding turns many of HopSkipJump's tiny
    # gradient-estimation steps into exact repeats, which are not matches.
    seq = getattr(evasion, "log", [])[:800]
    json.dump({"made_by": "eval/art.sh (eval/art_eval.py)",
               "what": "HopSkipJump's first queries against digits with no defense, and the digits test rows",
               "hsj_queries": np.round(np.asarray(seq), 4).tolist(),
               "test_rows": x_test.astype(int).tolist()}, open(fixture_file, "w"))
    log("done")


if __name__ == "__main__":
    main()
