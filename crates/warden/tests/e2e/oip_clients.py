#!/usr/bin/env python3
"""Open Inference Protocol clients no one here wrote, against a running
Warden over HTTPS with an API key, with their default settings (both send
tensors in the binary data extension by default):

  oip_clients.py triton HOST:PORT CAFILE KEY MODELS_DIR
  oip_clients.py kserve HOST:PORT CAFILE KEY MODELS_DIR

For each tabular demo model: server live and ready, model ready, model
metadata, and inference on the model's fixture rows. For each tensor demo
model (several inputs, INT64 ids, images, dynamic sequence lengths): every
fixture case sent as binary tensor data and as JSON, every output the
answer holds compared with Python onnxruntime's (rounded as Warden's policy
rounds: 2 decimals). Prints one JSON object: {"live", "ready", "models":
{name: {"ready", "input", "shape", "datatype", "labels", "expected"}},
"tensor_models": {name: {"cases", "outputs", "problems"}}}. The e2e test
asserts on it.
"""

import asyncio
import json
import sys
from pathlib import Path

import numpy as np

MODELS = ["iris", "breast-cancer", "digits"]
TENSOR_MODELS = ["diabetes", "recommender", "digits-cnn", "sentiment"]
NUMPY = {"INT64": np.int64, "FP32": np.float32}


def cases(models_dir, name):
    f = json.loads((Path(models_dir) / name / "fixtures.json").read_text())
    return f["cases"]


def compare(name, case, classes, got, problems):
    """got: output name -> numpy array. Every output answered must agree."""
    expected = {o["name"]: o for o in case["outputs"]}
    for out_name, value in got.items():
        want = expected[out_name]
        if out_name == "label" and classes:
            names = [classes[int(i)] for i in want["data"]]
            if decode(value) != names:
                problems.append(f"{name} label: {decode(value)} != {names}")
            continue
        w = np.asarray(want["data"], dtype=np.float64)
        if name == "recommender":
            w = np.clip(w, 1.0, 5.0)
        g = np.asarray(value, dtype=np.float64).ravel()
        if g.shape != w.shape or np.abs(g - w).max() > 0.005 + 1e-9:
            problems.append(f"{name} {out_name}: {g.tolist()} vs {w.tolist()}")


def fixture(models_dir, name):
    f = json.loads((Path(models_dir) / name / "fixtures.json").read_text())
    rows = np.asarray(f["inputs"][:8], dtype=np.float32)
    return rows, [str(label) for label in f["labels"][:8]]


def decode(labels):
    return [x.decode() if isinstance(x, bytes) else str(x) for x in np.asarray(labels).ravel()]


def triton(host, ca, key, models_dir):
    import tritonclient.http as httpclient

    headers = {"X-API-Key": key}
    client = httpclient.InferenceServerClient(url=host, ssl=True, ssl_options={"ca_certs": ca})
    out = {
        "live": client.is_server_live(headers=headers),
        "ready": client.is_server_ready(headers=headers),
        "server": client.get_server_metadata(headers=headers)["name"],
        "models": {},
    }
    for name in MODELS:
        meta = client.get_model_metadata(name, headers=headers)
        rows, expected = fixture(models_dir, name)
        tensor = meta["inputs"][0]
        inp = httpclient.InferInput(tensor["name"], list(rows.shape), "FP32")
        inp.set_data_from_numpy(rows)  # binary_data=True: the client's default
        result = client.infer(name, [inp], headers=headers)
        out["models"][name] = {
            "ready": client.is_model_ready(name, headers=headers),
            "input": tensor["name"],
            "shape": tensor["shape"],
            "datatype": tensor["datatype"],
            "labels": decode(result.as_numpy("label")),
            "expected": expected,
        }
    out["tensor_models"] = {}
    for name in TENSOR_MODELS:
        meta = client.get_model_metadata(name, headers=headers)
        classes = meta.get("parameters", {}).get("classes", [])
        seen = {"cases": 0, "outputs": 0, "problems": []}
        for case in cases(models_dir, name):
            for binary in (True, False):
                inputs = []
                for t in case["inputs"]:
                    inp = httpclient.InferInput(t["name"], t["shape"], t["datatype"])
                    data = np.asarray(t["data"], dtype=NUMPY[t["datatype"]]).reshape(t["shape"])
                    inp.set_data_from_numpy(data, binary_data=binary)
                    inputs.append(inp)
                # A fresh dict per call: tritonclient writes the binary
                # framing header into the dict it is given, and a JSON call
                # after a binary one would carry a stale header length.
                result = client.infer(name, inputs, headers={"X-API-Key": key})
                got = {o["name"]: result.as_numpy(o["name"]) for o in result.get_response()["outputs"]}
                compare(name, case, classes, got, seen["problems"])
                seen["cases"] += 1
                seen["outputs"] += len(got)
        out["tensor_models"][name] = seen
    client.close()
    return out


async def kserve(host, ca, key, models_dir):
    import httpx
    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

    headers = {"X-API-Key": key}
    base = f"https://{host}"
    client = InferenceRESTClient(RESTConfig(protocol="v2", verify=ca))
    out = {
        "live": await client.is_server_live(base, headers=headers),
        "ready": await client.is_server_ready(base, headers=headers),
        "models": {},
    }
    for name in MODELS:
        rows, expected = fixture(models_dir, name)
        # KServe's REST client has no metadata call; its users fetch it
        # with httpx (which it is built on).
        async with httpx.AsyncClient(verify=ca) as plain:
            meta = (await plain.get(f"{base}/v2/models/{name}", headers=headers)).json()
        tensor = meta["inputs"][0]
        inp = InferInput(tensor["name"], list(rows.shape), "FP32")
        inp.set_data_from_numpy(rows)  # binary_data=True: the client's default
        response = await client.infer(
            base, InferRequest(model_name=name, infer_inputs=[inp]), model_name=name, headers=headers
        )
        labels = next(o for o in response.outputs if o.name == "label")
        out["models"][name] = {
            "ready": await client.is_model_ready(base, name, headers=headers),
            "input": tensor["name"],
            "shape": tensor["shape"],
            "datatype": tensor["datatype"],
            "labels": decode(labels.as_numpy()),
            "expected": expected,
        }
    out["tensor_models"] = {}
    for name in TENSOR_MODELS:
        async with httpx.AsyncClient(verify=ca) as plain:
            meta = (await plain.get(f"{base}/v2/models/{name}", headers=headers)).json()
        classes = meta.get("parameters", {}).get("classes", [])
        seen = {"cases": 0, "outputs": 0, "problems": []}
        for case in cases(models_dir, name):
            inputs = []
            for t in case["inputs"]:
                inp = InferInput(t["name"], t["shape"], t["datatype"])
                data = np.asarray(t["data"], dtype=NUMPY[t["datatype"]]).reshape(t["shape"])
                inp.set_data_from_numpy(data)  # binary_data=True: the client's default
                inputs.append(inp)
            response = await client.infer(
                base, InferRequest(model_name=name, infer_inputs=inputs), model_name=name, headers=headers
            )
            got = {o.name: o.as_numpy() for o in response.outputs}
            compare(name, case, classes, got, seen["problems"])
            seen["cases"] += 1
            seen["outputs"] += len(got)
        out["tensor_models"][name] = seen
    await client.close()
    return out


def main():
    which, host, ca, key, models_dir = sys.argv[1:6]
    if which == "triton":
        out = triton(host, ca, key, models_dir)
    else:
        out = asyncio.run(kserve(host, ca, key, models_dir))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
