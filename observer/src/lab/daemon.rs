//! A data plane's process (HAProxy, Caddy): started inside the ingress's
//! namespace and cgroup, registered for the lab's cleanup, and stopped
//! with SIGTERM (then SIGKILL) when dropped.

use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::cgroup::place_on_exec;
use super::netns::Registry;
use super::{LabError, Result};

/// How long a stopping process gets after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(3);

#[derive(Debug)]
pub(super) struct Daemon {
    child: Mutex<Child>,
    pid: i32,
    registry: Registry,
}

impl Daemon {
    /// Runs `cmd` (already `ip netns exec …`), inside `cgroup` when given;
    /// `what` names the program in errors.
    pub(super) fn spawn(
        mut cmd: Command,
        cgroup: Option<&Path>,
        registry: &Registry,
        what: &str,
    ) -> Result<Daemon> {
        let procs = cgroup
            .map(|cg| place_on_exec(&mut cmd, cg))
            .transpose()
            .map_err(|e| LabError::Invalid(format!("ingress pod cgroup: {e}")))?;
        let child = cmd
            .spawn()
            .map_err(LabError::io(format!("running {what}")))?;
        drop(procs);
        let pid = child.id() as i32;
        registry.add_pid(pid);
        Ok(Daemon {
            child: Mutex::new(child),
            pid,
            registry: registry.clone(),
        })
    }

    /// How it ended, once it has.
    fn exited(&self) -> Option<ExitStatus> {
        lock(&self.child).try_wait().ok().flatten()
    }

    /// Waits up to 10 s for `ready` (its control socket answering). An
    /// early exit is an error carrying what it printed to `error_log`.
    pub(super) fn wait_ready(
        &self,
        what: &str,
        error_log: &Path,
        ready: impl Fn() -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if ready() {
                return Ok(());
            }
            if let Some(status) = self.exited() {
                let errors = std::fs::read_to_string(error_log).unwrap_or_default();
                return Err(LabError::Invalid(format!(
                    "{what} exited at start ({status}): {}",
                    errors.trim()
                )));
            }
            if Instant::now() > deadline {
                return Err(LabError::Timeout(format!("{what}'s control socket")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let mut child = lock(&self.child);
        // SAFETY: kill(2) has no memory preconditions; `pid` is the
        // process this lab started and has not reaped yet.
        unsafe { libc::kill(self.pid, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        self.registry.forget_pid(self.pid);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
