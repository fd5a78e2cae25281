//! Recommendation math, verdict sentences and the YAML fragment.

use std::time::Duration;

use k8s_openapi::api::core::v1::PodSpec;
use kube::runtime::watcher::Event;

use super::*;
use crate::engine::recommend::{Group, nearest_rank, recommend};
use crate::engine::samples::{GroupKey, Sample, SampleFailures};

fn sample(gap_ms: i64, prestop_ms: Option<u64>, grace: Option<i64>) -> Sample {
    Sample {
        gap_ns: gap_ms * MS as i64,
        failures: SampleFailures::default(),
        served_after_deletion: 0,
        configured_prestop_ms: prestop_ms.map(|ms| u32::try_from(ms).expect("a test preStop")),
        termination_grace_period_seconds: grace
            .map(|seconds| u32::try_from(seconds).expect("a test grace period")),
        workload: Some("web".into()),
        container: Some("web".into()),
        from_arrivals: false,
    }
}

fn recommend_for(samples: &[Sample], config: &RecommendConfig) -> Recommendation {
    let key = GroupKey::Service {
        namespace: "shop".into(),
        service: "web".into(),
    };
    let refs: Vec<&Sample> = samples.iter().collect();
    recommend(
        &Group {
            key: &key,
            samples: &refs,
            ready_too_early: 0,
        },
        config,
    )
}

#[test]
fn nearest_rank_quantiles() {
    let ten: Vec<i64> = (1..=10).collect();
    let cases: &[(&[i64], f64, i64)] = &[
        (&ten, 0.5, 5),
        (&ten, 0.9, 9),
        (&ten, 0.99, 10),
        (&ten, 1.0, 10),
        (&ten, 0.0, 1),
        (&[7], 0.99, 7),
        (&[], 0.99, 0),
    ];
    for (values, q, want) in cases {
        assert_eq!(nearest_rank(values, *q), *want, "q={q} of {values:?}");
    }
}

#[test]
fn recommendation_math() {
    struct Case {
        name: &'static str,
        gaps_ms: Vec<i64>,
        config: RecommendConfig,
        used_max: bool,
        prestop: u64,
        grace: u64,
    }
    let default = RecommendConfig::default();
    let cases = vec![
        Case {
            // p99 of 0.1 … 10 s is 9.9 s; + 1 s = 10.9 → 11 s; + 5 s drain.
            name: "quantile with enough samples",
            gaps_ms: (1..=100).map(|i| i * 100).collect(),
            config: default.clone(),
            used_max: false,
            prestop: 11,
            grace: 16,
        },
        Case {
            name: "max below min_samples",
            gaps_ms: vec![300, 7_200, 1_000],
            config: default.clone(),
            used_max: true,
            prestop: 9,
            grace: 14,
        },
        Case {
            name: "an exact second is not rounded up further",
            gaps_ms: vec![2_000],
            config: default.clone(),
            used_max: true,
            prestop: 3,
            grace: 8,
        },
        Case {
            name: "margin and drain are configurable; drain rounds up",
            gaps_ms: vec![2_001],
            config: RecommendConfig {
                margin: Duration::from_millis(500),
                drain: Duration::from_millis(2_500),
                ..default.clone()
            },
            used_max: true,
            prestop: 3,
            grace: 6,
        },
        Case {
            name: "no connect after deletion: gap 0, margin only",
            gaps_ms: vec![0; 30],
            config: default.clone(),
            used_max: false,
            prestop: 1,
            grace: 6,
        },
    ];
    for case in cases {
        let samples: Vec<Sample> = case
            .gaps_ms
            .iter()
            .map(|g| sample(*g, None, None))
            .collect();
        let r = recommend_for(&samples, &case.config);
        assert_eq!(r.used_max, case.used_max, "{}", case.name);
        assert_eq!(r.recommended_prestop_seconds, case.prestop, "{}", case.name);
        assert_eq!(
            r.recommended_termination_grace_period_seconds, case.grace,
            "{}",
            case.name
        );
        assert_eq!(r.samples, case.gaps_ms.len(), "{}", case.name);
    }
    let hundred: Vec<Sample> = (1..=100).map(|i| sample(i * 100, None, None)).collect();
    let r = recommend_for(&hundred, &default);
    assert_eq!(
        (r.p50_ms, r.p90_ms, r.p99_ms, r.max_ms),
        (5_000.0, 9_000.0, 9_900.0, 10_000.0)
    );
    assert_eq!((r.quantile, r.margin_ms), (0.99, 1_000));
}

