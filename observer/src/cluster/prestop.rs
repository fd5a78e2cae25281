//! What a container's preStop hook does, reduced to the one thing the
//! propagation gap is compared against: how long it holds the container
//! alive before SIGTERM.
//!
//! Shell forms are parsed only as far as the leading `sleep`: most real
//! hooks are `sleep N`, often followed by a graceful-quit command
//! (`sleep 5 && nginx -s quit`), and only the sleep delays SIGTERM
//! predictably.

use std::time::Duration;

use k8s_openapi::api::core::v1::LifecycleHandler;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::{Deserialize, Serialize};

/// The configured preStop hook of one container.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PreStop {
    /// No preStop hook: SIGTERM is sent as soon as termination starts.
    #[default]
    None,
    /// The native `lifecycle.preStop.sleep.seconds` action.
    Sleep { seconds: i64 },
    /// An exec hook. `leading_sleep_ms` is set when the command starts with
    /// a bounded `sleep` (in any common shell form); `program` is the
    /// basename of the executable, for display.
    Exec {
        program: String,
        leading_sleep_ms: Option<u64>,
    },
    /// An httpGet hook; how long it takes is up to the application.
    HttpGet { path: Option<String>, port: String },
    /// A tcpSocket hook (deprecated by Kubernetes, still accepted).
    TcpSocket,
}

impl PreStop {
    /// Reduces a container's `lifecycle.preStop` to a [`PreStop`].
    pub fn from_handler(handler: Option<&LifecycleHandler>) -> PreStop {
        let Some(handler) = handler else {
            return PreStop::None;
        };
        if let Some(sleep) = &handler.sleep {
            return PreStop::Sleep {
                seconds: sleep.seconds,
            };
        }
        if let Some(exec) = &handler.exec {
            let command = exec.command.as_deref().unwrap_or_default();
            return PreStop::Exec {
                program: command
                    .first()
                    .map(|c| basename(c).to_owned())
                    .unwrap_or_default(),
                leading_sleep_ms: leading_sleep(command).map(|d| d.as_millis() as u64),
            };
        }
        if let Some(http) = &handler.http_get {
            let port = match &http.port {
                IntOrString::Int(n) => n.to_string(),
                IntOrString::String(s) => s.clone(),
            };
            return PreStop::HttpGet {
                path: http.path.clone(),
                port,
            };
        }
        if handler.tcp_socket.is_some() {
            return PreStop::TcpSocket;
        }
        PreStop::None
    }

    /// How long the hook is known to delay SIGTERM, when it is a sleep.
    pub fn sleep(&self) -> Option<Duration> {
        match self {
            PreStop::Sleep { seconds } => Some(Duration::from_secs((*seconds).max(0) as u64)),
            PreStop::Exec {
                leading_sleep_ms: Some(ms),
                ..
            } => Some(Duration::from_millis(*ms)),
            _ => None,
        }
    }
}

const SHELLS: &[&str] = &["sh", "bash", "ash", "dash", "zsh", "ksh"];

/// Commands that commonly precede the sleep in a hook script and do not
/// delay anything themselves.
const PREAMBLE: &[&str] = &["set", "echo", "true", ":", "printf"];

/// The bounded sleep an exec command starts with, if any.
pub fn leading_sleep(command: &[String]) -> Option<Duration> {
    let mut args: Vec<&str> = command.iter().map(String::as_str).collect();
    // `busybox sleep 5`, `/usr/bin/env sleep 5`
    while let Some(first) = args.first() {
        if matches!(basename(first), "busybox" | "env" | "exec") {
            args.remove(0);
        } else {
            break;
        }
    }
    let first = *args.first()?;
    if args.len() == 1 && first.contains(char::is_whitespace) {
        // command: ["sleep 5s"] — a one-element script.
        return script_leading_sleep(first);
    }
    let program = basename(first);
    if program == "sleep" {
        return sleep_args(&args[1..]);
    }
    if SHELLS.contains(&program) {
        // The script is the argument after the first flag containing `c`
        // (`-c`, `-ec`, `-lc`, `-euc`).
        let flag = args
            .iter()
            .position(|a| a.starts_with('-') && !a.starts_with("--") && a.contains('c'))?;
        return script_leading_sleep(args.get(flag + 1)?);
    }
    None
}

/// The leading sleep of a shell script, skipping harmless preamble
/// commands (`set -e; echo draining; sleep 10 && nginx -s quit`).
fn script_leading_sleep(script: &str) -> Option<Duration> {
    for command in split_commands(script) {
        let words: Vec<String> = command.split_whitespace().map(unquote).collect();
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        let Some(first) = words.first() else {
            continue;
        };
        let mut rest = &words[..];
        if *first == "exec" {
            rest = &rest[1..];
        }
        let Some(program) = rest.first() else {
            continue;
        };
        match basename(program) {
            "sleep" => return sleep_args(&rest[1..]),
            p if PREAMBLE.contains(&p) => continue,
            _ => return None,
        }
    }
    None
}

