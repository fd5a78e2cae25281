//! Shared by the deploy_* tests: the workspace root, and the manifests of
//! deploy/ as `kubectl kustomize` renders them.

#![allow(dead_code)] // each test file uses its own part

use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Container;
use serde::Deserialize;
use serde_json::Value;

/// The kustomizations under deploy/ (relative to the workspace root) that
/// must render: the base as `kubectl apply -k deploy/` sees it, the base
/// itself, and each overlay.
pub const KUSTOMIZATIONS: &[&str] = &[
    "deploy",
    "deploy/base",
    "deploy/overlays/privileged",
    "deploy/overlays/unconfined-seccomp",
    "deploy/overlays/prometheus-operator",
    "deploy/overlays/api-token",
];

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `kubectl kustomize DIR` (offline), one JSON value per document.
pub fn render(dir: &str) -> Vec<Value> {
    let path = workspace_root().join(dir);
    let output = Command::new("kubectl")
        .arg("kustomize")
        .arg(&path)
        .output()
        .expect("kubectl runs (the deploy tests need kubectl; it renders offline)");
    assert!(
        output.status.success(),
        "kubectl kustomize {dir} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).expect("UTF-8 manifests");
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).expect("every rendered document is YAML"))
        .filter(|doc| !doc.is_null())
        .collect()
}

/// The one document of `kind` (and name, when given).
pub fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "exactly one {kind} expected");
    found[0]
}

pub fn daemonset(docs: &[Value]) -> DaemonSet {
    serde_json::from_value(find(docs, "DaemonSet").clone()).expect("a valid DaemonSet")
}

pub fn agent_container(ds: &DaemonSet) -> Container {
    let spec = ds.spec.template.spec.as_ref().expect("pod spec");
    assert_eq!(spec.containers.len(), 1, "one container: the agent");
    spec.containers[0].clone()
}

/// The capabilities the agent container adds, as the kernel names them
/// (`CAP_BPF`), sorted.
pub fn added_capabilities(container: &Container) -> Vec<String> {
    let mut caps: Vec<String> = container
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.as_ref())
        .and_then(|c| c.add.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|c| format!("CAP_{}", c.trim_start_matches("CAP_")))
        .collect();
    caps.sort();
    caps
}

/// (host path, mount path, read-only) of every hostPath volume the agent
/// mounts.
pub fn host_mounts(ds: &DaemonSet) -> Vec<(String, String, bool)> {
    let spec = ds.spec.template.spec.as_ref().expect("pod spec");
    let volumes = spec.volumes.clone().unwrap_or_default();
    let container = agent_container(ds);
    container
        .volume_mounts
        .unwrap_or_default()
        .into_iter()
        .filter_map(|mount| {
            let volume = volumes.iter().find(|v| v.name == mount.name)?;
            let host = volume.host_path.as_ref()?;
            Some((
                host.path.clone(),
                mount.mount_path.clone(),
                mount.read_only.unwrap_or(false),
            ))
        })
        .collect()
}
