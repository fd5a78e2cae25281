//! Connectors on the real kernel: a process inside a kubelet-shaped pod
//! cgroup (systemd driver with containerd, cgroupfs driver with CRI-O's
//! naming) connects from a client namespace to a server namespace, and
//! every outcome the probe reports names that pod and container — also
//! when the failure completes in softirq (a SYN that times out on its
//! retransmit timer, while the connecting process sleeps), where the
//! current task is not the connector.

// A test states what it expects with expect/unwrap: a failure there is the
// test failing, with its message (the workspace denies them in runtime code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use observer::connector::CgroupResolver;
use observer::lab::cgroup::{
    CgroupDriver, ContainerRuntime, Leftovers, PodCgroup, PodCgroupSpec, place_on_exec,
    random_container_id, v2_mount,
};
use observer::probe::{ConnectRecord, FailureClass, Outcome, Probe, ProbeOptions};
use observer_tests::{Link, require_root};

const REFUSED: u16 = 9081;
const DROPPED: u16 = 9083;

/// A connect from a process in `cgroup`, run in the client namespace:
/// bash's `/dev/tcp` makes one blocking connect and exits.
fn connect_from_pod(cgroup: &PodCgroup, link: &Link, dst: SocketAddr) {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &link.client.name, "bash", "-c"])
        .arg(format!("exec 3<>/dev/tcp/{}/{}", dst.ip(), dst.port()));
    let _procs = place_on_exec(&mut cmd, &cgroup.path()).expect("cgroup.procs");
    let out = cmd.output().expect("bash");
    assert!(!out.status.success(), "nothing accepts on {dst}");
}

fn pod_cgroup(
    mount: &std::path::Path,
    driver: CgroupDriver,
    runtime: ContainerRuntime,
    uid: &str,
) -> PodCgroup {
    let spec = PodCgroupSpec {
        parent: "obs-connectors.slice".into(),
        driver,
        runtime,
        pod_uid: uid.into(),
        container_id: random_container_id(),
    };
    PodCgroup::create(mount, &spec, Leftovers::Kill).expect("pod cgroup")
}

#[test]
fn connects_from_pod_cgroups_name_their_pod_under_both_drivers() {
    require_root();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let _context = runtime.enter();
    let link = Link::create("conn", 61).expect("namespaces");
    // Short SYN retries in the client namespace only: a dropped SYN times
    // out in about 3 s, from the retransmit timer.
    link.client
        .exec(&["sysctl", "-q", "-w", "net.ipv4.tcp_syn_retries=1"])
        .expect("sysctl");
    link.drop_syns(DROPPED).expect("nft drop");
    let mount = v2_mount().expect("cgroup v2 mount");
    let systemd_uid = "2f9e0c4a-1b2d-4e6f-8a9b-0c1d2e3f4a5b";
    let cgroupfs_uid = "7a6b5c4d-3e2f-4a1b-9c8d-7e6f5a4b3c2d";
    let systemd = pod_cgroup(
        &mount,
        CgroupDriver::Systemd,
        ContainerRuntime::Containerd,
        systemd_uid,
    );
    let cgroupfs = pod_cgroup(
        &mount,
        CgroupDriver::Cgroupfs,
        ContainerRuntime::CriO,
        cgroupfs_uid,
    );
    eprintln!(
        "pod cgroups: {} and {}",
        systemd.path().display(),
        cgroupfs.path().display()
    );

    let mut probe = Probe::load(&ProbeOptions::default()).expect("probe loads (run as root)");
    let mut reader = probe.event_reader().expect("event reader");
    reader.resolve_connectors(CgroupResolver::discover().expect("resolver"));
    let server: IpAddr = link.server_v4;
    let refused = SocketAddr::new(server, REFUSED);
    let dropped = SocketAddr::new(server, DROPPED);

    // Blocking calls on their own threads; the reader keeps reading.
    let cases = [(&systemd, systemd_uid), (&cgroupfs, cgroupfs_uid)];
    let connecting = std::thread::scope(|scope| {
        let handles: Vec<_> = cases
            .iter()
            .map(|(cgroup, _)| {
                let link = &link;
                scope.spawn(move || {
                    connect_from_pod(cgroup, link, refused);
                    connect_from_pod(cgroup, link, dropped);
                })
            })
            .collect();
        let mut records: Vec<ConnectRecord> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let mut batch = Vec::new();
            runtime
                .block_on(reader.next_batch(Duration::from_millis(200), &mut batch))
                .expect("read");
            records.extend(batch);
            let failures = records
                .iter()
                .filter(|r| r.dst == refused || r.dst == dropped)
                .filter(|r| matches!(r.outcome, Outcome::Failed { .. }))
                .count();
            if failures >= 4 && handles.iter().all(|h| h.is_finished()) {
                break;
            }
        }
        for handle in handles {
            handle.join().expect("connects");
        }
        records
    });

    for (cgroup, uid) in cases {
        let container = cgroup.path();
        let container_id = container
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .expect("container dir");
        let mine: Vec<&ConnectRecord> = connecting
            .iter()
            .filter(|r| r.pod_uid.as_deref() == Some(uid))
            .collect();
        let class_of = |dst: SocketAddr| {
            mine.iter()
                .find(|r| r.dst == dst)
                .and_then(|r| r.failure_class())
        };
        assert_eq!(
            class_of(refused),
            Some(FailureClass::Refused),
            "{uid}: a refused connect names the pod: {connecting:#?}"
        );
        assert_eq!(
            class_of(dropped),
            Some(FailureClass::TimedOut),
            "{uid}: a timeout (retransmit timer, softirq) names the pod: {connecting:#?}"
        );
        for record in &mine {
            assert_eq!(record.cgroup_id, cgroup.id(), "the socket's own cgroup");
            let id = record.container_id.as_deref().expect("a container id");
            assert!(
                id.len() == 64 && container_id.contains(id),
                "{record:?} in {container_id}"
            );
            // Nobody watches these destinations: errors the kernel found
            // in softirq name the pod (the socket's cgroup), not a process.
            assert!(
                record.comm == "bash" || (record.pid == 0 && record.comm.is_empty()),
                "{record:?}"
            );
        }
    }
    drop(probe);
}
