#!/usr/bin/env python3
"""Writes the e2e suite's adversarial-digits fixture:
crates/warden/tests/e2e/fixtures/digits_fgsm.json.

The first 40 held-out clean test digits the model classifies correctly (the
half of the test split the squeezing threshold was NOT calibrated on, as in
eval/attacks.py), and FGSM (eps = 2 grey levels) copies of them that change
the model's answer, made with eval/attacks.py's numpy gradient of the ONNX
weights. The e2e test checks feature squeezing refuses most adversarial
rows and few clean ones, without needing numpy or scikit-learn in CI.

    .venv/bin/python eval/make_adversarial_fixture.py
"""

import json
from pathlib import Path

import numpy as np

from attacks import HI, LO, data, loss_gradient, onnx_mlp, true_model

OUT = Path(__file__).resolve().parent.parent / "crates/warden/tests/e2e/fixtures/digits_fgsm.json"


def main() -> None:
    _, x_test, _, y_test = data()
    truth = true_model()
    held, y = x_test[len(x_test) // 2:], y_test[len(x_test) // 2:]
    keep = truth(held) == y
    x, y = held[keep], y[keep]
    adv = np.clip(x + 2.0 * np.sign(loss_gradient(onnx_mlp(), x, y)), LO, HI).astype(np.float32)
    fooled = truth(adv) != y
    clean, adversarial = x[:40], adv[fooled][:40]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({
        "made_by": "eval/make_adversarial_fixture.py",
        "clean": clean.round(4).tolist(),
        "adversarial": adversarial.round(4).tolist(),
    }) + "\n")
    print(f"{len(clean)} clean, {len(adversarial)} adversarial rows -> {OUT}")


if __name__ == "__main__":
    main()
