//! Whether this process runs as root: the lab, the benchmarks and the
//! privileged tests create namespaces and cgroups, which capabilities
//! alone do not cover here. (The probe itself needs only CAP_BPF and
//! CAP_PERFMON: `probe::preflight` checks those.)

use thiserror::Error;

/// Something needs root and this process is not.
#[derive(Debug, Error)]
#[error("{what} needs root: run it again with sudo (e.g. `sudo ./x test`)")]
pub struct RootRequired {
    pub what: String,
}

/// Whether the effective user is root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `Ok` as root; otherwise an error naming `what` needs it.
pub fn require_root(what: &str) -> Result<(), RootRequired> {
    if is_root() {
        Ok(())
    } else {
        Err(RootRequired {
            what: what.to_string(),
        })
    }
}
