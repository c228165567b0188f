//! The deployment files, checked offline (there is no container engine or
//! cluster here): hadolint on the Dockerfile, the Kubernetes manifests
//! against the Kubernetes JSON schemas and the security settings
//! docs/deploy.md promises, and both shipped configurations through
//! `warden config check` (scripts/check_deploy.py).

use super::{BIN, python_with, repo};

#[test]
fn the_image_and_the_manifests_pass_their_offline_checks() {
    let out = python_with(
        &["kubernetes-validate", "py"],
        &repo().join("scripts/check_deploy.py"),
    )
    .arg(BIN)
    .output()
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "Dockerfile: hadolint clean",
        "deploy/k8s: 13 objects valid",
        "Deployment: non-root",
        "rolling updates, HPA 2-10 replicas, PDB minAvailable 1",
        "deploy/k8s/configmap.yaml: warden config check passes",
        "deploy/docker/warden.toml: warden config check passes",
    ] {
        assert!(text.contains(line), "{line:?} not in:\n{text}");
    }
}
