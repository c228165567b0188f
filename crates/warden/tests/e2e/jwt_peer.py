"""PyJWT as an independent JWT peer for the e2e tests.

    jwt_peer.py keys DIR                    RSA-2048 and P-256 keys; DIR/jwks.json (both), DIR/jwks-rsa.json
    jwt_peer.py mint DIR ALG KID CLAIMS     prints a token signed with DIR's key for ALG (RS256 | ES256)
    jwt_peer.py verify JWKS TOKEN ISS AUD   verifies a token against a JWKS file, prints its claims as JSON
    jwt_peer.py serve DIR CERT KEY          serves DIR over HTTPS on a free port (printed first), until killed

Needs PyJWT with cryptography (scripts/setup.sh installs them into .runtime/py).
"""
import json
import os
import sys

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa


def keys(d):
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    for name, key in (("rsa.pem", rsa_key), ("ec.pem", ec_key)):
        with open(os.path.join(d, name), "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    rsa_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key()))
    rsa_jwk.update(kid="rsa-1", alg="RS256", use="sig")
    ec_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec_key.public_key()))
    ec_jwk.update(kid="ec-1", alg="ES256", use="sig")
    with open(os.path.join(d, "jwks.json"), "w") as f:
        json.dump({"keys": [rsa_jwk, ec_jwk]}, f)
    with open(os.path.join(d, "jwks-rsa.json"), "w") as f:
        json.dump({"keys": [rsa_jwk]}, f)
    with open(os.path.join(d, "rsa-public.pem"), "wb") as f:
        f.write(rsa_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))


def mint(d, alg, kid, claims):
    name = {"RS256": "rsa.pem", "ES256": "ec.pem"}[alg]
    with open(os.path.join(d, name), "rb") as f:
        key = f.read()
    print(jwt.encode(json.loads(claims), key, algorithm=alg, headers={"kid": kid}))


def verify(jwks_path, token, iss, aud):
    with open(jwks_path) as f:
        jwks = jwt.PyJWKSet.from_dict(json.load(f))
    kid = jwt.get_unverified_header(token)["kid"]
    key = next(k for k in jwks.keys if k.key_id == kid)
    claims = jwt.decode(token, key.key, algorithms=["EdDSA"], issuer=iss, audience=aud)
    print(json.dumps(claims))


def serve(d, cert, key):
    import functools
    import http.server
    import ssl

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=d)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    print(httpd.server_address[1], flush=True)
    httpd.serve_forever()


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"keys": keys, "mint": mint, "verify": verify, "serve": serve}[cmd](*args)
