//! Which pod and container a cgroup belongs to, from its path alone.
//!
//! The kubelet names a pod's cgroup after the pod's UID and the container
//! runtime names each container's cgroup after the container id, with two
//! spellings (the cgroup driver decides):
//!
//! ```text
//! systemd:  kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid, _ for ->.slice/cri-containerd-<id>.scope
//!           kubepods.slice/kubepods-pod<uid>.slice/crio-<id>.scope           (Guaranteed QoS, CRI-O)
//! cgroupfs: kubepods/burstable/pod<uid>/<id>
//!           kubepods/pod<uid>/<id>                                           (Guaranteed QoS)
//! ```
//!
//! Nodes that run the kubelet nested (kind, a kubelet inside a container)
//! put a prefix before `kubepods`; the shape is found anywhere in the path.
//! Pure: no file system access.

/// The pod (and container) a cgroup path names.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PodCgroup {
    /// The pod's `metadata.uid`, with dashes.
    pub pod_uid: String,
    /// The container id (64 hex digits), when the path reaches a
    /// container's own cgroup (not the pod's, nor a runtime monitor's).
    pub container_id: Option<String>,
}

/// Parses a cgroup path (relative to the cgroup v2 mount or absolute).
/// `None` when it is not inside a pod's cgroup.
pub fn parse_pod_cgroup(path: &str) -> Option<PodCgroup> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let kubepods = parts.iter().position(|p| is_kubepods(p))?;
    for (index, part) in parts.iter().enumerate().skip(kubepods) {
        if let Some(pod_uid) = pod_uid_of(part) {
            let container_id = parts.get(index + 1).and_then(|c| container_id_of(c));
            return Some(PodCgroup {
                pod_uid,
                container_id,
            });
        }
    }
    None
}

/// `kubepods`, `kubepods.slice`, or a nested kubelet's `kubelet-kubepods.slice`.
fn is_kubepods(part: &str) -> bool {
    part == "kubepods"
        || part == "kubepods.slice"
        || (part.ends_with("-kubepods.slice") && !part.contains("-pod"))
}

/// The pod UID a pod-level cgroup directory carries, in either driver's form.
fn pod_uid_of(part: &str) -> Option<String> {
    let raw = if let Some(slice) = part.strip_suffix(".slice") {
        // kubepods-<qos>-pod<uid>.slice; the UID's dashes are underscores
        // because systemd reserves '-' for the slice hierarchy.
        let (_, uid) = slice.rsplit_once("-pod")?;
        uid.replace('_', "-")
    } else {
        part.strip_prefix("pod")?.to_owned()
    };
    is_uid(&raw).then_some(raw)
}

/// A container's cgroup directory: `cri-containerd-<id>.scope`,
/// `crio-<id>.scope`, `docker-<id>.scope`, or the bare id (cgroupfs).
/// CRI-O's `crio-conmon-<id>.scope` is its monitor, not the container.
fn container_id_of(part: &str) -> Option<String> {
    let name = part.strip_suffix(".scope").unwrap_or(part);
    let id = ["cri-containerd-", "crio-", "docker-", "cri-o-"]
        .iter()
        .find_map(|prefix| name.strip_prefix(prefix))
        .unwrap_or(name);
    is_container_id(id).then(|| id.to_owned())
}

/// A Kubernetes UID: 36 characters, hex digits and dashes in the 8-4-4-4-12
/// layout.
fn is_uid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, len)| g.len() == len && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "4f0c7a3e-9b1d-4c2e-8f6a-0123456789ab";
    const ID: &str = "0b7c2f4e6a8d1c3e5f7a9b0d2c4e6f8a1b3d5c7e9f0a2b4c6d8e0f1a3b5c7d9e";

    fn expect(path: &str, container: Option<&str>) {
        assert_eq!(
            parse_pod_cgroup(path),
            Some(PodCgroup {
                pod_uid: UID.into(),
                container_id: container.map(str::to_owned),
            }),
            "{path}"
        );
    }

    #[test]
    fn systemd_driver_with_containerd() {
        expect(
            &format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{ID}.scope",
                UID.replace('-', "_")
            ),
            Some(ID),
        );
    }

    #[test]
    fn systemd_driver_guaranteed_qos_with_crio() {
        expect(
            &format!(
                "kubepods.slice/kubepods-pod{}.slice/crio-{ID}.scope",
                UID.replace('-', "_")
            ),
            Some(ID),
        );
    }

    #[test]
    fn crio_monitor_is_the_pod_but_not_a_container() {
        expect(
            &format!(
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/crio-conmon-{ID}.scope",
                UID.replace('-', "_")
            ),
            None,
        );
    }

    #[test]
    fn cgroupfs_driver() {
        expect(&format!("/kubepods/burstable/pod{UID}/{ID}"), Some(ID));
        expect(&format!("/kubepods/pod{UID}/{ID}"), Some(ID));
        expect(&format!("/kubepods/besteffort/pod{UID}"), None);
    }

    #[test]
    fn nested_kubelet_prefixes_are_skipped() {
        expect(
            &format!(
                "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{}.slice/cri-containerd-{ID}.scope",
                UID.replace('-', "_")
            ),
            Some(ID),
        );
        expect(
            &format!("/system.slice/docker-abc.scope/kubepods/besteffort/pod{UID}/{ID}"),
            Some(ID),
        );
    }

    #[test]
    fn host_cgroups_are_not_pods() {
        for path in [
            "/",
            "/system.slice/kubelet.service",
            "/system.slice/containerd.service",
            "/user.slice/user-0.slice/session-1.scope",
            "/kubepods.slice",
            "/kubepods.slice/kubepods-burstable.slice",
            // A pod-shaped name outside kubepods is not the kubelet's.
            &format!("/system.slice/pod{UID}"),
            // Not a UID.
            "/kubepods/burstable/podnot-a-uid/abc",
        ] {
            assert_eq!(parse_pod_cgroup(path), None, "{path}");
        }
    }

    #[test]
    fn a_short_container_directory_is_not_a_container_id() {
        expect(&format!("/kubepods/pod{UID}/init.scope"), None);
    }
}
