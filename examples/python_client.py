#!/usr/bin/env python3
"""Calling Warden from Python: plain `requests` (v1 and v2), and Triton's
clients over HTTP and gRPC (`pip install "tritonclient[http,grpc]"`), which
work unchanged.

    ./scripts/setup.sh && cargo run --release -- serve     # prints an admin key once
    pip install requests "tritonclient[http,grpc]"
    python3 examples/python_client.py --key wdn_...        # or WARDEN_KEY=wdn_...

The development certificate is issued by Warden's local development CA: pass
the CA as the one to trust (`--ca`, default warden-data/tls/ca.pem). The e2e suite runs this file
against a live server (crates/warden/tests/e2e/api.rs).
"""

import argparse
import os
import sys

import requests


def with_requests(url, ca, key):
    headers = {"X-API-Key": key}

    # v1 (KServe v1 / TF-Serving): rows as arrays, or as named features.
    r = requests.post(
        f"{url}/v1/models/iris:predict",
        json={"instances": [[5.1, 3.5, 1.4, 0.2],
                            {"sepal_length_cm": 6.7, "sepal_width_cm": 3.0,
                             "petal_length_cm": 5.2, "petal_width_cm": 2.3}]},
        headers=headers, verify=ca, timeout=10)
    r.raise_for_status()
    print("v1 iris:", [p["label"] for p in r.json()["predictions"]],
          "request id", r.headers["x-request-id"])
    # Rate limits are counted in rows; every inference answer says where you are.
    print("rate limit:", r.headers.get("ratelimit-policy"), "|", r.headers.get("ratelimit"))

    # v2 (Open Inference Protocol): the metadata says what to send.
    meta = requests.get(f"{url}/v2/models/digits", headers=headers, verify=ca, timeout=10).json()
    tensor = meta["inputs"][0]
    body = {"id": "example-1",
            "inputs": [{"name": tensor["name"], "shape": [1, 64], "datatype": "FP32",
                        "data": [0, 0, 5, 13, 9, 1, 0, 0, 0, 0, 13, 15, 10, 15, 5, 0,
                                 0, 3, 15, 2, 0, 11, 8, 0, 0, 4, 12, 0, 0, 8, 8, 0,
                                 0, 5, 8, 0, 0, 9, 8, 0, 0, 4, 11, 0, 1, 12, 7, 0,
                                 0, 2, 14, 5, 10, 12, 0, 0, 0, 0, 6, 13, 10, 0, 0, 0]}]}
    r = requests.post(f"{url}/v2/models/digits/infer", json=body, headers=headers, verify=ca, timeout=10)
    r.raise_for_status()
    print("v2 digits:", r.json()["outputs"][0]["data"])

    # A refusal: the flat error envelope, with the offending field named.
    r = requests.post(f"{url}/v1/models/iris:predict", json={"instances": [[1e9, 3.5, 1.4, 0.2]]},
                      headers=headers, verify=ca, timeout=10)
    err = r.json()
    print("refused:", r.status_code, err["code"], err["details"][0]["field"])


def with_tritonclient(url, ca, key):
    try:
        import numpy as np
        import tritonclient.http as httpclient
    except ImportError:
        print("tritonclient not installed: pip install \"tritonclient[http]\" (skipped)")
        return
    headers = {"X-API-Key": key}
    host = url.split("://", 1)[1]
    client = httpclient.InferenceServerClient(url=host, ssl=True, ssl_options={"ca_certs": ca})
    print("triton: live", client.is_server_live(headers=headers),
          "ready", client.is_model_ready("iris", headers=headers))
    rows = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)
    inp = httpclient.InferInput("input", list(rows.shape), "FP32")
    inp.set_data_from_numpy(rows)  # binary tensor data, the client's default
    result = client.infer("iris", [inp], headers=headers)
    labels = [x.decode() if isinstance(x, bytes) else str(x) for x in result.as_numpy("label")]
    print("triton iris:", labels)
    client.close()


def with_tritonclient_grpc(address, ca, key):
    """The Open Inference Protocol over gRPC (docs/grpc.md): the key goes in
    the call's metadata."""
    try:
        import numpy as np
        import tritonclient.grpc as grpcclient
    except ImportError:
        print("tritonclient[grpc] not installed: pip install \"tritonclient[grpc]\" (skipped)")
        return
    client = grpcclient.InferenceServerClient(address, ssl=True, root_certificates=ca)
    rows = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)
    inp = grpcclient.InferInput("input", list(rows.shape), "FP32")
    inp.set_data_from_numpy(rows)
    result = client.infer("iris", [inp], headers={"x-api-key": key})
    labels = [x.decode() if isinstance(x, bytes) else str(x) for x in result.as_numpy("label")]
    print("triton grpc iris:", labels)
    try:
        client.infer("iris", [inp], headers={"x-api-key": "wdn_wrong_key"})
    except grpcclient.InferenceServerException as e:
        print("grpc refused:", e.status(), e.message())
    client.close()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="https://127.0.0.1:8443")
    p.add_argument("--grpc", default="localhost:8444", help="the gRPC listener, host:port")
    p.add_argument("--ca", default="warden-data/tls/ca.pem")
    p.add_argument("--key", default=os.environ.get("WARDEN_KEY"))
    args = p.parse_args()
    if not args.key:
        sys.exit("give the key: --key wdn_... or WARDEN_KEY=wdn_...")
    with_requests(args.url, args.ca, args.key)
    with_tritonclient(args.url, args.ca, args.key)
    with_tritonclient_grpc(args.grpc, args.ca, args.key)


if __name__ == "__main__":
    main()
