#!/usr/bin/env python3
"""TLS test peer for the e2e suite: Python's ssl module (OpenSSL) and the
`cryptography` package, so no code of Warden's checks Warden's certificates.

  tls_peer.py serial PORT CAFILE...
      prints the serial number of the certificate a new handshake gets
  tls_peer.py swap PORT CERT KEY NEW_CERT NEW_KEY CAFILE...
      opens a keep-alive HTTPS connection (trusting the first CAFILE, the
      certificate served now), swaps the certificate files on
      disk (key first, each by rename), waits until a new handshake sees the
      new certificate, then sends a second request on the first connection;
      prints {"old": serial, "new": serial, "kept_alive": bool, "seconds": t}
  tls_peer.py sans CERTFILE
      prints {"dns": [...], "ip": [...]}: the certificate's subject
      alternative names
"""

import http.client
import json
import os
import ssl
import sys
import time

from cryptography import x509


def context(cafiles):
    ctx = ssl.create_default_context()
    for ca in cafiles:
        ctx.load_verify_locations(cafile=ca)
    return ctx


def serial(der):
    return x509.load_der_x509_certificate(der).serial_number


def fresh_serial(port, cafiles):
    # One trust anchor at a time: the development certificates share a
    # subject, which would make OpenSSL pick the wrong anchor.
    error = None
    for ca in cafiles:
        conn = http.client.HTTPSConnection("localhost", port, context=context([ca]), timeout=10)
        try:
            conn.request("GET", "/v2/health/live")
            conn.getresponse().read()
            return serial(conn.sock.getpeercert(binary_form=True))
        except ssl.SSLCertVerificationError as e:
            error = e
        finally:
            conn.close()
    raise error


def sans(path):
    with open(path, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {
        "dns": sorted(names.get_values_for_type(x509.DNSName)),
        "ip": sorted(str(ip) for ip in names.get_values_for_type(x509.IPAddress)),
    }


def main():
    if sys.argv[1] == "sans":
        print(json.dumps(sans(sys.argv[2])))
        return
    mode, port = sys.argv[1], int(sys.argv[2])
    if mode == "serial":
        print(fresh_serial(port, sys.argv[3:]))
        return
    cert, key, new_cert, new_key = sys.argv[3:7]
    cafiles = sys.argv[7:]
    conn = http.client.HTTPSConnection("localhost", port, context=context(cafiles[:1]), timeout=10)
    conn.request("GET", "/v2/health/live")
    first = conn.getresponse()
    first.read()
    assert first.status == 200, first.status
    sock = conn.sock
    old = serial(sock.getpeercert(binary_form=True))
    os.replace(new_key, key)
    os.replace(new_cert, cert)
    started = time.monotonic()
    new = old
    while new == old and time.monotonic() - started < 15:
        time.sleep(0.1)
        new = fresh_serial(port, cafiles)
    conn.request("GET", "/v2/health/live")
    second = conn.getresponse()
    second.read()
    kept_alive = (
        second.status == 200
        and conn.sock is sock
        and serial(conn.sock.getpeercert(binary_form=True)) == old
    )
    print(json.dumps({"old": str(old), "new": str(new), "kept_alive": kept_alive,
                      "seconds": round(time.monotonic() - started, 2)}))


if __name__ == "__main__":
    main()
