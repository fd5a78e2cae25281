//! Boots a guest under qemu and reads its serial console: the test output,
//! and one `OBSERVER-VM end <test> <exit code>` line per test binary.
//!
//! TCG (software emulation) is the default: KVM guests hang on this machine
//! kind, and TCG is the only way to run an aarch64 guest on an x86_64 host.
//! `--kvm` uses KVM where it works.

use std::{
    fs::File,
    io::{BufRead as _, BufReader, Write as _},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{Arch, guest::Guest};
use crate::cmd::describe;

/// What a guest run gave: per test binary, its exit code (None: it never
/// finished), and whether the guest reached the end of its list.
pub struct Outcome {
    pub kernel_release: Option<String>,
    pub results: Vec<(String, Option<i32>)>,
    pub finished: bool,
}

impl Outcome {
    /// Whether the guest stopped before its init printed the kernel, so
    /// before any test binary or any of the project's code ran.
    pub fn died_booting(&self) -> bool {
        self.kernel_release.is_none() && self.results.is_empty() && !self.finished
    }
}

/// The last `lines` lines of a console log, indented, to print where a
/// guest failed (CI keeps only what was printed).
pub fn console_tail(console_log: &Path, lines: usize) -> String {
    match std::fs::read_to_string(console_log) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..]
                .iter()
                .map(|line| format!("  console: {line}"))
                .collect::<Vec<_>>()
                .join("\n")
        }
        Err(err) => format!("  (cannot read {}: {err})", console_log.display()),
    }
}

pub struct BootOptions<'a> {
    pub kvm: bool,
    pub timeout: Duration,
    /// The whole console output is written here.
    pub console_log: &'a Path,
    /// Echo every console line (otherwise only results and failures).
    pub verbose: bool,
}

pub fn boot(arch: Arch, guest: &Guest, options: &BootOptions) -> anyhow::Result<Outcome> {
    let mut cmd = Command::new(arch.qemu());
    if arch == Arch::Aarch64 {
        // cortex-a72: `max` adds pointer authentication, which TCG emulates
        // slowly and the probe does not need.
        cmd.args(["-machine", "virt", "-cpu", "cortex-a72"]);
    } else {
        cmd.args(["-cpu", "max"]);
    }
    cmd.args(["-accel", if options.kvm { "kvm" } else { "tcg" }])
        .args(["-m", "2048", "-smp", "2"])
        .arg("-kernel")
        .arg(&guest.kernel_image)
        .arg("-initrd")
        .arg(&guest.initramfs)
        .arg("-append")
        .arg(format!(
            // loglevel=5: an oops's registers and call trace are logged at
            // the default level (4), which a lower setting leaves off the
            // console.
            "console={} panic=-1 quiet loglevel=5",
            arch.console()
        ))
        .args(["-display", "none", "-serial", "stdio", "-monitor", "none"])
        .args(["-nic", "none", "-no-reboot"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    println!("+ {}", describe(&cmd));
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", arch.qemu()))?;
    let stdout = child.stdout.take().context("qemu's stdout")?;
    let (lines_tx, lines_rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });

    let mut log = File::create(options.console_log)
        .with_context(|| format!("creating {}", options.console_log.display()))?;
    let mut outcome = Outcome {
        kernel_release: None,
        results: Vec::new(),
        finished: false,
    };
    let deadline = Instant::now() + options.timeout;
    let mut timed_out = false;
    loop {
        match lines_rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                let line = line.trim_end_matches('\r').to_string();
                writeln!(log, "{line}")
                    .with_context(|| format!("writing {}", options.console_log.display()))?;
                let shown = read_line(&line, &mut outcome);
                if options.verbose || shown {
                    println!("  guest: {line}");
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if Instant::now() > deadline {
            timed_out = true;
            let _ = child.kill();
            break;
        }
    }
    let status = child.wait().context("waiting for qemu")?;
    if timed_out {
        println!(
            "vm-test: the guest did not finish within {:?}; stopped it",
            options.timeout
        );
    } else if !status.success() {
        let mut stderr = String::new();
        if let Some(mut err) = child.stderr.take() {
            use std::io::Read as _;
            let _ = err.read_to_string(&mut stderr);
        }
        bail!("{} failed with {status}: {}", arch.qemu(), stderr.trim());
    }
    Ok(outcome)
}

/// Reads one console line into `outcome`; true when the line is worth
/// showing without `--verbose` (results, test failures, panics).
fn read_line(line: &str, outcome: &mut Outcome) -> bool {
    if let Some(rest) = line.strip_prefix("OBSERVER-VM kernel ") {
        outcome.kernel_release = rest.split_whitespace().next().map(str::to_string);
        return true;
    }
    if let Some(rest) = line.strip_prefix("OBSERVER-VM end ") {
        let mut parts = rest.split_whitespace();
        if let (Some(name), Some(code)) = (parts.next(), parts.next()) {
            outcome
                .results
                .push((name.to_string(), code.parse::<i32>().ok()));
        }
        return true;
    }
    if line == "OBSERVER-VM done" {
        outcome.finished = true;
        return false;
    }
    line.starts_with("test result:")
        || line.contains("FAILED")
        || line.contains("panicked")
        || line.starts_with("OBSERVER-VM begin")
        || line.contains("Kernel panic")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_lines_become_results() {
        let mut outcome = Outcome {
            kernel_release: None,
            results: Vec::new(),
            finished: false,
        };
        for line in [
            "[    0.000000] Linux version 6.1.0-57-cloud-amd64",
            "OBSERVER-VM kernel 6.1.0-57-cloud-amd64 x86_64",
            "OBSERVER-VM begin probe_ring",
            "test result: ok. 1 passed; 0 failed",
            "OBSERVER-VM end probe_ring 0",
            "OBSERVER-VM end probe_outcomes 101",
            "OBSERVER-VM done",
        ] {
            read_line(line, &mut outcome);
        }
        assert_eq!(
            outcome.kernel_release.as_deref(),
            Some("6.1.0-57-cloud-amd64")
        );
        assert_eq!(
            outcome.results,
            vec![
                ("probe_ring".to_string(), Some(0)),
                ("probe_outcomes".to_string(), Some(101))
            ]
        );
        assert!(outcome.finished);
    }

    #[test]
    fn only_a_guest_that_never_reached_its_init_died_booting() {
        let read = |lines: &[&str]| {
            let mut outcome = Outcome {
                kernel_release: None,
                results: Vec::new(),
                finished: false,
            };
            for line in lines {
                read_line(line, &mut outcome);
            }
            outcome
        };
        let panic = "[    4.414929] Kernel panic - not syncing: Fatal exception in interrupt";
        assert!(read(&[panic]).died_booting());
        assert!(read(&[]).died_booting());
        let in_tests = read(&[
            "OBSERVER-VM kernel 6.12.118+deb12-cloud-amd64 x86_64",
            "OBSERVER-VM begin probe_ring",
            panic,
        ]);
        assert!(!in_tests.died_booting());
    }
}
