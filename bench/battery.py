#!/usr/bin/env python3
"""The abuse battery: each attack against a running Warden, bounded in count
and time, from 127.0.0.1, while a legitimate client on 127.0.0.2 measures its
latency; then a table of what the server did, what the legitimate client saw,
and the server's memory.

    bench/battery.sh [--quick] [OPTIONS]          build, then run this script
    python3 bench/battery.py [--quick] [OPTIONS]  run against target/release/warden

By default the battery starts its own Warden (--binary, default
target/release/warden) on 127.0.0.1:0 with a fresh data dir in a temporary
folder, TLS on (the self-signed certificate Warden generates), stderr logs to
a file, and two API keys made with `warden keys create` before the start: the
legitimate client's (with rate limits set out of the way) and the attacker's
(default limits). It attaches to a running server instead with --url
https://127.0.0.1:PORT --key LEGIT_KEY [--attacker-key KEY] [--pid PID for
RSS] [--data-dir DIR for disk growth] [--log-file FILE for log growth]
[--cacert PEM].

Attacks, in this order (each a function below; --only/--skip pick some):

  idle_tls      N TLS connections (ALPN http/1.1), handshake done, then silent
  idle_h2       N TLS connections (ALPN h2) that send only the HTTP/2 preface
                and an empty SETTINGS frame, then nothing (no SETTINGS ACK, no
                PING answers)
  slow_body     N HTTP/1.1 requests, one connection each, with the attacker's
                valid key: POST /v2/models/iris/infer, Content-Length 100000,
                one byte every 2 s
  slow_read     N connections GET /docs/swagger-ui-bundle.js (~1.7 MB, no
                credential) with a small SO_RCVBUF; half read one raw byte a
                second, half never read
  unauth_flood  N requests without a credential (POST /v1/models/iris:predict)
                with keep-alive, by oha or wrk when on PATH (the battery
                installs nothing), else a slower Python client with a smaller
                count; data-dir and log growth
  auth_fail_ban a burst of wrong keys from 127.0.0.1 (bans that address for a
                minute or more: it runs after the others)
  recovery      RSS after the battery, waiting up to --settle seconds
  h2_shutdown   with idle HTTP/2 connections open, SIGTERM; time to exit (only
                when the battery started the server; always last)

Full counts: 10,500 / 10,000 / 5,000 / 2,000 / 500,000 / 200 / 200, holding
each attack 40 s. --quick divides counts by ~20 and holds 12 s (CI).

Targets (the issue's): during idle_tls, idle_h2, slow_body and slow_read the
legitimate client gets every answer (200) with p99 <= 100 ms; the flood adds
<= 5 MB to the data dir (quick: <= max(1 MB, 5 MB x count/500,000)); RSS <=
2x idle after --settle s; SIGTERM with idle HTTP/2 clients exits in <= 2 s.
auth_fail_ban: the legitimate client is unaffected.

Output: the table on stdout, the same as JSON in --json (default
bench/results/battery.json). Exit 1 if any target fails (0 with
--report-only), 2 if the battery could not run.

Standard library only. Linux only (/proc, TCP_INFO, 127.0.0.2 on lo).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import http.client
import json
import os
import random
import resource
import shutil
import signal
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ATTACKER_ADDR = "127.0.0.1"
LEGIT_ADDR = "127.0.0.2"
MB = 1024 * 1024

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
H2_EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # length 0, type SETTINGS, no flags, stream 0
IRIS_BODY = json.dumps({"instances": [[5.1, 3.5, 1.4, 0.2]]}).encode()
DOCS_ASSET = "/docs/swagger-ui-bundle.js"

TCP_STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2", 6: "TIME_WAIT",
              7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING"}

# Full run; --quick divides counts by ~20 and shortens every duration.
FULL = {
    "idle_tls": 10_500, "idle_h2": 10_000, "slow_body": 5_000, "slow_read": 2_000,
    "unauth_flood": 500_000, "unauth_flood_python": 50_000, "auth_fail_ban": 200, "h2_shutdown": 200,
    "hold": 40.0, "settle": 60.0, "ramp": 120.0, "flood_seconds": 180.0, "shutdown_wait": 40.0,
    "warmup": 3.0, "cooldown": 3.0,
}
QUICK = {
    "idle_tls": 525, "idle_h2": 500, "slow_body": 250, "slow_read": 100,
    "unauth_flood": 25_000, "unauth_flood_python": 5_000, "auth_fail_ban": 30, "h2_shutdown": 10,
    "hold": 12.0, "settle": 10.0, "ramp": 20.0, "flood_seconds": 30.0, "shutdown_wait": 10.0,
    "warmup": 2.0, "cooldown": 1.5,
}
ATTACKS = ["idle_tls", "idle_h2", "slow_body", "slow_read", "unauth_flood", "auth_fail_ban", "recovery", "h2_shutdown"]

P99_TARGET_MS = 100.0
DISK_TARGET_BYTES = 5 * MB
SHUTDOWN_TARGET_S = 2.0
RSS_RECOVERY_FACTOR = 2.0


def log(msg: str) -> None:
    print(f"[battery {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# The legitimate client: a separate process (its own interpreter, so that the
# attacker's Python work does not hold it up), bound to 127.0.0.2, one v1
# predict on iris every --interval over HTTPS keep-alive, one JSON line per
# request on stdout: [t_monotonic, latency_ms, ok, error-or-null].
# ---------------------------------------------------------------------------

def legit_worker(cfg: dict) -> None:
    if cfg.get("cpus"):
        try:
            os.sched_setaffinity(0, cfg["cpus"])
        except OSError:
            pass
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    if cfg["cacert"]:
        ctx = ssl.create_default_context(cafile=cfg["cacert"])
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    host, port, timeout = cfg["host"], cfg["port"], cfg["timeout"]
    headers = {"X-API-Key": cfg["key"], "Content-Type": "application/json"}
    interval, reconnect_every = cfg["interval"], cfg["reconnect_every"]
    conn: http.client.HTTPSConnection | None = None
    opened_at = 0.0
    next_t = time.monotonic()
    out = sys.stdout
    while True:
        now = time.monotonic()
        if now < next_t:
            time.sleep(next_t - now)
        next_t = max(next_t + interval, time.monotonic())
        t0 = time.monotonic()
        if conn is not None and reconnect_every > 0 and t0 - opened_at >= reconnect_every:
            conn.close()
            conn = None
        err = None
        try:
            if conn is None:
                conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=ctx,
                                                   source_address=(LEGIT_ADDR, 0))
                conn.connect()
                opened_at = t0
            conn.request("POST", "/v1/models/iris:predict", IRIS_BODY, headers)
            r = conn.getresponse()
            r.read()
            if r.status != 200:
                err = f"http_{r.status}"
            if r.will_close:
                conn.close()
                conn = None
        except Exception as e:  # noqa: BLE001 - every failure is a sample
            err = type(e).__name__
            if isinstance(e, OSError) and e.errno:
                err += f"({errno.errorcode.get(e.errno, e.errno)})"
            if conn is not None:
                conn.close()
            conn = None
        ms = (time.monotonic() - t0) * 1000
        if err is None and ms > timeout * 1000:
            err = "slower_than_timeout"
        try:
            out.write(json.dumps([round(t0, 4), round(ms, 3), err is None, err]) + "\n")
            out.flush()
        except BrokenPipeError:
            os._exit(0)


class Legit:
    """Starts the legitimate-client process and collects its samples."""

    def __init__(self, host: str, port: int, key: str, cacert: str | None, interval: float,
                 reconnect_every: float, cpus: list[int] | None):
        cfg = {"host": host, "port": port, "key": key, "cacert": cacert, "interval": interval,
               "reconnect_every": reconnect_every, "timeout": 2.0, "cpus": cpus}
        self.samples: list[tuple] = []
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--legit-worker", json.dumps(cfg)],
                                     stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, bufsize=1)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.samples.append(tuple(json.loads(line)))
            except ValueError:
                pass

    def wait_ready(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if sum(1 for s in self.samples[-30:] if s[2]) >= 10:
                return True
            if self.proc.poll() is not None:
                return False
            time.sleep(0.1)
        return False

    def stats(self, t0: float, t1: float) -> dict:
        sel = [s for s in list(self.samples) if t0 <= s[0] < t1]
        ok = sorted(s[1] for s in sel if s[2])
        errors = Counter(s[3] for s in sel if not s[2])
        return {"requests": len(sel), "failures": len(sel) - len(ok), "errors": dict(errors.most_common(5)),
                "p50_ms": pct(ok, 0.50), "p99_ms": pct(ok, 0.99), "max_ms": ok[-1] if ok else None}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def pct(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return None
    k = max(0, min(len(sorted_values) - 1, int(-(-q * len(sorted_values) // 1)) - 1))
    return round(sorted_values[k], 2)


# ---------------------------------------------------------------------------
# The server's memory and file descriptors, sampled every 0.5 s.
# ---------------------------------------------------------------------------

class Monitor:
    def __init__(self, pid: int | None, period: float = 0.5):
        self.pid = pid
        self.period = period
        self.samples: list[tuple[float, int | None, int | None]] = []  # (t, rss_kib, fds)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        if pid:
            self.thread.start()

    def read(self) -> tuple[int | None, int | None]:
        rss = fds = None
        if not self.pid:
            return rss, fds
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss = int(line.split()[1])
                        break
            fds = len(os.listdir(f"/proc/{self.pid}/fd"))
        except (OSError, ValueError):
            pass
        return rss, fds

    def _run(self) -> None:
        while not self._stop.is_set():
            rss, fds = self.read()
            if rss is not None:
                self.samples.append((time.monotonic(), rss, fds))
            self._stop.wait(self.period)

    def rss_mb(self) -> float | None:
        rss, _ = self.read()
        return round(rss / 1024, 1) if rss is not None else None

    def peak(self, t0: float, t1: float) -> tuple[float | None, int | None]:
        sel = [s for s in list(self.samples) if t0 <= s[0] <= t1]
        if not sel:
            return None, None
        rss = max(s[1] for s in sel)
        fds = max((s[2] for s in sel if s[2] is not None), default=None)
        return round(rss / 1024, 1), fds

    def stop(self) -> None:
        self._stop.set()


# ---------------------------------------------------------------------------
# Raw TLS connections: a non-blocking socket and an SSLObject over memory
# BIOs, so that after the handshake the battery decides exactly what is read
# (nothing, one raw byte a second, or everything) and what is sent.
# ---------------------------------------------------------------------------

class OpenError(Exception):
    def __init__(self, kind: str):
        super().__init__(kind)
        self.kind = kind


class Conn:
    __slots__ = ("sock", "obj", "inc", "out", "t_open", "t_closed", "how", "alpn", "port", "rx", "plain",
                 "status", "t_status", "next_send", "sent", "t_released")

    def __init__(self, sock, obj, inc, out, alpn):
        self.sock, self.obj, self.inc, self.out, self.alpn = sock, obj, inc, out, alpn
        self.t_open = time.monotonic()
        self.t_closed: float | None = None
        self.how: str | None = None
        self.port = sock.getsockname()[1]
        self.rx = 0
        self.plain = b""
        self.status: int | None = None
        self.t_status: float | None = None
        self.next_send = 0.0
        self.sent = 0
        self.t_released: float | None = None  # when the server side was first seen closed (/proc/net/tcp)

    def mark_closed(self, how: str) -> None:
        if self.t_closed is None:
            self.t_closed = time.monotonic()
            self.how = how

    def tcp_state(self) -> str:
        try:
            return TCP_STATES.get(self.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0], "?")
        except OSError:
            return "CLOSE"

    def drain(self, decrypt: bool = False) -> None:
        """Reads whatever has arrived (without blocking) and notes EOF or a reset."""
        if self.t_closed is not None:
            return
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    self.mark_closed("eof")
                    break
                self.rx += len(data)
                if decrypt and self.obj is not None:
                    self._decrypt(data)
        except BlockingIOError:
            pass
        except ConnectionResetError:
            self.mark_closed("reset")
        except OSError as e:
            self.mark_closed(errno.errorcode.get(e.errno or 0, "oserror"))

    def _decrypt(self, data: bytes) -> None:
        self.inc.write(data)
        try:
            while True:
                chunk = self.obj.read(65536)
                if not chunk:
                    break
                if self.status is None:
                    self.plain += chunk
                    if b"\r\n" in self.plain:
                        line = self.plain.split(b"\r\n", 1)[0].split()
                        self.status = int(line[1]) if len(line) > 1 and line[1].isdigit() else -1
                        self.t_status = time.monotonic()
                        self.plain = b""
        except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
            pass
        except ssl.SSLError:
            self.mark_closed("tls_error")

    def send_plain(self, data: bytes) -> bool:
        """Encrypts and sends without blocking (the amounts here are tiny)."""
        if self.t_closed is not None:
            return False
        try:
            self.obj.write(data)
            self.sock.sendall(self.out.read())
            self.sent += len(data)
            return True
        except BlockingIOError:
            return False
        except (BrokenPipeError, ConnectionResetError):
            self.mark_closed("reset_on_send")
        except OSError as e:
            self.mark_closed(errno.errorcode.get(e.errno or 0, "oserror"))
        return False

    def abort(self) -> None:
        """Closes with a reset: no TIME_WAIT left behind on either side."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.sock.close()


