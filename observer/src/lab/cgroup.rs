//! Kubelet-shaped cgroups (v2), for the lab's pods and the privileged tests.
//!
//! observer tells a pod's connects from a host process's by the socket's
//! cgroup: the kubelet and the container runtime name a container's cgroup
//! after the pod's UID, so the tail of the path says which pod it is. To
//! exercise that without a kubelet, [`PodCgroup`] creates the same shape
//! under a caller-chosen parent directory (so concurrent labs and tests do
//! not collide) and removes it on drop:
//!
//! - systemd driver: `<parent>/kubepods.slice/kubepods-besteffort.slice/
//!   kubepods-besteffort-pod<uid, - as _>.slice/cri-containerd-<id>.scope`
//!   (or `crio-<id>.scope` for CRI-O);
//! - cgroupfs driver: `<parent>/kubepods/besteffort/pod<uid>/<id>`.
//!
//! A cgroup's id, as `bpf_get_current_cgroup_id()` reports it for a socket's
//! task, is the inode number of its v2 directory.

use std::collections::hash_map::RandomState;
use std::fs::{File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Errors from finding or building cgroups.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup v2 (cgroup2) mount in /proc/self/mountinfo")]
    NoV2Mount,
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid cgroup name part {0:?}")]
    InvalidName(String),
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError {
    let path = path.to_path_buf();
    move |source| CgroupError::Io { what, path, source }
}

/// The mount point of the cgroup v2 hierarchy: `/sys/fs/cgroup` on a
/// unified host, `/sys/fs/cgroup/unified` on a hybrid one.
pub fn v2_mount() -> Result<PathBuf, CgroupError> {
    crate::connector::cgroup2_mount().map_err(|_| CgroupError::NoV2Mount)
}

/// How the kubelet names cgroups (its `cgroupDriver`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CgroupDriver {
    Systemd,
    Cgroupfs,
}

/// Which runtime named the container's cgroup (systemd driver only; with
/// cgroupfs the container's directory is its bare id).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContainerRuntime {
    Containerd,
    CriO,
}

/// Where a pod's container cgroup goes, relative to the v2 mount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodCgroupSpec {
    /// A directory of the caller's under the mount (e.g. `obslab3.slice`),
    /// created if missing and removed when the last pod in it goes.
    pub parent: String,
    pub driver: CgroupDriver,
    pub runtime: ContainerRuntime,
    pub pod_uid: String,
    /// 64 hex digits, as the runtime's container ids.
    pub container_id: String,
}

impl PodCgroupSpec {
    /// containerd with the systemd driver (the common case) and a fresh
    /// container id.
    pub fn new(parent: &str, pod_uid: &str) -> PodCgroupSpec {
        PodCgroupSpec {
            parent: parent.to_string(),
            driver: CgroupDriver::Systemd,
            runtime: ContainerRuntime::Containerd,
            pod_uid: pod_uid.to_string(),
            container_id: random_container_id(),
        }
    }

    /// The directories from the parent down to the container, relative to
    /// the mount, e.g. `["obslab3.slice", "obslab3.slice/kubepods.slice", …]`.
    pub fn levels(&self) -> Result<Vec<PathBuf>, CgroupError> {
        for part in [&self.parent, &self.pod_uid, &self.container_id] {
            if part.is_empty() || part.contains('/') || part.starts_with('.') {
                return Err(CgroupError::InvalidName(part.clone()));
            }
        }
        let id = &self.container_id;
        let names: Vec<String> = match self.driver {
            CgroupDriver::Systemd => {
                // systemd unit names cannot hold '-' inside a slice level,
                // so the kubelet writes the UID's dashes as underscores.
                let uid = self.pod_uid.replace('-', "_");
                let container = match self.runtime {
                    ContainerRuntime::Containerd => format!("cri-containerd-{id}.scope"),
                    ContainerRuntime::CriO => format!("crio-{id}.scope"),
                };
                vec![
                    "kubepods.slice".into(),
                    "kubepods-besteffort.slice".into(),
                    format!("kubepods-besteffort-pod{uid}.slice"),
                    container,
                ]
            }
            CgroupDriver::Cgroupfs => vec![
                "kubepods".into(),
                "besteffort".into(),
                format!("pod{}", self.pod_uid),
                id.clone(),
            ],
        };
        let mut path = PathBuf::from(&self.parent);
        let mut levels = vec![path.clone()];
        for name in names {
            path.push(name);
            levels.push(path.clone());
        }
        Ok(levels)
    }

