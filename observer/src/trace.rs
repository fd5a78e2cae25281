//! The lines `observer trace` prints: one connect record as one line of
//! text.

use crate::{
    clock::WallClock,
    probe::{ConnectRecord, Outcome},
};

fn ms(ns: u64) -> String {
    format!("{:.3} ms", ns as f64 / 1e6)
}

/// Whether `observer trace` prints `record`: to one of `ports` (any when
/// empty), and a failure unless `failures_only` is off.
pub fn shown(record: &ConnectRecord, ports: &[u16], failures_only: bool) -> bool {
    if !ports.is_empty() && !ports.contains(&record.dst.port()) {
        return false;
    }
    match record.outcome {
        // A pod on this node dropping or refusing what arrives is a
        // failure seen from the receiving side.
        Outcome::Failed { .. } | Outcome::Dropped { .. } => true,
        // Successes only reach user space for watched destinations.
        Outcome::Connect
        | Outcome::Established { .. }
        | Outcome::Sent { .. }
        | Outcome::Accepted
        | Outcome::Received { .. } => !failures_only,
    }
}

/// One human-readable line for a record.
pub fn format_line(clock: &WallClock, record: &ConnectRecord) -> String {
    let (what, detail) = match &record.outcome {
        Outcome::Connect => ("connect".to_string(), String::new()),
        Outcome::Sent { last_send } => (
            "closed".to_string(),
            format!(
                "last sent {} before",
                ms(record.ts.saturating_since(*last_send).as_nanos() as u64)
            ),
        ),
        Outcome::Accepted => ("accepted".to_string(), "by the pod".to_string()),
        Outcome::Received { last_arrival } => (
            "received".to_string(),
            format!(
                "closed; data last arrived {} before",
                ms(record.ts.saturating_since(*last_arrival).as_nanos() as u64)
            ),
        ),
        Outcome::Dropped {
            reason,
            opens_connection,
        } => {
            let what = if record.refused_by_pod() {
                "refused_by_pod"
            } else {
                "dropped"
            };
            let packet = if *opens_connection {
                "a SYN"
            } else {
                "a packet"
            };
            (what.to_string(), format!("{packet} ({})", reason.as_str()))
        }
        Outcome::Established { latency_ns } => (
            "established".to_string(),
            format!("after {}", ms(*latency_ns)),
        ),
        Outcome::Failed {
            class,
            errno,
            waited_ns,
            synchronous,
        } => {
            let mut detail = if record.count > 1 {
                // A storm the kernel counted: the latest of them waited so.
                format!(
                    "{} failures counted, the latest after {}",
                    record.count,
                    ms(*waited_ns)
                )
            } else {
                format!("after {}", ms(*waited_ns))
            };
            if *errno != 0 {
                detail.push_str(&format!(" (errno {errno})"));
            }
            if *synchronous {
                detail.push_str(" before any SYN");
            }
            (class.as_str().to_string(), detail)
        }
    };
    let mut process = if record.pid == 0 {
        "pid ?".to_string()
    } else {
        format!("pid {} ({})", record.pid, record.comm)
    };
    if let Some(uid) = &record.pod_uid {
        process.push_str(&format!(" pod {uid}"));
    }
    format!(
        "{}  {:<16} {} -> {}  {}  {}",
        clock.format(record.ts),
        what,
        record.src,
        record.dst,
        process,
        detail
    )
    .trim_end()
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::MonoTime;
    use crate::probe::FailureClass;

    fn refused() -> ConnectRecord {
        ConnectRecord {
            ts: MonoTime(2_500_000),
            syn: Some(MonoTime(2_000_000)),
            src: "10.0.0.1:40000".parse().unwrap(),
            dst: "10.0.0.2:8080".parse().unwrap(),
            pid: 42,
            tid: 42,
            comm: "nginx".into(),
            cgroup_id: 0,
            pod_uid: None,
            container_id: None,
            retry: false,
            retried: None,
            count: 1,
            watched: false,
            outcome: Outcome::Failed {
                class: FailureClass::Refused,
                errno: 111,
                waited_ns: 500_000,
                synchronous: false,
            },
        }
    }

    #[test]
    fn human_line_names_class_addresses_process_and_wait() {
        let clock = WallClock::new(MonoTime(0), 0);
        let line = format_line(&clock, &refused());
        assert_eq!(
            line,
            "00:00:00.002  refused          10.0.0.1:40000 -> 10.0.0.2:8080  pid 42 (nginx)  \
             after 0.500 ms (errno 111)"
        );
    }

    #[test]
    fn a_counted_storm_reads_as_a_count_without_a_process() {
        let clock = WallClock::new(MonoTime(0), 0);
        let mut storm = refused();
        storm.count = 5_000;
        storm.pid = 0;
        storm.src = "0.0.0.0:0".parse().unwrap();
        assert_eq!(
            format_line(&clock, &storm),
            "00:00:00.002  refused          0.0.0.0:0 -> 10.0.0.2:8080  pid ?  \
             5000 failures counted, the latest after 0.500 ms (errno 111)"
        );
    }

    #[test]
    fn filters_by_port_and_failures_only() {
        let mut record = refused();
        assert!(shown(&record, &[8080], true));
        record.outcome = Outcome::Established { latency_ns: 1 };
        assert!(!shown(&record, &[8080], true));
        assert!(shown(&record, &[8080], false));
        assert!(!shown(&record, &[9090], false));
        assert!(shown(&record, &[], false));
    }
}