def attacker_context(alpn: list[str]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(alpn)
    return ctx


def classify(e: BaseException, stage: str) -> str:
    if isinstance(e, TimeoutError):
        return f"{stage}_timeout"
    if isinstance(e, ConnectionRefusedError):
        return "refused"
    if isinstance(e, (ConnectionResetError, BrokenPipeError)):
        return f"reset_in_{stage}"
    if isinstance(e, EOFError):
        return f"closed_in_{stage}"
    if isinstance(e, ssl.SSLError):
        return "tls_error"
    if isinstance(e, OSError):
        if e.errno == errno.EMFILE or e.errno == errno.ENFILE:
            return "fd_limit"
        if e.errno == errno.EADDRNOTAVAIL:
            return "no_local_port"
        return errno.errorcode.get(e.errno or 0, type(e).__name__)
    return type(e).__name__


async def tls_open(addr: tuple[str, int], ctx: ssl.SSLContext, timeout: float, *, payload: bytes = b"",
                   rcvbuf: int | None = None, keep_tls: bool = False) -> Conn:
    loop = asyncio.get_running_loop()
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    except OSError as e:
        raise OpenError(classify(e, "socket")) from None
    stage = "connect"
    try:
        sock.setblocking(False)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        async with asyncio.timeout(timeout):
            await loop.sock_connect(sock, addr)
            stage = "handshake"
            inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
            obj = ctx.wrap_bio(inc, out, server_hostname="localhost")
            while True:
                try:
                    obj.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    pass
                pending = out.read()
                if pending:
                    await loop.sock_sendall(sock, pending)
                data = await loop.sock_recv(sock, 65536)
                if not data:
                    raise EOFError
                inc.write(data)
            if payload:
                obj.write(payload)
            pending = out.read()
            if pending:
                await loop.sock_sendall(sock, pending)
    except asyncio.CancelledError:
        sock.close()
        raise
    except BaseException as e:  # noqa: BLE001 - classified, counted
        sock.close()
        raise OpenError(classify(e, stage)) from None
    c = Conn(sock, obj, inc, out, obj.selected_alpn_protocol())
    if not keep_tls:
        c.obj = c.inc = c.out = None
    return c


async def open_many(n: int, opener, conns: list[Conn], errors: Counter, ramp_deadline: float,
                    batch: int = 500) -> int:
    """Opens up to n connections in batches; appends to conns, counts failures.
    Returns how many were attempted (the ramp deadline may stop it early)."""
    attempted = 0
    while attempted < n and time.monotonic() < ramp_deadline:
        k = min(batch, n - attempted)
        results = await asyncio.gather(*(opener(attempted + i) for i in range(k)), return_exceptions=True)
        attempted += k
        for r in results:
            if isinstance(r, OpenError):
                errors[r.kind] += 1
            elif isinstance(r, BaseException):
                errors[type(r).__name__] += 1
            else:
                conns.append(r)
    return attempted


# ---------------------------------------------------------------------------
# The server: started by the battery, or a running one.
# ---------------------------------------------------------------------------

class Target:
    def __init__(self):
        self.host = ATTACKER_ADDR
        self.port = 0
        self.pid: int | None = None
        self.proc: subprocess.Popen | None = None
        self.data_dir: Path | None = None
        self.log_file: Path | None = None
        self.cacert: str | None = None
        self.key = ""
        self.attacker_key = ""
        self.tmp: Path | None = None
        self.started = False
        self.binary: str | None = None

    @property
    def addr(self) -> tuple[str, int]:
        return (self.host, self.port)

    def alive(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        if self.pid:
            return Path(f"/proc/{self.pid}").exists()
        return True

    def exit_note(self) -> str:
        if self.proc is not None and self.proc.poll() is not None:
            return f"server exited with status {self.proc.returncode}"
        return "server gone"


def write_config(path: Path, data_dir: Path, models: Path, ort: str | None, legit_id: str | None,
                 server_settings: list[str] | None = None) -> None:
    lines = [
        f'data_dir = "{data_dir}"',
        "[server]",
        'listen = "127.0.0.1:0"',
        # --server KEY=VALUE: e.g. max_connections_per_address=20000 to see
        # what many attacking addresses would do (the memory measurement of
        # docs/benchmarks.md, "Exhaustion battery").
        *(server_settings or []),
        "[admin]",
        'listen = "127.0.0.1:0"',
        "[models]",
        f'dir = "{models}"',
    ]
    if ort:
        lines += ["[runtime]", f'onnxruntime = "{ort}"']
    if legit_id:
        # The legitimate client's limits are out of the way; the attacker's
        # key keeps the defaults.
        lines += [f"[limits.keys.{legit_id}]",
                  'default = { rate = "1000000000/minute", burst = 1000000 }',
                  'predict = { rate = "1000000000/minute", burst = 1000000 }']
    path.write_text("\n".join(lines) + "\n")


def create_key(binary: str, config: Path, name: str) -> str:
    r = subprocess.run([binary, "keys", "create", "--name", name, "--role", "predict", "--config", str(config)],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    key = r.stdout.strip()
    if r.returncode != 0 or not key.startswith("wdn_"):
        raise RuntimeError(f"`warden keys create` failed ({r.returncode}): {r.stderr.strip()[-500:]}")
    return key


def key_id(key: str) -> str:
    parts = key.split("_")
    return parts[1] if len(parts) >= 3 else ""


def start_server(args, target: Target, server_cpus: list[int] | None) -> None:
    binary = args.binary
    if not os.access(binary, os.X_OK):
        raise RuntimeError(f"no Warden binary at {binary} (build it: cargo build --release -p warden, or give --binary)")
    tmp = Path(tempfile.mkdtemp(prefix="warden-battery-"))
    target.tmp = tmp
    data_dir = tmp / "data"
    config = tmp / "warden.toml"
    ort = args.onnxruntime or os.environ.get("ORT_DYLIB_PATH")
    write_config(config, data_dir, Path(args.models).resolve(), ort, None, args.server)
    target.key = create_key(binary, config, "battery-legit")
    target.attacker_key = create_key(binary, config, "battery-attacker")
    write_config(config, data_dir, Path(args.models).resolve(), ort, key_id(target.key), args.server)
    target.log_file = tmp / "warden.stderr"
    out = open(tmp / "warden.stdout", "wb")
    err = open(target.log_file, "wb")
    # The server inherits this process's CPU set at fork: pin it, start, unpin.
    saved = os.sched_getaffinity(0)
    if server_cpus:
        os.sched_setaffinity(0, server_cpus)
    try:
        # An ephemeral gRPC port, so that targets never contend for 8444.
        env = dict(os.environ, WARDEN_GRPC_LISTEN="127.0.0.1:0")
        target.proc = subprocess.Popen([binary, "serve", "--config", str(config)], stdout=out, stderr=err,
                                       stdin=subprocess.DEVNULL, cwd=ROOT, env=env)
    finally:
        os.sched_setaffinity(0, saved)
        out.close()
        err.close()
    target.pid = target.proc.pid
    target.started = True
    target.binary = binary
    target.data_dir = data_dir
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if target.proc.poll() is not None:
            raise RuntimeError(f"warden exited with {target.proc.returncode} at start:\n{tail(target.log_file)}")
        for line in target.log_file.read_text(errors="replace").splitlines():
            try:
                v = json.loads(line)
            except ValueError:
                continue
            if v.get("message") == "listening":
                host, port = v["addr"].rsplit(":", 1)
                target.port = int(port)
                # The development CA that issued the served certificate (docs/tls.md).
                target.cacert = str(data_dir / "tls" / "ca.pem")
                if v.get("tls") is not True:
                    raise RuntimeError("the server started without TLS")
                return
        time.sleep(0.1)
    raise RuntimeError(f"warden did not log `listening` within 60 s:\n{tail(target.log_file)}")


def tail(path: Path | None, n: int = 20) -> str:
    if not path or not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:])


def attach(args, target: Target) -> None:
    u = urllib.parse.urlsplit(args.url)
    if u.scheme != "https" or not u.port:
        raise RuntimeError("--url must be https://127.0.0.1:PORT (the attacks are TLS)")
    host = "127.0.0.1" if u.hostname == "localhost" else u.hostname
    if host != "127.0.0.1":
        raise RuntimeError("--url must point at 127.0.0.1 (the battery keeps its traffic on loopback)")
    if not args.key:
        raise RuntimeError("--url needs --key (a predict key for the legitimate client)")
    target.port = u.port
    target.key = args.key
    target.attacker_key = args.attacker_key or args.key
    if not args.attacker_key:
        log("no --attacker-key: slow_body uses the legitimate client's key (their limits are then shared)")
    target.pid = args.pid
    if args.pid:
        try:
            for line in Path(f"/proc/{args.pid}/limits").read_text().splitlines():
                if line.startswith("Max open files"):
                    soft = line.split()[3]
                    if soft.isdigit() and int(soft) < FULL["idle_tls"] + 100:
                        log(f"the server's open-file limit is {soft}: it cannot hold the full battery's connections")
        except OSError:
            log(f"no process {args.pid} (--pid)")
    target.data_dir = Path(args.data_dir) if args.data_dir else None
    target.log_file = Path(args.log_file) if args.log_file else None
    cacert = args.cacert or (str(Path(args.data_dir) / "tls" / "ca.pem") if args.data_dir else None)
    if cacert and Path(cacert).exists():
        target.cacert = cacert
    else:
        log("no CA certificate (--cacert or --data-dir): the legitimate client does not verify the server")


def dir_bytes(path: Path | None) -> int | None:
    if path is None or not path.exists():
        return None
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total


def file_bytes(path: Path | None) -> int | None:
    try:
        return path.stat().st_size if path else None
    except OSError:
        return None


def server_side(port: int, client_ports: set[int]) -> dict[int, str] | None:
    """The server's side of the battery's connections, from /proc/net/tcp
    (port -> state): held (established and accepted: owned by the server
    process), backlog (established, not yet accepted), closing (any other
    state, e.g. FIN_WAIT1 with unsent data after the server closed it), gone
    (no socket left). None if the listener is not in this network namespace."""
    found: dict[int, str] = {}
    listener = False
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            f = open(path)
        except OSError:
            continue
        with f:
            next(f, None)
            for line in f:
                parts = line.split()
                if len(parts) < 10:
                    continue
                local, remote, st, inode = parts[1], parts[2], parts[3], parts[9]
                if int(local.rsplit(":", 1)[1], 16) != port:
                    continue
                if st == "0A":
                    listener = True
                    continue
                rip, rport = remote.rsplit(":", 1)
                rport = int(rport, 16)
                if rport not in client_ports or not rip.endswith("0100007F"):
                    continue
                if st == "01":
                    found[rport] = "held" if inode != "0" else "backlog"
                else:
                    found[rport] = "closing"
    if not listener:
        return None
    for p in client_ports:
        found.setdefault(p, "gone")
    return found


def side_counts(states: dict[int, str] | None) -> dict | None:
    if states is None:
        return None
    c = Counter(states.values())
    return {k: c[k] for k in ("held", "backlog", "closing", "gone")}


# ---------------------------------------------------------------------------
# The attacks. Each returns a dict: "behaviour" (the table's text), "detail"
# (for the JSON), and optionally "verdict_extra" (a failed check of its own).
# ---------------------------------------------------------------------------

class Battery:
    def __init__(self, args, plan: dict, target: Target, legit: Legit | None, monitor: Monitor):
        self.args, self.plan, self.target, self.legit, self.monitor = args, plan, target, legit, monitor
        self.results: list[dict] = []
        self.idle_rss_mb: float | None = None
        self.fd_budget = plan["fd_budget"]

    def cap(self, name: str, n: int) -> int:
        if n > self.fd_budget:
            log(f"{name}: {n} connections need more file descriptors than this process may open "
                f"(RLIMIT_NOFILE leaves {self.fd_budget}); using {self.fd_budget}")
            return self.fd_budget
        return n

    def sample_server(self, conns: list[Conn]) -> dict[int, str] | None:
        states = server_side(self.target.port, {c.port for c in conns})
        if states is not None:
            now = time.monotonic()
            for c in conns:
                if c.t_released is None and states.get(c.port) in ("closing", "gone"):
                    c.t_released = now
        return states

    async def ramp_and_hold(self, n: int, alpn: str, payload: bytes, tick_fn, *, keep_tls: bool = False,
                            rcvbuf: int | None = None, tick: float = 0.5) -> dict:
        """Opens n TLS connections in batches (bounded by the ramp time), then
        holds them for the hold time; tick_fn(conns) runs every tick
        throughout, and the server's side is sampled every second."""
        ctx = attacker_context([alpn])
        conns: list[Conn] = []
        errors: Counter = Counter()
        t0 = time.monotonic()
        timeout = self.args.connect_timeout
        last_sample = [0.0]

        def on_tick():
            tick_fn(conns)
            if time.monotonic() - last_sample[0] >= 1.0:
                last_sample[0] = time.monotonic()
                self.sample_server(conns)

        async def opener(i: int) -> Conn:
            return await tls_open(self.target.addr, ctx, timeout, payload=payload, rcvbuf=rcvbuf, keep_tls=keep_tls)

        stop = asyncio.Event()

        async def poll_during_ramp():
            while not stop.is_set():
                on_tick()
                await asyncio.sleep(tick)

        poller = asyncio.create_task(poll_during_ramp())
        try:
            attempted = await open_many(n, opener, conns, errors, t0 + self.plan["ramp"])
        finally:
            stop.set()
            await poller
        t_ramp = time.monotonic() - t0
        log(f"  opened {len(conns)}/{n} in {t_ramp:.1f} s" + (f"; failed: {dict(errors)}" if errors else ""))
        died = None
        end = time.monotonic() + self.plan["hold"]
        while time.monotonic() < end:
            on_tick()
            if not self.target.alive():
                died = self.target.exit_note()
                break
            await asyncio.sleep(min(tick, max(0.0, end - time.monotonic())))
        tick_fn(conns)
        states = self.sample_server(conns)
        return {"conns": conns, "errors": errors, "attempted": attempted, "ramp_s": t_ramp, "died": died,
                "server_side": side_counts(states)}

    @staticmethod
    def closed_summary(conns: list[Conn]) -> dict:
        """Connections the server closed, seen either way: by the client (EOF,
        reset, TCP state) or on the server's side (its socket gone or closing)."""
        def first(c: Conn) -> float | None:
            ts = [t for t in (c.t_closed, c.t_released) if t is not None]
            return min(ts) if ts else None
        ages = sorted(first(c) - c.t_open for c in conns if first(c) is not None)
        return {"closed": len(ages),
                "seen_by_client": sum(1 for c in conns if c.t_closed is not None),
                "released_server_side": sum(1 for c in conns if c.t_released is not None),
                "how_client_saw_it": dict(Counter(c.how for c in conns if c.how)),
                "median_s": round(statistics.median(ages), 1) if ages else None,
                "max_s": round(ages[-1], 1) if ages else None}

    @staticmethod
    def close_all(conns: list[Conn]) -> None:
        for c in conns:
            c.abort()

    def opened_text(self, r: dict, n: int) -> str:
        text = f"{len(r['conns'])}/{n} opened"
        if r["attempted"] < n:
            text += f" ({n - r['attempted']} not tried: ramp over {self.plan['ramp']:.0f} s)"
        if r["errors"]:
            text += " (" + ", ".join(f"{v} {k}" for k, v in r["errors"].most_common(3)) + ")"
        return text

    def closed_text(self, r: dict, closed: dict) -> str:
        text = f"server closed {closed['closed']}"
        if closed["closed"]:
            text += f" (median {closed['median_s']:.0f} s, max {closed['max_s']:.0f} s after open)"
        text += f" within {self.plan['hold']:.0f} s hold"
        side = r["server_side"]
        if side is not None:
            text += f"; at end server held {side['held']}" + (f", {side['backlog']} in backlog" if side["backlog"] else "")
        if r["died"]:
            text += f"; {r['died']}"
        return text

    def conn_detail(self, r: dict, n: int, closed: dict) -> dict:
        return {"count": n, "attempted": r["attempted"], "opened": len(r["conns"]), "open_errors": dict(r["errors"]),
                "ramp_s": round(r["ramp_s"], 1), "hold_s": self.plan["hold"],
                "alpn": dict(Counter(c.alpn for c in r["conns"])), "closed_by_server": closed,
                "server_side_at_end": r["server_side"]}

    async def idle(self, name: str, n: int, alpn: str, payload: bytes) -> dict:
        n = self.cap(name, n)

        def tick(conns):
            for c in conns:
                c.drain()

        r = await self.ramp_and_hold(n, alpn, payload, tick)
        closed = self.closed_summary(r["conns"])
        self.close_all(r["conns"])
        return {"behaviour": f"{self.opened_text(r, n)}; {self.closed_text(r, closed)}", "died": r["died"],
                "detail": self.conn_detail(r, n, closed)}

    async def idle_tls(self) -> dict:
        """N TLS connections (ALPN http/1.1) that complete the handshake and then send nothing."""
        return await self.idle("idle_tls", self.plan["idle_tls"], "http/1.1", b"")

    async def idle_h2(self) -> dict:
        """N TLS connections (ALPN h2) that send the HTTP/2 preface and an empty SETTINGS, then nothing."""
        return await self.idle("idle_h2", self.plan["idle_h2"], "h2", H2_PREFACE + H2_EMPTY_SETTINGS)

    async def slow_body(self) -> dict:
        """N POSTs with a valid key, Content-Length 100000, one body byte every 2 s."""
        n = self.cap("slow_body", self.plan["slow_body"])
        head = (f"POST /v2/models/iris/infer HTTP/1.1\r\nHost: localhost\r\nX-API-Key: {self.target.attacker_key}\r\n"
                "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n").encode()
        interval = 2.0

        def tick(conns):
            now = time.monotonic()
            for c in conns:
                c.drain(decrypt=True)
                if c.t_closed is None and c.status is None:
                    if c.next_send == 0.0:
                        c.next_send = c.t_open + random.uniform(0, interval)
                    if now >= c.next_send:
                        c.send_plain(b" ")  # JSON allows leading whitespace
                        c.next_send += interval

        r = await self.ramp_and_hold(n, "http/1.1", head, tick, keep_tls=True, tick=0.2)
        conns = r["conns"]
        answered = [c for c in conns if c.status is not None]
        statuses = Counter(c.status for c in answered)
        t_answer = sorted(c.t_status - c.t_open for c in answered)
        closed = self.closed_summary(conns)
        bytes_sent = sum(c.sent for c in conns)
        self.close_all(conns)
        text = f"{self.opened_text(r, n)}; answered {len(answered)}"
        if statuses:
            text += (" (" + ", ".join(f"{v}x{k}" for k, v in statuses.most_common(3))
                     + f", median {statistics.median(t_answer):.0f} s)")
        text += f"; {self.closed_text(r, closed)}"
        detail = self.conn_detail(r, n, closed)
        detail.update({"answers": {str(k): v for k, v in statuses.items()},
                       "answer_median_s": round(statistics.median(t_answer), 1) if t_answer else None,
                       "body_bytes_sent": bytes_sent})
        return {"behaviour": text, "died": r["died"], "detail": detail}

    async def slow_read(self) -> dict:
        """N GETs of the docs bundle with a small receive buffer; half read one raw byte a second, half never."""
        n = self.cap("slow_read", self.plan["slow_read"])
        req = f"GET {DOCS_ASSET} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()
        last_read = [0.0]

        def tick(conns):
            now = time.monotonic()
            read_now = now - last_read[0] >= 1.0
            if read_now:
                last_read[0] = now
            for i, c in enumerate(conns):
                if c.t_closed is not None:
                    continue
                if i % 2 == 0 and read_now:
                    try:
                        b = c.sock.recv(1)
                        if not b:
                            c.mark_closed("eof")
                            continue
                        c.rx += 1
                    except BlockingIOError:
                        pass
                    except ConnectionResetError:
                        c.mark_closed("reset")
                        continue
                    except OSError:
                        c.mark_closed("error")
                        continue
                # A full receive window hides the server's FIN; a reset still shows.
                state = c.tcp_state()
                if state != "ESTABLISHED":
                    c.mark_closed(state.lower())

        r = await self.ramp_and_hold(n, "http/1.1", req, tick, rcvbuf=4096, tick=0.5)
        conns = r["conns"]
        closed = self.closed_summary(conns)
        self.close_all(conns)
        return {"behaviour": f"{self.opened_text(r, n)}; {self.closed_text(r, closed)}", "died": r["died"],
                "detail": self.conn_detail(r, n, closed)}

    async def unauth_flood(self) -> dict:
        """N credential-less POSTs as fast as possible with keep-alive; data-dir and log growth."""
        url = f"https://127.0.0.1:{self.target.port}/v1/models/iris:predict"
        disk0, log0 = dir_bytes(self.target.data_dir), file_bytes(self.target.log_file)
        tool = self.args.flood_tool
        if tool == "auto":
            tool = "oha" if shutil.which("oha") else "wrk" if shutil.which("wrk") else "python"
            if tool == "python":
                log("  neither oha nor wrk is on PATH: using the Python client with a smaller count "
                    f"({self.plan['unauth_flood_python']} instead of {self.plan['unauth_flood']}); "
                    "install one (apt-get install wrk, or cargo install oha) for the full count")
        n = self.plan["unauth_flood_python"] if tool == "python" else self.plan["unauth_flood"]
        t0 = time.monotonic()
        if tool == "oha":
            res = await asyncio.to_thread(run_oha, url, n, self.plan["flood_seconds"])
        elif tool == "wrk":
            res = await asyncio.to_thread(run_wrk, url, n, self.plan["flood_seconds"], self.plan["attacker_cpus"])
        else:
            res = await python_flood(self.target.addr, n, self.plan["flood_seconds"])
        elapsed = res.get("seconds") or (time.monotonic() - t0)
        await asyncio.sleep(2.0)  # the audit trail's batch window, the log's flush interval
        disk1, log1 = dir_bytes(self.target.data_dir), file_bytes(self.target.log_file)
        disk = disk1 - disk0 if disk0 is not None and disk1 is not None else None
        logs = log1 - log0 if log0 is not None and log1 is not None else None
        done = sum(res["statuses"].values())
        limit = max(1 * MB, DISK_TARGET_BYTES * n / 500_000)
        text = (f"{done} answers ({n} asked) by {tool} in {elapsed:.1f} s ("
                + ", ".join(f"{v}x{k}" for k, v in Counter(res["statuses"]).most_common(3))
                + (f", {res['errors']} errors" if res["errors"] else "") + ")")
        text += "; disk " + (f"{disk / MB:+.2f} MB" if disk is not None else "n/a")
        text += ", logs " + (f"{logs / MB:+.1f} MB" if logs is not None else "n/a")
        extra = None
        if disk is None:
            extra = "n/a"
        elif disk > limit:
            extra = f"disk +{disk / MB:.2f} MB > {limit / MB:.2f} MB"
        if res.get("note"):
            text += f"; {res['note']}"
        return {"behaviour": text, "judge_disk": extra, "died": None if self.target.alive() else self.target.exit_note(),
                "detail": {"tool": tool, "count": n, "answered": done, "statuses": {str(k): v for k, v in res["statuses"].items()},
                           "errors": res["errors"], "seconds": round(elapsed, 1),
                           "requests_per_s": round(done / elapsed) if elapsed else None,
                           "disk_bytes_before": disk0, "disk_bytes_added": disk, "disk_limit_bytes": int(limit),
                           "log_bytes_added": logs,
                           "disk_bytes_per_request": round(disk / done, 2) if disk is not None and done else None,
                           "tool_output": res.get("raw")}}

    async def auth_fail_ban(self) -> dict:
        """A burst of wrong keys from 127.0.0.1; the legitimate client must not notice."""
        n = self.plan["auth_fail_ban"]
        bogus = "wdn_battery0bogus_" + "x" * 43
        res = await python_flood(self.target.addr, n, 30.0, header=f"X-API-Key: {bogus}\r\n", conns=4, depth=1)
        await asyncio.sleep(2.0)
        st = Counter(res["statuses"])
        text = f"{n} wrong keys: " + ", ".join(f"{v}x{k}" for k, v in sorted(st.items()))
        if res["errors"]:
            text += f", {res['errors']} errors"
        if st.get(403):
            text += " (banned)"
        return {"behaviour": text, "died": None if self.target.alive() else self.target.exit_note(),
                "detail": {"count": n, "statuses": {str(k): v for k, v in st.items()}, "errors": res["errors"]}}

    async def recovery(self) -> dict:
        """RSS after the battery: waits up to --settle s for RSS <= 2x idle."""
        settle = self.plan["settle"]
        t0 = time.monotonic()
        rss = self.monitor.rss_mb()
        if rss is None or self.idle_rss_mb is None:
            await asyncio.sleep(min(settle, 2.0))
            return {"behaviour": "RSS not measured (no --pid)", "judge_rss": "n/a", "died": None, "detail": {}}
        limit = RSS_RECOVERY_FACTOR * self.idle_rss_mb
        while time.monotonic() - t0 < settle and rss > limit:
            await asyncio.sleep(0.5)
            rss = self.monitor.rss_mb() or rss
        waited = time.monotonic() - t0
        ok = rss <= limit
        text = (f"RSS {rss:.1f} MB after {waited:.0f} s (idle {self.idle_rss_mb:.1f} MB, "
                f"{rss / self.idle_rss_mb:.2f}x)")
        return {"behaviour": text, "judge_rss": None if ok else f"RSS {rss:.1f} MB > {limit:.1f} MB after {waited:.0f} s",
                "died": None, "detail": {"rss_mb": rss, "idle_rss_mb": self.idle_rss_mb, "waited_s": round(waited, 1),
                                         "limit_mb": round(limit, 1)}}

    async def h2_shutdown(self) -> dict:
        """With N idle HTTP/2 connections, SIGTERM the server; time until it exits."""
        n = self.cap("h2_shutdown", self.plan["h2_shutdown"])
        ctx = attacker_context(["h2"])
        conns: list[Conn] = []
        errors: Counter = Counter()

        async def opener(i: int) -> Conn:
            return await tls_open(self.target.addr, ctx, self.args.connect_timeout, payload=H2_PREFACE + H2_EMPTY_SETTINGS)

        await open_many(n, opener, conns, errors, time.monotonic() + self.plan["ramp"])
        await asyncio.sleep(1.0)
        if self.legit:
            self.legit.stop()  # its failures from here on are expected
        proc = self.target.proc
        assert proc is not None
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        cap = self.plan["shutdown_wait"]
        code = None
        while time.monotonic() - t0 < cap:
            for c in conns:
                c.drain()
            code = proc.poll()
            if code is not None:
                break
            await asyncio.sleep(0.01)
        took = time.monotonic() - t0
        killed = code is None
        if killed:
            proc.kill()
            proc.wait()
        for c in conns:
            c.drain()
        closed = self.closed_summary(conns)
        seen = sorted(c.t_closed - t0 for c in conns if c.t_closed is not None)
        self.close_all(conns)
        if killed:
            text = f"{len(conns)} idle h2 open; still running {cap:.0f} s after SIGTERM (killed)"
        else:
            text = f"{len(conns)} idle h2 open; exited {took:.2f} s after SIGTERM (status {code})"
        if seen:
            text += f"; clients saw the close at median {statistics.median(seen):.2f} s"
        ok = not killed and took <= SHUTDOWN_TARGET_S
        return {"behaviour": text, "died": None,
                "judge_shutdown": None if ok else (f"exit took {took:.2f} s > {SHUTDOWN_TARGET_S} s" if not killed
                                                   else f"no exit within {cap:.0f} s"),
                "detail": {"connections": len(conns), "open_errors": dict(errors), "exit_s": round(took, 3),
                           "killed": killed, "status": code, "closed_seen_by_clients": closed}}


def run_oha(url: str, n: int, seconds: float) -> dict:
    base = ["oha", "-n", str(n), "-c", "64", "--no-tui", "--insecure", "-m", "POST",
            "-H", "content-type: application/json", "-d", IRIS_BODY.decode(), url]
    for fmt in (["--output-format", "json"], ["-j"]):
        try:
            r = subprocess.run(base[:1] + fmt + base[1:], capture_output=True, text=True, timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            return {"statuses": {}, "errors": 0, "note": f"oha did not finish within {seconds + 30:.0f} s (killed)"}
        if r.returncode == 0:
            try:
                o = json.loads(r.stdout)
            except ValueError:
                continue
            statuses = {int(k): v for k, v in o.get("statusCodeDistribution", {}).items()}
            errors = sum(o.get("errorDistribution", {}).values())
            summary = o.get("summary") or {}
            return {"statuses": statuses, "errors": errors, "raw": summary, "seconds": summary.get("total")}
    return {"statuses": {}, "errors": 0, "note": f"oha failed: {r.stderr.strip()[-200:]}"}


WRK_LUA = r"""
wrk.method = "POST"
wrk.body = '__BODY__'
wrk.headers["Content-Type"] = "application/json"
local threads = {}
local next_id = 0
function setup(thread)
  next_id = next_id + 1
  thread:set("id", next_id)
  table.insert(threads, thread)
end
function init(args)
  limit = tonumber(args[1])
  marks = args[2]
  count = 0
  statuses = {}
end
function response(status, headers, body)
  count = count + 1
  statuses[status] = (statuses[status] or 0) + 1
  if count == limit then
    -- Tell the battery this thread is done (wrk itself runs until -d or SIGINT).
    local f = io.open(marks .. "/" .. id, "w")
    if f then f:close() end
    wrk.thread:stop()
  end
end
function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    local s = t:get("statuses")
    for k, v in pairs(s) do total[k] = (total[k] or 0) + v end
  end
  local parts = {}
  for k, v in pairs(total) do table.insert(parts, string.format('"%d": %d', k, v)) end
  local e = summary.errors
  io.write(string.format('BATTERY {"requests": %d, "duration_us": %d, "errors": {"connect": %d, "read": %d, "write": %d, "timeout": %d}, "statuses": {%s}}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.timeout, table.concat(parts, ", ")))
end
"""


def run_wrk(url: str, n: int, seconds: float, cpus: list[int] | None) -> dict:
    """wrk has no request count: each thread stops itself at its share and
    leaves a mark; once all have, wrk is interrupted (SIGINT makes it print
    its summary and exit)."""
    threads = max(1, len(cpus) if cpus else min(4, os.cpu_count() or 1))
    per_thread = -(-n // threads)
    work = Path(tempfile.mkdtemp(prefix="battery-wrk-"))
    script = work / "flood.lua"
    marks = work / "marks"
    marks.mkdir()
    script.write_text(WRK_LUA.replace("__BODY__", IRIS_BODY.decode()))
    cmd = ["wrk", "-t", str(threads), "-c", "64", "-d", f"{int(seconds)}s", "--timeout", "5s", "-s", str(script),
           url, "--", str(per_thread), str(marks)]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    note = None
    try:
        while proc.poll() is None:
            if len(os.listdir(marks)) >= threads:
                proc.send_signal(signal.SIGINT)
                break
            time.sleep(0.05)
        elapsed = time.monotonic() - t0
        try:
            stdout, stderr = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
            note = "wrk did not stop (killed)"
        if len(os.listdir(marks)) < threads:
            note = f"time bound of {seconds:.0f} s reached"
        for line in stdout.splitlines():
            if line.startswith("BATTERY "):
                o = json.loads(line[len("BATTERY "):])
                return {"statuses": {int(k): v for k, v in o["statuses"].items()},
                        "errors": sum(o["errors"].values()), "raw": o, "seconds": elapsed, "note": note}
        return {"statuses": {}, "errors": 0, "seconds": elapsed,
                "note": f"wrk failed: {(stderr or stdout).strip()[-200:]}"}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(work, ignore_errors=True)


async def python_flood(addr: tuple[str, int], n: int, seconds: float, *, header: str = "", conns: int = 32,
                       depth: int = 8) -> dict:
    """HTTP/1.1 keep-alive over TLS with pipelining: the fallback flood, and the wrong-key burst."""
    ctx = attacker_context(["http/1.1"])
    req = (f"POST /v1/models/iris:predict HTTP/1.1\r\nHost: localhost\r\n{header}Content-Type: application/json\r\n"
           f"Content-Length: {len(IRIS_BODY)}\r\n\r\n").encode() + IRIS_BODY
    statuses: Counter = Counter()
    errors = [0]
    budget = [n]
    deadline = time.monotonic() + seconds

    async def worker():
        writer = None
        try:
            while budget[0] > 0 and time.monotonic() < deadline:
                if writer is None:
                    try:
                        async with asyncio.timeout(5):
                            reader, writer = await asyncio.open_connection(addr[0], addr[1], ssl=ctx,
                                                                           server_hostname="localhost")
                    except (OSError, TimeoutError, ssl.SSLError):
                        errors[0] += 1
                        writer = None
                        await asyncio.sleep(0.05)
                        continue
                k = min(depth, budget[0])
                budget[0] -= k
                try:
                    async with asyncio.timeout(10):
                        writer.write(req * k)
                        await writer.drain()
                        close = False
                        for _ in range(k):
                            head = await reader.readuntil(b"\r\n\r\n")
                            lines = head.split(b"\r\n")
                            code = int(lines[0].split()[1])
                            length = 0
                            for h in lines[1:]:
                                name, _, value = h.partition(b":")
                                name = name.strip().lower()
                                if name == b"content-length":
                                    length = int(value)
                                elif name == b"connection" and value.strip().lower() == b"close":
                                    close = True
                            if length:
                                await reader.readexactly(length)
                            statuses[code] += 1
                            if close:
                                break
                    if close:
                        writer.close()
                        writer = None
                except (OSError, TimeoutError, asyncio.IncompleteReadError, ssl.SSLError, ValueError, IndexError):
                    errors[0] += 1
                    if writer is not None:
                        writer.transport.abort()
                    writer = None
        finally:
            if writer is not None:
                writer.transport.abort()

    await asyncio.gather(*(worker() for _ in range(conns)))
    note = None
    if budget[0] > 0:
        note = f"time bound of {seconds:.0f} s reached"
    return {"statuses": dict(statuses), "errors": errors[0], "note": note}


# ---------------------------------------------------------------------------
# Orchestration
# ---------------------------------------------------------------------------

def judge(name: str, res: dict, legit: dict | None) -> tuple[str, str]:
    """(verdict, target text)."""
    def legit_check() -> str | None:
        if legit is None:
            return "no legitimate client"
        if legit["requests"] == 0:
            return "the legitimate client sent nothing"
        if legit["failures"]:
            return f"{legit['failures']} legitimate failures"
        if legit["p99_ms"] is not None and legit["p99_ms"] > P99_TARGET_MS:
            return f"legitimate p99 {legit['p99_ms']:.0f} ms > {P99_TARGET_MS:.0f} ms"
        return None

    if res.get("error"):
        return "ERROR", "the attack ran"
    if name in ("idle_tls", "idle_h2", "slow_body", "slow_read", "auth_fail_ban"):
        target = f"legit: every answer 200, p99 <= {P99_TARGET_MS:.0f} ms"
        problem = legit_check() or res.get("died")
        return ("FAIL" if problem else "ok"), target if not problem else f"{target}: {problem}"
    if name == "unauth_flood":
        target = "data dir grows <= 5 MB per 500k"
        problem = res.get("judge_disk") or res.get("died")
        if problem == "n/a":
            return "n/a", target + " (no data dir)"
        return ("FAIL" if problem else "ok"), target if not problem else f"{target}: {problem}"
    if name == "recovery":
        target = f"RSS <= {RSS_RECOVERY_FACTOR:.0f}x idle after settle"
        problem = res.get("judge_rss")
        if problem == "n/a":
            return "n/a", target
        return ("FAIL" if problem else "ok"), target if not problem else f"{target}: {problem}"
    if name == "h2_shutdown":
        target = f"exit <= {SHUTDOWN_TARGET_S:.0f} s after SIGTERM"
        problem = res.get("judge_shutdown")
        return ("FAIL" if problem else "ok"), target if not problem else f"{target}: {problem}"
    return "n/a", ""


def fmt(v, spec: str = ".0f") -> str:
    return "-" if v is None else format(v, spec)


def print_table(rows: list[dict], idle: float | None, header: str) -> None:
    print()
    print(header)
    print(f"idle RSS: {fmt(idle, '.1f')} MB")
    cols = ["attack", "server behaviour", "legit req/fail", "legit p99 ms", "RSS MB before/peak/after", "verdict"]
    table = []
    for r in rows:
        lg = r.get("legit") or {}
        rss = r.get("rss") or {}
        table.append([
            r["attack"],
            r["behaviour"],
            f"{lg['requests']}/{lg['failures']}" if lg and lg["requests"] else "-",
            fmt(lg.get("p99_ms"), ".1f") if lg and lg["requests"] else "-",
            f"{fmt(rss.get('before'), '.0f')}/{fmt(rss.get('peak'), '.0f')}/{fmt(rss.get('after'), '.0f')}",
            r["verdict"],
        ])
    widths = [max([len(cols[i])] + [len(t[i]) for t in table]) for i in range(len(cols))]

    def line(cells):
        return " | ".join(c.ljust(widths[i]) for i, c in enumerate(cells)).rstrip()

    print(line(cols))
    print("-+-".join("-" * w for w in widths))
    for t in table:
        print(line(t))
    fails = [r for r in rows if r["verdict"] in ("FAIL", "ERROR")]
    if fails:
        print("\nnot met:")
        for r in fails:
            print(f"  {r['attack']}: {r['target']}")
    print()


def plan_for(args) -> dict:
    plan = dict(QUICK if args.quick else FULL)
    for k in ("hold", "settle"):
        v = getattr(args, k)
        if v is not None:
            plan[k] = v
    if args.scale:
        for k in ("idle_tls", "idle_h2", "slow_body", "slow_read", "unauth_flood", "unauth_flood_python",
                  "auth_fail_ban", "h2_shutdown"):
            plan[k] = max(1, int(plan[k] * args.scale))
    return plan


def raise_nofile(plan: dict) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    plan["nofile"] = soft
    plan["fd_budget"] = max(1, soft - 256)
    need = max(plan["idle_tls"], plan["idle_h2"], plan["slow_body"], plan["slow_read"]) + 256
    if soft < need:
        log(f"RLIMIT_NOFILE is {soft} (hard limit {hard}); the largest attack needs {need}: counts above "
            f"{plan['fd_budget']} are capped (raise the hard limit, e.g. `ulimit -Hn {need}` as root, for the full counts)")
    try:
        lo, hi = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        if hi - lo + 1 < need:
            log(f"only {hi - lo + 1} local ports (net.ipv4.ip_local_port_range): the largest attack needs {need}")
    except (OSError, ValueError):
        pass


def split_cpus(no_pin: bool) -> tuple[list[int] | None, list[int] | None]:
    """(server + legitimate client, attacker) CPU sets, or (None, None)."""
    if no_pin:
        return None, None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    k = max(1, len(cpus) // 3)
    return cpus[:-k], cpus[-k:]


async def run_battery(args, plan: dict, target: Target, legit: Legit | None,
                      monitor: Monitor) -> tuple[list[dict], float | None]:
    b = Battery(args, plan, target, legit, monitor)
    order = [a for a in ATTACKS if (not args.only or a in args.only) and a not in (args.skip or [])]
    if not target.started and "h2_shutdown" in order:
        order.remove("h2_shutdown")
        log("h2_shutdown skipped: the battery did not start this server")
    # Idle RSS: after the legitimate client has warmed the server up.
    await asyncio.sleep(plan["warmup"])
    if monitor.pid:
        t = time.monotonic()
        vals = [s[1] for s in monitor.samples if s[0] >= t - plan["warmup"]]
        b.idle_rss_mb = round(statistics.median(vals) / 1024, 1) if vals else monitor.rss_mb()
    log(f"idle RSS {fmt(b.idle_rss_mb, '.1f')} MB")
    rows = []
    for name in order:
        if not target.alive():
            rows.append({"attack": name, "behaviour": f"not run: {target.exit_note()}", "verdict": "FAIL",
                         "target": "the server stays up", "legit": None, "rss": None, "detail": {}})
            continue
        log(f"{name} ...")
        t0 = time.monotonic()
        rss_before = monitor.rss_mb()
        try:
            res = await getattr(b, name)()
        except Exception as e:  # noqa: BLE001 - reported as the attack's error
            import traceback
            traceback.print_exc()
            res = {"behaviour": f"battery error: {type(e).__name__}: {e}", "error": True, "detail": {}}
        t1 = time.monotonic()
        if name != "h2_shutdown":
            await asyncio.sleep(plan["cooldown"])
        peak, fds = monitor.peak(t0, t1)
        lg = legit.stats(t0, t1) if legit and name != "h2_shutdown" else None
        rss = {"before": rss_before, "peak": peak, "after": monitor.rss_mb() if target.alive() else None}
        verdict, target_text = judge(name, res, lg)
        row = {"attack": name, "behaviour": res["behaviour"], "verdict": verdict, "target": target_text, "legit": lg,
               "rss": rss, "server_fds_peak": fds, "seconds": round(t1 - t0, 1), "detail": res.get("detail", {})}
        rows.append(row)
        log(f"  {verdict}: {res['behaviour']}" + (f" | legit {lg['requests']}/{lg['failures']} p99 {lg['p99_ms']} ms" if lg else ""))
    b.results = rows
    return rows, b.idle_rss_mb


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("--legit-worker", help=argparse.SUPPRESS)
    p.add_argument("--quick", action="store_true", help="~20x smaller counts and short holds (CI, under ~2 minutes)")
    p.add_argument("--binary", default=str(ROOT / "target/release/warden"), help="Warden binary to start (default %(default)s)")
    p.add_argument("--models", default=str(ROOT / "models"), help="model repository for the started server")
    p.add_argument("--onnxruntime", help="libonnxruntime.so for the started server (default: $ORT_DYLIB_PATH, else Warden's own search from the repo root)")
    p.add_argument("--url", help="attach to a running server: https://127.0.0.1:PORT")
    p.add_argument("--key", help="with --url: the legitimate client's API key (role predict; keep its limits out of the way)")
    p.add_argument("--attacker-key", help="with --url: the key slow_body uses (default --key)")
    p.add_argument("--pid", type=int, help="with --url: the server's pid, for RSS")
    p.add_argument("--data-dir", help="with --url: the server's data dir, for disk growth (and its tls/ca.pem)")
    p.add_argument("--log-file", help="with --url: the file the server's stderr goes to, for log growth")
    p.add_argument("--cacert", help="with --url: CA certificate the legitimate client verifies the server with")
    p.add_argument("--only", type=lambda s: s.split(","), help=f"comma-separated subset of: {','.join(ATTACKS)}")
    p.add_argument("--skip", type=lambda s: s.split(","), help="comma-separated attacks to leave out")
    p.add_argument("--hold", type=float, help="seconds each connection attack is held (default 40, quick 12)")
    p.add_argument("--settle", type=float, help="seconds to wait for RSS to recover at the end (default 60, quick 10)")
    p.add_argument("--scale", type=float, help="multiply every count by this (after --quick)")
    p.add_argument("--connect-timeout", type=float, default=5.0, help="per-connection connect + handshake bound, s (default 5)")
    p.add_argument("--legit-interval", type=float, default=0.02, help="seconds between legitimate requests (default 0.02)")
    p.add_argument("--legit-reconnect", type=float, default=1.0,
                   help="the legitimate client opens a fresh connection this often, s, so that new connections "
                        "are measured too (0: keep one connection, reconnect only on error; default 1)")
    p.add_argument("--flood-tool", choices=["auto", "oha", "wrk", "python"], default="auto")
    p.add_argument("--no-pin", action="store_true", help="do not split CPUs between server+legit and attacker")
    p.add_argument("--json", default=str(ROOT / "bench/results/battery.json"), help="JSON results (default %(default)s)")
    p.add_argument("--report-only", action="store_true", help="exit 0 even when a target is not met")
    p.add_argument("--keep", action="store_true", help="keep the temporary data dir and logs of a started server")
    p.add_argument("--server", action="append", default=[], metavar="KEY=VALUE",
                   help="a [server] setting for the started server, TOML (repeatable), e.g. "
                        "max_connections_per_address=20000 to stand for many attacking addresses")
    args = p.parse_args()

    if args.legit_worker:
        legit_worker(json.loads(args.legit_worker))
        return 0
    for sel in (args.only or []) + (args.skip or []):
        if sel not in ATTACKS:
            p.error(f"unknown attack {sel!r}; one of {', '.join(ATTACKS)}")

    plan = plan_for(args)
    raise_nofile(plan)
    server_cpus, attacker_cpus = (None, None) if args.url else split_cpus(args.no_pin)
    plan["attacker_cpus"] = attacker_cpus
    target = Target()
    legit = monitor = None

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)

    code = 0
    started_at = time.time()
    try:
        try:
            if args.url:
                attach(args, target)
            else:
                start_server(args, target, server_cpus)
                log(f"warden pid {target.pid} on 127.0.0.1:{target.port}, data dir {target.data_dir}"
                    + (f", server+legit on CPUs {server_cpus}, attacker on {attacker_cpus}" if server_cpus else ""))
            legit_cpus = server_cpus
            legit = Legit("127.0.0.1", target.port, target.key, target.cacert, args.legit_interval,
                          args.legit_reconnect, legit_cpus)
            if not legit.wait_ready(15):
                errs = Counter(s[3] for s in legit.samples if not s[2])
                raise RuntimeError(f"the legitimate client got no answers (errors: {dict(errs) or 'none'}); "
                                   f"server log:\n{tail(target.log_file)}")
        except (RuntimeError, OSError) as e:
            log(f"cannot run: {e}")
            return 2
        if attacker_cpus:
            os.sched_setaffinity(0, attacker_cpus)
        monitor = Monitor(target.pid)
        rows, idle = asyncio.run(run_battery(args, plan, target, legit, monitor))
        mode = "quick" if args.quick else "full"
        header = (f"Warden abuse battery ({mode}; attacker 127.0.0.1, legitimate client 127.0.0.2 "
                  f"every {args.legit_interval * 1000:.0f} ms, new connection every {args.legit_reconnect:g} s; "
                  f"hold {plan['hold']:.0f} s)")
        print_table(rows, idle, header)
        failed = [r["attack"] for r in rows if r["verdict"] in ("FAIL", "ERROR")]
        result = {"mode": mode, "started_server": target.started, "binary": target.binary,
                  "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started_at)),
                  "seconds": round(time.time() - started_at, 1), "idle_rss_mb": idle,
                  "plan": {k: v for k, v in plan.items()}, "legit_interval_s": args.legit_interval,
                  "legit_reconnect_s": args.legit_reconnect, "rows": rows, "failed": failed}
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
        log(f"results in {out}")
        code = 1 if failed and not args.report_only else 0
    except KeyboardInterrupt as e:
        log(f"interrupted ({e})")
        code = 130
    finally:
        if monitor:
            monitor.stop()
        if legit:
            legit.stop()
        if target.proc is not None and target.proc.poll() is None:
            target.proc.terminate()
            try:
                target.proc.wait(10)
            except subprocess.TimeoutExpired:
                target.proc.kill()
                target.proc.wait()
        if target.tmp:
            if args.keep:
                log(f"kept {target.tmp}")
            else:
                shutil.rmtree(target.tmp, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
