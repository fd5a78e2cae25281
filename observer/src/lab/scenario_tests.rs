//! The scenario's settings checks.

use super::*;

#[test]
fn conflicting_or_impossible_settings_are_refused_with_a_reason() {
    let through_a_cluster_ip = LabScenario {
        ingress: IngressKind::External,
        via_service: true,
        ..LabScenario::default()
    };
    let error = through_a_cluster_ip.validate().expect_err("conflict");
    assert!(error.to_string().contains("--via-service"), "{error}");
    let too_often = LabScenario {
        ingress: IngressKind::External,
        lb_health_interval: Duration::from_millis(10),
        ..LabScenario::default()
    };
    let error = too_often.validate().expect_err("interval");
    assert!(error.to_string().contains("100 ms"), "{error}");
    let tries_shorter_than_one_wait = LabScenario {
        ingress: IngressKind::Caddy,
        lb_try_interval: Duration::from_secs(3),
        ..LabScenario::default()
    };
    let error = tries_shorter_than_one_wait.validate().expect_err("tries");
    assert!(error.to_string().contains("try duration"), "{error}");
    assert!(LabScenario::default().validate().is_ok());
}

#[test]
fn the_cluster_ip_and_the_load_balancer_link_stay_outside_the_pod_cidr() {
    for ipv6 in [false, true] {
        let scenario = LabScenario {
            ipv6,
            lab_id: 7,
            ..LabScenario::default()
        };
        let pods = super::super::measure::Subnet::parse(&scenario.pod_cidr()).expect("cidr");
        let (node_end, lb) = scenario.lb_link();
        for ip in [scenario.cluster_ip().ip(), node_end, lb] {
            assert!(!pods.contains(ip), "{ip} in {}", scenario.pod_cidr());
            assert_eq!(ip.is_ipv6(), ipv6);
        }
        assert_ne!(node_end, lb);
    }
}