    /// The container's directory relative to the mount.
    pub fn container_path(&self) -> Result<PathBuf, CgroupError> {
        self.levels()?
            .pop()
            .ok_or_else(|| CgroupError::InvalidName(self.parent.clone()))
    }
}

/// 64 hex digits, like a container id (random per call).
pub fn random_container_id() -> String {
    let state = RandomState::new();
    (0..4u64)
        .map(|i| {
            let mut h = state.build_hasher();
            h.write_u64(i);
            format!("{:016x}", h.finish())
        })
        .collect()
}

/// What happens to processes still in the cgroup when the guard drops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leftovers {
    /// Move them to the hierarchy's root cgroup (they keep running).
    MoveToRoot,
    /// SIGKILL them (the lab's own workloads).
    Kill,
}

/// A pod's container cgroup; removed (bottom-up, as far as the parent and
/// only where empty) on drop.
#[derive(Debug)]
pub struct PodCgroup {
    mount: PathBuf,
    levels: Vec<PathBuf>,
    id: u64,
    leftovers: Leftovers,
}

impl PodCgroup {
    /// Creates the pod's directories under `mount` (see [`v2_mount`]).
    pub fn create(
        mount: &Path,
        spec: &PodCgroupSpec,
        leftovers: Leftovers,
    ) -> Result<PodCgroup, CgroupError> {
        let levels = spec.levels()?;
        // Built first so a failure part-way removes what was made.
        let mut guard = PodCgroup {
            mount: mount.to_path_buf(),
            levels,
            id: 0,
            leftovers,
        };
        let full = guard.path();
        // Another guard dropping may remove a shared ancestor between our
        // mkdirs; trying again rebuilds it.
        let mut tries = 0;
        loop {
            match std::fs::create_dir_all(&full) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && tries < 3 => tries += 1,
                Err(e) => return Err(io_err("creating", &full)(e)),
            }
        }
        guard.id = std::fs::metadata(&full)
            .map_err(io_err("reading", &full))?
            .ino();
        Ok(guard)
    }

    /// The container's directory (absolute).
    pub fn path(&self) -> PathBuf {
        match self.levels.last() {
            Some(rel) => self.mount.join(rel),
            None => self.mount.clone(),
        }
    }

    /// The cgroup id sockets of its processes carry: its inode number.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The file a process writes to move itself (`0` or its pid) here.
    pub fn procs_file(&self) -> PathBuf {
        self.path().join("cgroup.procs")
    }

    /// Moves process `pid` here.
    pub fn add_pid(&self, pid: i32) -> Result<(), CgroupError> {
        let file = self.procs_file();
        std::fs::write(&file, pid.to_string()).map_err(io_err("writing", &file))
    }

    /// The processes in the container's cgroup now.
    pub fn pids(&self) -> Vec<i32> {
        procs_in(&self.path())
    }

    /// SIGKILLs every process in the cgroup and waits (up to 2 s) for it
    /// to empty.
    pub fn kill_all(&self) {
        kill_and_wait(&self.path());
    }

    fn move_to_root(&self) {
        let root = self.mount.join("cgroup.procs");
        for pid in self.pids() {
            if let Err(error) = std::fs::write(&root, pid.to_string()) {
                tracing::debug!(pid, %error, "cgroup: could not move a process out");
            }
        }
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        match self.leftovers {
            Leftovers::Kill => self.kill_all(),
            Leftovers::MoveToRoot => self.move_to_root(),
        }
        // Bottom-up; a level still used by another pod (or process) stays.
        for rel in self.levels.iter().rev() {
            if std::fs::remove_dir(self.mount.join(rel)).is_err() {
                break;
            }
        }
    }
}

