//! cgroup id -> pod, by reading the node's cgroup v2 hierarchy.
//!
//! The kernel reports a connect's cgroup as an id: the inode number of the
//! cgroup's directory under the cgroup v2 mount. The resolver walks that
//! hierarchy once, remembers every directory's id and what its path says
//! ([`parse_pod_cgroup`]), and walks it again only when an id it has never
//! seen arrives (a pod started since), at most once per `min_rescan`, so a
//! storm of connects from an unknown cgroup costs one walk, not one each.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use thiserror::Error;

use super::cgroup_path::{PodCgroup, parse_pod_cgroup};
use crate::probe::ConnectRecord;

/// Deep enough for every kubelet layout (a nested kubelet adds two levels).
const MAX_DEPTH: usize = 12;
/// Directories remembered at most: a walk stops adding past this.
const MAX_CGROUPS: usize = 200_000;

#[derive(Debug, Error)]
pub enum ResolverError {
    #[error(
        "no cgroup v2 hierarchy is mounted (none in /proc/self/mountinfo): connectors cannot \
         be told apart. Mount one, or point --cgroup-root at the host's (in a container: a \
         read-only hostPath of /sys/fs/cgroup)"
    )]
    NoCgroup2,
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The cgroup v2 mount point named in a `/proc/<pid>/mountinfo` text.
pub fn cgroup2_mount_from(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        let mount_point = left.split_whitespace().nth(4)?;
        (fstype == "cgroup2").then(|| PathBuf::from(unescape_octal(mount_point)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        if bytes[i] == b'\\'
            && let Some(digits) = octal
        {
            let value = digits.iter().fold(0u32, |v, d| v * 8 + u32::from(d - b'0'));
            out.push(value as u8);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The running system's cgroup v2 mount.
pub fn cgroup2_mount() -> Result<PathBuf, ResolverError> {
    let text =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(|source| ResolverError::Read {
            path: "/proc/self/mountinfo".into(),
            source,
        })?;
    cgroup2_mount_from(&text).ok_or(ResolverError::NoCgroup2)
}

/// Maps cgroup ids to pods; see the module docs.
#[derive(Debug)]
pub struct CgroupResolver {
    root: PathBuf,
    known: HashMap<u64, Option<PodCgroup>>,
    last_walk: Option<Instant>,
    min_rescan: Duration,
    walks: u64,
}

impl CgroupResolver {
    /// A resolver over the cgroup v2 hierarchy mounted at `root`. A host's
    /// whole `/sys/fs/cgroup` may be given: on a hybrid layout (v1
    /// controllers, v2 at `unified/`) the v2 part is used.
    pub fn at(root: impl Into<PathBuf>) -> CgroupResolver {
        let mut root: PathBuf = root.into();
        let unified = root.join("unified");
        if !root.join("cgroup.controllers").exists() && unified.join("cgroup.controllers").exists()
        {
            root = unified;
        }
        CgroupResolver {
            root,
            known: HashMap::new(),
            last_walk: None,
            min_rescan: Duration::from_secs(1),
            walks: 0,
        }
    }

    /// A resolver over this system's cgroup v2 mount.
    pub fn discover() -> Result<CgroupResolver, ResolverError> {
        Ok(CgroupResolver::at(cgroup2_mount()?))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// How many times the hierarchy was walked.
    pub fn walks(&self) -> u64 {
        self.walks
    }

    /// The pod (and container) cgroup `id` belongs to; `None` for a host
    /// cgroup or an id not found even after a fresh walk.
    pub fn resolve(&mut self, id: u64) -> Option<PodCgroup> {
        if id == 0 {
            return None;
        }
        if let Some(found) = self.known.get(&id) {
            return found.clone();
        }
        let due = self
            .last_walk
            .is_none_or(|t| t.elapsed() >= self.min_rescan);
        if due {
            self.walk();
        }
        self.known.get(&id).cloned().flatten()
    }

    /// Fills in `record.pod_uid` and `record.container_id` from its cgroup.
    pub fn annotate(&mut self, record: &mut ConnectRecord) {
        if let Some(found) = self.resolve(record.cgroup_id) {
            record.pod_uid = Some(found.pod_uid);
            record.container_id = found.container_id;
        }
    }

    /// Re-reads the whole hierarchy. Removed cgroups are forgotten (their
    /// ids are never reused).
    fn walk(&mut self) {
        self.last_walk = Some(Instant::now());
        self.walks += 1;
        let mut known = HashMap::new();
        let mut stack: Vec<(PathBuf, usize)> = vec![(self.root.clone(), 0)];
        while let Some((dir, depth)) = stack.pop() {
            let Ok(meta) = std::fs::metadata(&dir) else {
                continue; // removed during the walk
            };
            let relative = dir.strip_prefix(&self.root).unwrap_or(&dir);
            let pod = parse_pod_cgroup(&relative.to_string_lossy());
            known.insert(meta.ino(), pod);
            if depth >= MAX_DEPTH || known.len() >= MAX_CGROUPS {
                continue;
            }
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push((entry.path(), depth + 1));
                }
            }
        }
        self.known = known;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
24 29 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
30 24 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
32 30 0:28 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
";

    #[test]
    fn finds_the_v2_mount_in_a_hybrid_layout() {
        assert_eq!(
            cgroup2_mount_from(MOUNTINFO),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn finds_the_v2_mount_in_a_unified_layout() {
        let unified = "29 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount_from(unified),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
    }

    #[test]
    fn no_v2_mount_is_none() {
        let v1_only = "32 30 0:28 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(cgroup2_mount_from(v1_only), None);
    }

    #[test]
    fn escaped_mount_points_are_unescaped() {
        let line = "31 30 0:27 / /mnt/my\\040cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount_from(line),
            Some(PathBuf::from("/mnt/my cgroup"))
        );
    }

    #[test]
    fn resolves_directory_inodes_under_a_root() {
        // A plain directory tree stands in for the hierarchy: the resolver
        // only reads names and inode numbers.
        let root = std::env::temp_dir().join(format!("observer-resolver-{}", std::process::id()));
        let uid = "4f0c7a3e-9b1d-4c2e-8f6a-0123456789ab";
        let id = "ab".repeat(32);
        let pod_dir = root.join(format!("kubepods/besteffort/pod{uid}"));
        let container = pod_dir.join(&id);
        std::fs::create_dir_all(&container).unwrap();
        let host = root.join("system.slice/kubelet.service");
        std::fs::create_dir_all(&host).unwrap();
        let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();

        let mut resolver = CgroupResolver::at(&root);
        let found = resolver
            .resolve(ino(&container))
            .expect("a pod's container");
        assert_eq!(found.pod_uid, uid);
        assert_eq!(found.container_id.as_deref(), Some(id.as_str()));
        assert_eq!(resolver.resolve(ino(&host)), None);
        assert_eq!(resolver.resolve(ino(&pod_dir)).unwrap().container_id, None);
        assert_eq!(resolver.walks(), 1, "known ids need no second walk");
        // Unknown ids within the rescan interval cost no walk.
        assert_eq!(resolver.resolve(u64::MAX), None);
        assert_eq!(resolver.walks(), 1);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