#[test]
fn verdict_compares_configuration_with_the_measurement() {
    let config = RecommendConfig {
        min_samples: 1,
        ..RecommendConfig::default()
    };
    let cases: &[(Option<u64>, Option<i64>, &[&str])] = &[
        (
            Some(5_000),
            Some(30),
            &[
                "preStop 5 s < p99 gap 7.2 s: expect refused connects; raise it to 9 s",
                "terminationGracePeriodSeconds 30 covers preStop 9 s + drain 5 s",
            ],
        ),
        (
            Some(7_500),
            Some(10),
            &[
                "preStop 7.5 s covers the p99 gap 7.2 s but not the 1 s margin: raise it to 9 s",
                "terminationGracePeriodSeconds 10 < preStop 9 s + drain 5 s: the app is killed before it finishes draining; set it to 14",
            ],
        ),
        (
            Some(30_000),
            None,
            &[
                "preStop 30 s covers the p99 gap 7.2 s; 9 s would do and end terminations 21 s sooner",
                "terminationGracePeriodSeconds 30 (the default) covers preStop 9 s + drain 5 s",
            ],
        ),
        (
            None,
            Some(30),
            &[
                "no preStop sleep configured but the p99 gap is 7.2 s: expect refused connects; set preStop to 9 s",
                "terminationGracePeriodSeconds 30 covers preStop 9 s + drain 5 s",
            ],
        ),
    ];
    for (prestop, grace, want) in cases {
        let mut s = sample(7_200, *prestop, *grace);
        s.failures = SampleFailures::of(&FailureCounts {
            refused: 3,
            timed_out: 1,
            ..FailureCounts::default()
        });
        let r = recommend_for(&[s], &config);
        let mut expected: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        expected.push("4 connects failed after termination began (3 refused, 1 timed_out)".into());
        assert_eq!(r.verdict, expected);
    }
    let few = recommend_for(&[sample(7_200, None, None)], &RecommendConfig::default());
    assert_eq!(
        few.verdict[0],
        "only 1 terminations measured (fewer than 20): the maximum gap is used instead of the p99"
    );
    assert!(
        few.verdict[1].contains("max gap is 7.2 s"),
        "{:?}",
        few.verdict
    );
}

#[test]
fn yaml_is_a_pod_spec_fragment_with_sleep_and_an_exec_alternative() {
    let r = recommend_for(
        &[sample(7_200, Some(5_000), Some(30))],
        &RecommendConfig::default(),
    );
    let spec: PodSpec = serde_saphyr::from_str(&r.yaml).expect("the YAML is a PodSpec");
    assert_eq!(spec.termination_grace_period_seconds, Some(14));
    assert_eq!(spec.containers.len(), 1);
    assert_eq!(spec.containers[0].name, "web");
    let pre_stop = spec.containers[0]
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
        .expect("preStop");
    assert_eq!(pre_stop.sleep.as_ref().map(|s| s.seconds), Some(9));

    // The commented alternative, uncommented, is a PodSpec too.
    let alternative: String = r
        .yaml
        .lines()
        .skip_while(|l| !l.starts_with("# Kubernetes < 1.30"))
        .skip(1)
        // The third form (the app delays SIGTERM itself) is prose.
        .take_while(|l| !l.starts_with("# No preStop hook possible"))
        .map(|l| format!("{}\n", l.strip_prefix("# ").unwrap_or(l)))
        .collect();
    let spec: PodSpec =
        serde_saphyr::from_str(&alternative).expect("the exec variant is a PodSpec");
    assert_eq!(spec.termination_grace_period_seconds, Some(14));
    let exec = spec.containers[0]
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
        .and_then(|p| p.exec.as_ref())
        .and_then(|e| e.command.clone());
    assert_eq!(exec, Some(vec!["sleep".to_string(), "9".to_string()]));
}

/// `n` terminations of distinct pods with gaps of 1 s, 2 s, … through the engine.
fn rollout(engine: &mut Engine, n: u64) {
    for i in 1..=n {
        let base = i * 100_000;
        let (name, uid, addr) = (format!("web-{i}"), format!("u{i}"), format!("10.0.1.{i}"));
        let dst = format!("{addr}:8080");
        let steps = vec![
            Step::Pod(base, Event::Apply(pod(&name, &uid, &addr, true, false))),
            Step::Slice(base, Event::Apply(slice(&[(&addr, &uid, true, false)]))),
            Step::Pod(
                base + 10_000,
                Event::Apply(pod(&name, &uid, &addr, true, true)),
            ),
            Step::Connect(syn(&dst, base + 10_000 + i * 1_000)),
            Step::Pod(
                base + 20_000,
                Event::Delete(pod(&name, &uid, &addr, false, true)),
            ),
            Step::Tick(base + 30_000),
        ];
        run(engine, steps);
    }
}

#[test]
fn recommendations_use_the_last_n_terminations_per_service_and_workload() {
    let mut engine = Engine::new(EngineConfig {
        recommend: RecommendConfig {
            window: 3,
            ..RecommendConfig::default()
        },
        ..ingress_nginx()
    });
    rollout(&mut engine, 5);
    let recs = engine.recommendations();
    let groups: Vec<(Option<&str>, Option<&str>, usize, f64)> = recs
        .iter()
        .map(|r| {
            (
                r.service.as_deref(),
                r.workload.as_deref(),
                r.samples,
                r.max_ms,
            )
        })
        .collect();
    assert_eq!(
        groups,
        [
            (Some("web"), Some("web"), 3, 5_000.0),
            (None, Some("web"), 3, 5_000.0)
        ]
    );
    // Max 5 s (3 < min_samples) + 1 s margin = 6 s; configured `sleep 5`.
    let r = &recs[0];
    assert_eq!(r.recommended_prestop_seconds, 6);
    assert_eq!(r.configured_prestop_seconds, Some(5.0));
    assert!(
        r.verdict.contains(
            &"preStop 5 s covers the max gap 5 s but not the 1 s margin: raise it to 6 s"
                .to_string()
        ),
        "{:#?}",
        r.verdict
    );
    assert_eq!(engine.snapshot(ms(1_000_000)).recent.len(), 5);
}
