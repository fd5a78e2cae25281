//! The real `observer lab --tui` binary under tmux: the screen shows a
//! measured propagation gap during the run, `q` leaves with the terminal
//! restored and the summary printed, and quitting mid-run removes
//! everything the lab made.

// A test states what it expects with expect/unwrap: a failure there is the
// test failing, with its message (the workspace denies them in runtime code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    process::{Command, Output},
    time::{Duration, Instant},
};

const BIN: &str = env!("CARGO_BIN_EXE_observer");

/// The namespaces `observer lab` makes (lab id 0); the dash keeps them
/// apart from the test labs' `obslab1-…`.
const LAB_PREFIX: &str = "obslab0-";

/// Both tests run the same lab (same namespaces): one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A private tmux server running one session. On drop (also when an
/// assertion failed) it first asks a still-running lab to stop with `q`,
/// which removes its namespaces, then kills the server.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(name: &str, command: &str) -> Tmux {
        let tmux = Tmux {
            socket: format!("observer-test-{name}-{}", std::process::id()),
        };
        let out = tmux.run(&[
            "new-session",
            "-d",
            "-s",
            "main",
            "-x",
            "100",
            "-y",
            "30",
            command,
        ]);
        assert!(
            out.status.success(),
            "tmux new-session: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tmux
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("run tmux (cargo xtask setup installs it)")
    }

    fn screen(&self) -> String {
        let out = self.run(&["capture-pane", "-p", "-t", "main"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn format(&self, format: &str) -> String {
        let out = self.run(&["display-message", "-p", "-t", "main", format]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn send(&self, key: &str) {
        let out = self.run(&["send-keys", "-t", "main", key]);
        assert!(out.status.success(), "tmux send-keys {key}");
    }

    /// Polls the screen until `done` holds; panics with the last screen.
    fn wait_for(&self, what: &str, timeout: Duration, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let screen = self.screen();
            if done(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}; the screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        if !lab_namespaces().is_empty() {
            let _ = self.run(&["send-keys", "-t", "main", "q"]);
            let deadline = Instant::now() + Duration::from_secs(60);
            while !lab_namespaces().is_empty() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        let _ = self.run(&["kill-server"]);
    }
}

fn require_root() {
    if let Err(error) = observer::privileges::require_root("the lab's TUI test") {
        panic!("{error}");
    }
}

fn lab_namespaces() -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(LAB_PREFIX))
        .map(str::to_string)
        .collect()
}

/// The lab command, then a marker with its exit code; the shell stays so
/// the pane can be read after the binary has gone.
fn lab_command(log: &std::path::Path) -> String {
    format!(
        "{BIN} lab --tui --pods 2 --rollouts 1 --propagation-delay 1s --qps 100 \
         --log-file {}; echo observer-exit=$?; sleep 600",
        log.display()
    )
}

/// The Overview row of the lab's service: `lab/web  TERM  P50 …`.
fn service_row(screen: &str) -> Option<&str> {
    screen.lines().find(|l| l.contains("lab/web"))
}

/// A gap in the row's P50 column, e.g. `1013ms`.
fn measured_gap_ms(row: &str) -> Option<u64> {
    // The first cell in ms after the name and the termination count (the
    // name may carry a view mark such as `[dst]`).
    row.split(|c: char| c.is_whitespace() || c == '│')
        .filter(|cell| !cell.is_empty())
        .find_map(|cell| cell.strip_suffix("ms"))
        .and_then(|ms| ms.parse().ok())
}

#[test]
fn lab_tui_shows_the_measured_gap_and_q_restores_the_terminal() {
    require_root();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("lab.log");
    let tmux = Tmux::start("gap", &lab_command(&log));

    let screen = tmux.wait_for(
        "a measured gap and the end of the lab run",
        Duration::from_secs(240),
        |s| s.contains("lab finished") && service_row(s).and_then(measured_gap_ms).is_some(),
    );
    let row = service_row(&screen).expect("service row");
    let gap = measured_gap_ms(row).expect("gap");
    // A 1 s propagation delay: the ingress keeps connecting for about that
    // long after the deletion, never less.
    assert!(
        (900..10_000).contains(&gap),
        "p50 gap {gap} ms for a 1 s delay: {row}"
    );
    assert_eq!(
        tmux.format("#{alternate_on}"),
        "1",
        "the TUI uses the alternate screen"
    );

    tmux.send("q");
    let screen = tmux.wait_for("observer to exit", Duration::from_secs(30), |s| {
        s.contains("observer-exit=")
    });
    assert!(screen.contains("observer-exit=0"), "exit status:\n{screen}");
    assert_eq!(tmux.format("#{alternate_on}"), "0", "alternate screen left");
    assert_eq!(tmux.format("#{cursor_flag}"), "1", "cursor shown again");
    assert!(
        screen.contains("recommendation: preStop sleep"),
        "the summary is printed after the TUI:\n{screen}"
    );
    assert!(
        !screen.contains("INFO") && !screen.contains("WARN"),
        "logs went to the terminal:\n{screen}"
    );
    let logged = std::fs::read_to_string(&log).expect("the log file");
    assert!(!logged.is_empty(), "logs go to --log-file");
    assert_eq!(lab_namespaces(), Vec::<String>::new(), "namespaces left");
}

#[test]
fn quitting_the_tui_mid_run_stops_the_lab_and_cleans_up() {
    require_root();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("temp dir");
    let tmux = Tmux::start("quit", &lab_command(&dir.path().join("lab.log")));

    tmux.wait_for("the lab's pods", Duration::from_secs(120), |_| {
        !lab_namespaces().is_empty()
    });
    tmux.wait_for("the Overview screen", Duration::from_secs(30), |s| {
        s.contains("Overview")
    });
    tmux.send("q");
    let screen = tmux.wait_for("observer to exit", Duration::from_secs(60), |s| {
        s.contains("observer-exit=")
    });
    assert!(screen.contains("observer-exit=0"), "exit status:\n{screen}");
    assert!(
        screen.contains("stopped from the TUI"),
        "says the run was stopped:\n{screen}"
    );
    assert_eq!(tmux.format("#{alternate_on}"), "0", "alternate screen left");
    assert_eq!(lab_namespaces(), Vec::<String>::new(), "namespaces left");
}
