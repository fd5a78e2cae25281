//! The subcommands the binary offers follow its features: the shipped
//! image is built without `lab`, and must not offer a command it lacks.

// A test states what it expects with expect/unwrap: a failure there is the
// test failing, with its message (the workspace denies them in runtime code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_observer");

fn observer(args: &[&str]) -> (bool, String) {
    let output = Command::new(BIN).args(args).output().expect("run observer");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

fn lists_command(help: &str, name: &str) -> bool {
    help.lines()
        .any(|line| line.split_whitespace().next() == Some(name))
}

#[test]
fn help_lists_lab_exactly_when_built_with_it() {
    let (ok, help) = observer(&["--help"]);
    assert!(ok, "{help}");
    for always in ["trace", "agent", "tui", "record", "replay"] {
        assert!(lists_command(&help, always), "{always} missing:\n{help}");
    }
    let with_lab = cfg!(feature = "lab");
    assert_eq!(lists_command(&help, "lab"), with_lab, "{help}");
    assert_eq!(help.contains("observer lab"), with_lab, "{help}");

    let (ok, text) = observer(&["lab", "--help"]);
    assert_eq!(ok, with_lab, "{text}");
    if !with_lab {
        assert!(text.contains("unrecognized subcommand 'lab'"), "{text}");
    }
}