/// Splits a script at `;`, `&&`, `||`, `|`, `&` and newlines. Quoting is
/// not interpreted: a separator inside quotes only ends the search early,
/// which errs towards "no sleep found".
fn split_commands(script: &str) -> impl Iterator<Item = &str> {
    script
        .split([';', '&', '|', '\n'])
        .map(str::trim)
        .filter(|c| !c.is_empty())
}

fn unquote(word: &str) -> String {
    word.trim_matches(|c| c == '"' || c == '\'').to_owned()
}

/// GNU sleep sums its arguments (`sleep 1m 30s`); a non-duration argument
/// makes the whole sleep unknown, as the command would fail.
fn sleep_args(args: &[&str]) -> Option<Duration> {
    if args.is_empty() {
        return None;
    }
    let mut total = Duration::ZERO;
    for arg in args {
        total = total.checked_add(parse_sleep_duration(arg)?)?;
    }
    Some(total)
}

/// Parses `5`, `5s`, `0.5`, `2m`, `1h`, `1d` as sleep(1) does. `infinity`
/// is not a bounded sleep and yields `None`.
pub fn parse_sleep_duration(arg: &str) -> Option<Duration> {
    let arg = arg.trim();
    let (number, unit) = match arg.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => (&arg[..i], c),
        _ => (arg, 's'),
    };
    let scale = match unit {
        's' => 1.0,
        'm' => 60.0,
        'h' => 3600.0,
        'd' => 86_400.0,
        _ => return None,
    };
    if number.is_empty() || !number.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return None;
    }
    let value: f64 = number.parse().ok()?;
    let seconds = value * scale;
    if !seconds.is_finite() || seconds < 0.0 || seconds > 1e12 {
        return None;
    }
    Some(Duration::from_secs_f64(seconds))
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(parts: &[&str]) -> Vec<String> {
        parts.iter().map(|s| s.to_string()).collect()
    }

    fn secs(parts: &[&str]) -> Option<f64> {
        leading_sleep(&cmd(parts)).map(|d| d.as_secs_f64())
    }

    #[test]
    fn plain_sleep_forms() {
        assert_eq!(secs(&["sleep", "5"]), Some(5.0));
        assert_eq!(secs(&["/bin/sleep", "5"]), Some(5.0));
        assert_eq!(secs(&["/usr/bin/sleep", "15s"]), Some(15.0));
        assert_eq!(secs(&["sleep", "1m", "30s"]), Some(90.0));
        assert_eq!(secs(&["sleep", "0.5"]), Some(0.5));
        assert_eq!(secs(&["busybox", "sleep", "3"]), Some(3.0));
        assert_eq!(secs(&["sleep 5s"]), Some(5.0));
    }

    #[test]
    fn shell_forms() {
        assert_eq!(secs(&["sh", "-c", "sleep 5"]), Some(5.0));
        assert_eq!(
            secs(&["/bin/sh", "-c", "sleep 5 && nginx -s quit"]),
            Some(5.0)
        );
        assert_eq!(
            secs(&["/bin/bash", "-ec", "sleep 20; kill -QUIT 1"]),
            Some(20.0)
        );
        assert_eq!(
            secs(&["sh", "-c", "set -e; echo draining; sleep 10"]),
            Some(10.0)
        );
        assert_eq!(secs(&["sh", "-c", "exec sleep \"7\""]), Some(7.0));
        assert_eq!(secs(&["/bin/sh", "-c", "\nsleep 2\n"]), Some(2.0));
    }

    #[test]
    fn not_a_bounded_sleep() {
        assert_eq!(secs(&["sleep", "infinity"]), None);
        assert_eq!(secs(&["sleep"]), None);
        assert_eq!(secs(&["nginx", "-s", "quit"]), None);
        assert_eq!(secs(&["sh", "-c", "nginx -s quit; sleep 5"]), None);
        assert_eq!(secs(&["sh", "sleep 5"]), None);
        assert_eq!(secs(&[]), None);
        assert_eq!(secs(&["sleep", "-5"]), None);
        assert_eq!(secs(&["sleep", "5x"]), None);
    }

    #[test]
    fn handler_forms() {
        let native: LifecycleHandler =
            serde_json::from_value(serde_json::json!({"sleep": {"seconds": 12}}))
                .expect("valid handler");
        assert_eq!(
            PreStop::from_handler(Some(&native)),
            PreStop::Sleep { seconds: 12 }
        );
        let http: LifecycleHandler = serde_json::from_value(
            serde_json::json!({"httpGet": {"path": "/drain", "port": "http"}}),
        )
        .expect("valid handler");
        assert_eq!(
            PreStop::from_handler(Some(&http)),
            PreStop::HttpGet {
                path: Some("/drain".into()),
                port: "http".into()
            }
        );
        assert_eq!(PreStop::from_handler(None), PreStop::None);
        assert_eq!(
            PreStop::Sleep { seconds: 12 }.sleep(),
            Some(Duration::from_secs(12))
        );
    }
}
