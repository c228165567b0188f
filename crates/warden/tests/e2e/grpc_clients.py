"""Triton's gRPC client (tritonclient.grpc, unchanged) against Warden's gRPC
listener, beside its HTTP client on the REST listener: every demo model
answered over both, and the attacks of the gRPC issue from outside.

    grpc_clients.py GRPC_HOST:PORT REST_HOST:PORT CA_FILE API_KEY MODELS_DIR
    grpc_clients.py kserve GRPC_HOST:PORT CA_FILE API_KEY MODELS_DIR

The second form runs KServe's InferenceGRPCClient instead (in a process of
its own: the two clients pin different grpcio and protobuf versions).

Prints one JSON object: per model the gRPC and REST outputs (as lists),
the fixture labels where the fixtures have them, and per bad input the
status code and Warden's code; the Rust test asserts on it.
"""

import asyncio
import json
import sys
import time

import numpy as np

MODELS = ["iris", "breast-cancer", "digits", "diabetes", "recommender", "digits-cnn", "sentiment"]


def fixture_cases(model):
    f = json.load(open(f"{models_dir}/{model}/fixtures.json"))
    if "cases" in f:
        case = f["cases"][0]
        return [(t["name"], np.array(t["data"], dtype={"FP32": np.float32, "INT64": np.int64}[t["datatype"]]).reshape(t["shape"]))
                for t in case["inputs"]], None
    x = np.array(f["inputs"], dtype=np.float32)
    return [("input", x)], f["labels"]


def flat(v):
    return [x.decode() if isinstance(x, bytes) else x for x in np.array(v, dtype=object).ravel().tolist()]


async def kserve_client(host, ca, key):
    from kserve import InferenceGRPCClient, InferInput, InferRequest

    client = InferenceGRPCClient(host, use_ssl=True, root_certificates=ca)
    md = [("x-api-key", key)]
    out = {}
    for model in MODELS:
        tensors, _ = fixture_cases(model)
        inputs = []
        for name, x in tensors:
            i = InferInput(name, list(x.shape), "FP32" if x.dtype == np.float32 else "INT64")
            i.set_data_from_numpy(x)
            inputs.append(i)
        r = await client.infer(InferRequest(model_name=model, infer_inputs=inputs), headers=md)
        out[model] = {o.name: flat(o.as_numpy()) for o in r.outputs}
    await client.close()
    return out


if sys.argv[1] == "live":
    import tritonclient.grpc as tg

    print(tg.InferenceServerClient(sys.argv[2], ssl=True, root_certificates=sys.argv[3]).is_server_live())
    sys.exit(0)

if sys.argv[1] == "kserve":
    _, _, host, ca, key, models_dir = sys.argv[:6]
    print(json.dumps(asyncio.run(kserve_client(host, ca, key))))
    sys.exit(0)

import grpc  # noqa: E402
import tritonclient.grpc as tg  # noqa: E402
import tritonclient.http as th  # noqa: E402
from tritonclient.grpc import service_pb2, service_pb2_grpc  # noqa: E402

grpc_host, rest_host, ca, key, models_dir = sys.argv[1:6]
# A key allowed iris only, and a revoked key.
app_key, revoked_key = sys.argv[6:8]
# tritonclient mutates the headers dict it is given: a fresh one each call.
hdr = lambda: {"x-api-key": key}
gc = tg.InferenceServerClient(grpc_host, ssl=True, root_certificates=ca)
hc = th.InferenceServerClient(rest_host, ssl=True, ssl_options={"ca_certs": ca})
out = {"live": gc.is_server_live(), "ready": gc.is_server_ready(), "models": {}, "bad": {}}


def answer(client, mod, model, tensors):
    inputs = []
    for name, x in tensors:
        i = mod.InferInput(name, list(x.shape), "FP32" if x.dtype == np.float32 else "INT64")
        i.set_data_from_numpy(x)
        inputs.append(i)
    r = client.infer(model, inputs, headers=hdr())
    names = [o.name if hasattr(o, "name") else o["name"] for o in (r.get_response().outputs if mod is tg else r.get_response()["outputs"])]
    return {n: r.as_numpy(n).tolist() for n in names}


for model in MODELS:
    tensors, labels = fixture_cases(model)
    g = answer(gc, tg, model, tensors)
    h = answer(hc, th, model, tensors)
    meta = gc.get_model_metadata(model, headers=hdr(), as_json=True)
    out["models"][model] = {
        "ready": gc.is_model_ready(model, headers=hdr()),
        "inputs": [i["name"] for i in meta["inputs"]],
        "grpc": {k: flat(v) for k, v in g.items()},
        "rest": {k: flat(v) for k, v in h.items()},
        "labels": labels,
    }

# Bad input, each followed by a call that must be served.
channel = grpc.secure_channel(grpc_host, grpc.ssl_channel_credentials(open(ca, "rb").read()))
stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
md = [("x-api-key", key)]


def iris_request(**kw):
    r = service_pb2.ModelInferRequest(model_name="iris")
    t = r.inputs.add(name="input", datatype="FP32", shape=[1, 4])
    if kw.get("typed"):
        t.contents.fp32_contents.extend(kw["typed"])
    if kw.get("raw") is not None:
        r.raw_input_contents.append(kw["raw"])
    return r


