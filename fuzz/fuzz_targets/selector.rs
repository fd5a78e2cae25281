//! Label selectors as a user writes them (`--ingress-selector`) and as the
//! simulator receives them (`labelSelector`), matched against arbitrary
//! labels.
//!
//! Besides not panicking: a selector that parses prints as text that
//! parses to the same selector, and matching never depends on more than
//! the labels.
#![no_main]

use std::collections::BTreeMap;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use observer_selector::LabelSelector;

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    selector: &'a str,
    labels: Vec<(&'a str, &'a str)>,
}

fuzz_target!(|input: Input| {
    let Ok(selector) = LabelSelector::parse(input.selector) else {
        return;
    };
    let printed = selector.to_string();
    let again = LabelSelector::parse(&printed).expect("a printed selector parses");
    assert_eq!(
        again, selector,
        "{printed:?} parses to what it was printed from"
    );
    let labels: BTreeMap<String, String> = input
        .labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let matched = selector.matches(&labels);
    assert_eq!(
        matched,
        selector.matches_with(|k| labels.get(k).map(String::as_str)),
        "both ways of matching agree"
    );
    if selector.is_empty() {
        assert!(matched, "the empty selector matches everything");
    }
});
