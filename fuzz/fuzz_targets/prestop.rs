//! The preStop reduction: exec commands in every shell form, sleep
//! arguments, and whole `lifecycle.preStop` handlers as JSON.
#![no_main]

use std::time::Duration;

use arbitrary::Arbitrary;
use k8s_openapi::api::core::v1::LifecycleHandler;
use libfuzzer_sys::fuzz_target;
use observer::cluster::PreStop;
use observer::cluster::prestop::{leading_sleep, parse_sleep_duration};

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    command: Vec<&'a str>,
    argument: &'a str,
    handler_json: &'a str,
}

/// The longest sleep a single argument may name (sleep(1) would take more,
/// but past this nothing is a preStop anyone meant).
const LONGEST_ARGUMENT: Duration = Duration::from_secs(1_000_000_000_000);

fuzz_target!(|input: Input| {
    if let Some(sleep) = parse_sleep_duration(input.argument) {
        assert!(
            sleep <= LONGEST_ARGUMENT,
            "{:?} -> {sleep:?}",
            input.argument
        );
    }
    let command: Vec<String> = input.command.iter().map(|s| (*s).to_owned()).collect();
    let _ = leading_sleep(&command);
    if let Ok(handler) = serde_json::from_str::<LifecycleHandler>(input.handler_json) {
        let pre_stop = PreStop::from_handler(Some(&handler));
        let _ = pre_stop.sleep();
        let json = serde_json::to_string(&pre_stop).expect("a PreStop encodes");
        let back: PreStop = serde_json::from_str(&json).expect("a PreStop decodes");
        assert_eq!(back, pre_stop);
    }
});