def call(name, fn):
    try:
        fn()
        out["bad"][name] = {"status": "OK"}
    except grpc.RpcError as e:
        trailing = dict(e.trailing_metadata() or ())
        out["bad"][name] = {"status": e.code().name, "warden_code": trailing.get("warden-code"),
                            "request_id": trailing.get("x-request-id"), "details": e.details()}
    ok = served_after_retry_delay()
    assert ok.outputs[0].name == "label", ok


def served_after_retry_delay():
    """The next good call, honouring the retry delay if the key's rate limit
    was spent (after the 10,000 concurrent calls, how many were served
    depends on the machine's speed)."""
    good = iris_request(raw=np.array([[5.1, 3.5, 1.4, 0.2]], np.float32).tobytes())
    for _ in range(5):
        try:
            return stub.ModelInfer(good, metadata=md)
        except grpc.RpcError as e:
            trailing = dict(e.trailing_metadata() or ())
            if e.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or trailing.get("warden-code") != "rate_limited":
                raise
            time.sleep(float(trailing.get("retry-after", "1")))
    return stub.ModelInfer(good, metadata=md)


good_raw = np.array([[5.1, 3.5, 1.4, 0.2]], np.float32).tobytes()
call("no_credential", lambda: stub.ModelInfer(iris_request(raw=good_raw)))
call("wrong_key", lambda: stub.ModelInfer(iris_request(raw=good_raw), metadata=[("x-api-key", "wdn_abc_def")]))
call("bearer_garbage", lambda: stub.ModelInfer(iris_request(raw=good_raw), metadata=[("authorization", "Bearer x.y.z")]))
call("unknown_model", lambda: stub.ModelInfer(service_pb2.ModelInferRequest(model_name="nosuch"), metadata=md))
call("hidden_model", lambda: stub.ModelInfer(service_pb2.ModelInferRequest(model_name="digits"),
                                             metadata=[("x-api-key", app_key)]))
call("hidden_model_metadata", lambda: stub.ModelMetadata(service_pb2.ModelMetadataRequest(name="digits"),
                                                         metadata=[("x-api-key", app_key)]))
call("allowed_model", lambda: stub.ModelInfer(iris_request(raw=good_raw), metadata=[("x-api-key", app_key)]))
call("revoked_key", lambda: stub.ModelInfer(iris_request(raw=good_raw), metadata=[("x-api-key", revoked_key)]))
call("raw_size_mismatch", lambda: stub.ModelInfer(iris_request(raw=good_raw[:12]), metadata=md))
call("raw_and_typed", lambda: stub.ModelInfer(iris_request(raw=good_raw, typed=[5.1, 3.5, 1.4, 0.2]), metadata=md))
call("typed", lambda: stub.ModelInfer(iris_request(typed=[5.1, 3.5, 1.4, 0.2]), metadata=md))
call("nan", lambda: stub.ModelInfer(iris_request(typed=[float("nan"), 3.5, 1.4, 0.2]), metadata=md))


def unknown_input():
    r = iris_request(raw=good_raw)
    r.inputs.add(name="extra", datatype="FP32", shape=[1])
    r.raw_input_contents.append(np.zeros(1, np.float32).tobytes())
    return stub.ModelInfer(r, metadata=md)


call("unknown_input", unknown_input)
# Over the message cap (4 MiB for the demo models).
call("over_cap", lambda: stub.ModelInfer(iris_request(raw=b"\0" * (6 << 20)), metadata=md))
# Bytes that are not a ModelInferRequest.
garbage = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                              request_serializer=lambda b: b, response_deserializer=lambda b: b)
call("malformed_protobuf", lambda: garbage(b"\xff\xff\xff\xff\x0f\x08", metadata=md))
call("unknown_method", lambda: channel.unary_unary("/inference.GRPCInferenceService/Nope",
                                                   request_serializer=lambda b: b, response_deserializer=lambda b: b)(b"", metadata=md))
call("unknown_service", lambda: channel.unary_unary("/nope.Service/Call",
                                                    request_serializer=lambda b: b, response_deserializer=lambda b: b)(b"", metadata=md))


def reflect(metadata):
    # ServerReflectionRequest{list_services: ""} (field 7), encoded by hand.
    stream = channel.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                                   request_serializer=lambda b: b, response_deserializer=lambda b: b)
    answer = next(iter(stream(iter([b"\x3a\x00"]), metadata=metadata)))
    assert b"inference.GRPCInferenceService" in answer, answer


call("reflection_no_credential", lambda: reflect(None))
call("reflection", lambda: reflect(md))
call("deadline_1us", lambda: stub.ModelInfer(iris_request(raw=good_raw), metadata=md, timeout=1e-6))
# 10,000 concurrent calls on one connection: each answered or refused, none hangs.
futures = [stub.ModelInfer.future(iris_request(raw=good_raw), metadata=md, timeout=60) for _ in range(10_000)]
results = []
for f in futures:
    try:
        f.result()
        results.append("OK")
    except grpc.RpcError as e:
        results.append(e.code().name)
out["concurrent"] = {c: results.count(c) for c in set(results)}
call("after_all", lambda: None)
print(json.dumps(out))
