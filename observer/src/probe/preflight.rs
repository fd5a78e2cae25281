//! Checks, before loading anything, that this process may load and attach
//! the probe, and says exactly what is missing and how to grant it.

use std::fs;

use thiserror::Error;

pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

#[derive(Debug, Error)]
pub enum PreflightError {
    #[error(
        "missing capabilities: {missing}. observer loads eBPF programs (CAP_BPF) and attaches \
         them to tracepoints (CAP_PERFMON). Run it as root, or grant them: \
         `sudo setcap cap_bpf,cap_perfmon+ep $(command -v observer)`; \
         in Kubernetes add them to securityContext.capabilities.add"
    )]
    Capabilities { missing: String },
}

/// The effective capability set of this process.
pub fn effective_capabilities() -> u64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| parse_cap_eff(&status))
        .unwrap_or(0)
}

/// Parses the `CapEff:` line of /proc/PID/status.
pub fn parse_cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

/// Names the capabilities in `needed` that `effective` lacks.
pub fn missing_capabilities(effective: u64) -> Vec<&'static str> {
    let has = |cap: u32| effective & (1u64 << cap) != 0;
    let mut missing = Vec::new();
    if !has(CAP_BPF) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) {
        missing.push("CAP_PERFMON");
    }
    missing
}

/// Fails with a message naming every missing capability.
pub fn check_capabilities() -> Result<(), PreflightError> {
    let missing = missing_capabilities(effective_capabilities());
    if missing.is_empty() {
        Ok(())
    } else {
        Err(PreflightError::Capabilities {
            missing: missing.join(", "),
        })
    }
}

/// Raises RLIMIT_MEMLOCK: kernels before 5.11 charge BPF maps to it.
pub fn raise_memlock_limit() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: `rlim` is a valid rlimit that outlives the call.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) };
    if rc != 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "could not raise RLIMIT_MEMLOCK (only matters before Linux 5.11)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cap_eff_line() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(parse_cap_eff(status), Some(0x1ff_ffff_ffff));
        assert_eq!(parse_cap_eff("Name: x\n"), None);
    }

    #[test]
    fn names_each_missing_capability() {
        assert_eq!(missing_capabilities(0), vec!["CAP_BPF", "CAP_PERFMON"]);
        assert_eq!(missing_capabilities(1 << CAP_BPF), vec!["CAP_PERFMON"]);
        assert!(missing_capabilities((1 << CAP_BPF) | (1 << CAP_PERFMON)).is_empty());
    }

    #[test]
    fn capability_error_says_how_to_grant() {
        let msg = PreflightError::Capabilities {
            missing: "CAP_PERFMON".into(),
        }
        .to_string();
        assert!(msg.contains("CAP_PERFMON"));
        assert!(msg.contains("setcap"));
        assert!(msg.contains("securityContext"));
    }
}