/// Makes the process `cmd` starts move itself into the cgroup directory
/// `cgroup` before it execs, so it (and everything it forks) never runs,
/// let alone connects, outside it. Keep the returned file until the
/// command has been spawned.
pub fn place_on_exec(cmd: &mut Command, cgroup: &Path) -> Result<File, CgroupError> {
    let path = cgroup.join("cgroup.procs");
    let file = OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(io_err("opening", &path))?;
    let fd = file.as_raw_fd();
    let move_self = move || {
        // Writing "0" to cgroup.procs moves the writing process.
        // SAFETY: write(2) on an fd that stays open across the fork (the
        // parent holds `file` until the spawn returns) from a static
        // buffer; async-signal-safe, as a pre_exec hook must be.
        let n = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
        if n == 1 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    // SAFETY: the hook only calls write(2) (see above): no allocation, no
    // lock, nothing that is unsafe between fork and exec.
    unsafe { cmd.pre_exec(move_self) };
    Ok(file)
}

fn procs_in(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn kill_and_wait(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let pids = procs_in(dir);
        if pids.is_empty() || Instant::now() > deadline {
            return;
        }
        for pid in pids.into_iter().filter(|&p| p > 0) {
            // SAFETY: kill(2) has no memory preconditions; `pid` is a
            // positive id read from a cgroup the caller owns.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Removes `<mount>/<parent>` and everything under it, killing the
/// processes in it first (a killed run's leftovers). Returns whether
/// anything was there.
pub fn sweep(mount: &Path, parent: &str) -> bool {
    let top = mount.join(parent);
    if parent.is_empty() || parent.contains('/') || !top.is_dir() {
        return false;
    }
    remove_tree(&top);
    true
}

fn remove_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&entry.path());
            }
        }
    }
    kill_and_wait(dir);
    if let Err(error) = std::fs::remove_dir(dir) {
        tracing::warn!(dir = %dir.display(), %error, "cgroup: could not remove");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0d3c8a5e-1b2f-4c6d-9e8f-a1b2c3d4e5f6";

    fn spec(driver: CgroupDriver, runtime: ContainerRuntime) -> PodCgroupSpec {
        PodCgroupSpec {
            parent: "obslab3.slice".into(),
            driver,
            runtime,
            pod_uid: UID.into(),
            container_id: "ab".repeat(32),
        }
    }

    #[test]
    fn systemd_containerd_shape() {
        let s = spec(CgroupDriver::Systemd, ContainerRuntime::Containerd);
        assert_eq!(
            s.container_path().unwrap(),
            PathBuf::from(format!(
                "obslab3.slice/kubepods.slice/kubepods-besteffort.slice/\
                 kubepods-besteffort-pod0d3c8a5e_1b2f_4c6d_9e8f_a1b2c3d4e5f6.slice/\
                 cri-containerd-{}.scope",
                "ab".repeat(32)
            ))
        );
        let levels = s.levels().unwrap();
        assert_eq!(levels.len(), 5);
        assert_eq!(levels[0], PathBuf::from("obslab3.slice"));
    }

    #[test]
    fn systemd_crio_shape() {
        let s = spec(CgroupDriver::Systemd, ContainerRuntime::CriO);
        let path = s.container_path().unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(name, format!("crio-{}.scope", "ab".repeat(32)));
    }

    #[test]
    fn cgroupfs_shape_keeps_the_uid_dashes() {
        let s = PodCgroupSpec {
            parent: "obslab3".into(),
            ..spec(CgroupDriver::Cgroupfs, ContainerRuntime::Containerd)
        };
        assert_eq!(
            s.container_path().unwrap(),
            PathBuf::from(format!(
                "obslab3/kubepods/besteffort/pod{UID}/{}",
                "ab".repeat(32)
            ))
        );
    }

    #[test]
    fn names_cannot_escape_the_parent() {
        let mut s = spec(CgroupDriver::Systemd, ContainerRuntime::Containerd);
        s.pod_uid = "../x".into();
        assert!(s.levels().is_err());
        s.pod_uid = UID.into();
        s.parent = String::new();
        assert!(s.levels().is_err());
    }

    #[test]
    fn container_ids_are_64_hex_and_differ() {
        let (a, b) = (random_container_id(), random_container_id());
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn guard_creates_places_and_removes() {
        if !crate::privileges::is_root() {
            return;
        }
        let Ok(mount) = v2_mount() else { return };
        let parent = format!("obsunit{}.slice", std::process::id());
        let spec = PodCgroupSpec::new(&parent, UID);
        let cg = PodCgroup::create(&mount, &spec, Leftovers::Kill).unwrap();
        let meta = std::fs::metadata(cg.path()).unwrap();
        assert_eq!(cg.id(), meta.ino());
        assert!(cg.path().ends_with(spec.container_path().unwrap()));
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        cg.add_pid(child.id() as i32).unwrap();
        assert_eq!(cg.pids(), vec![child.id() as i32]);
        drop(cg);
        assert!(child.wait().is_ok(), "killed and reaped");
        assert!(!mount.join(&parent).exists(), "removed up to the parent");
    }
}
