"""An Open Inference Protocol server that misbehaves on purpose, for the
gateway tests (python3 stdlib only). Prints its port, then serves until
killed. Each model name is one behaviour; GET /hits/<model> says how many
inference calls that model received, and which Authorization and X-Api-Key
headers the last one carried (Warden must not forward the client's).

  ok         a correct iris answer (label 0 for every row)
  huge       a correct answer padded to 64 MiB, streamed without a length
  redirect   307 to /v2/models/ok/infer (which must never be followed)
  busy       503, every time (no retry may follow: the call reached it)
  slow       a correct iris answer after 0.5 s (callers that give up first)
"""

import json
import sys
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

hits = Counter()
seen = {}


def answer(rows):
    return {
        "model_name": "ok",
        "outputs": [
            {"name": "label", "shape": [rows], "datatype": "INT64", "data": [0] * rows},
            {"name": "probabilities", "shape": [rows, 3], "datatype": "FP32",
             "data": [1.0, 0.0, 0.0] * rows},
        ],
    }


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send(self, status, body, headers=()):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        parts = self.path.strip("/").split("/")
        if parts[0] == "hits":
            self.send(200, {"hits": hits[parts[1]], **seen.get(parts[1], {})})
        elif len(parts) == 4 and parts[3] == "ready":
            self.send(200, {"name": parts[2], "ready": True})
        else:
            self.send(404, {"error": "no such route"})

    def do_POST(self):
        length = int(self.headers.get("content-length", "0"))
        request = json.loads(self.rfile.read(length) or b"{}")
        parts = self.path.strip("/").split("/")
        model = parts[2] if len(parts) >= 4 else ""
        hits[model] += 1
        seen[model] = {"authorization": self.headers.get("authorization"),
                       "x_api_key": self.headers.get("x-api-key")}
        rows = request.get("inputs", [{}])[0].get("shape", [1])[0]
        if model == "ok":
            self.send(200, answer(rows))
        elif model == "slow":
            time.sleep(0.5)
            try:
                self.send(200, answer(rows))
            except (BrokenPipeError, ConnectionResetError):
                pass
        elif model == "huge":
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("connection", "close")
            self.end_headers()
            try:
                self.wfile.write(b'{"padding": "')
                chunk = b"x" * (1 << 20)
                for _ in range(64):
                    self.wfile.write(chunk)
                self.wfile.write(b'", ' + json.dumps(answer(rows))[1:].encode())
            except (BrokenPipeError, ConnectionResetError):
                pass
            self.close_connection = True
        elif model == "redirect":
            self.send(307, {}, [("location", "/v2/models/ok/infer")])
        elif model == "busy":
            self.send(503, {"error": "busy"})
        else:
            self.send(404, {"error": "unknown model"})


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
