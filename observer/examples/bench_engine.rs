//! Run by `cargo xtask bench engine` (release build): events per second through the pure
//! correlation engine on one thread, and its memory as events accumulate.
//!
//! The recording is synthetic and deterministic: a few hundred pods behind
//! one ingress, a rolling termination every 40 ms (simulated), each pod
//! receiving watched connects and refused connects while it terminates,
//! half of the addresses handed to a new pod before the window's quiet
//! period ends (IP reuse), and a sprinkling of failures to ready pods and
//! to addresses no pod owns. It is generated in chunks outside the timed
//! section, so the figure is the engine's alone and the recording's own
//! memory stays one chunk.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use observer::clock::MonoTime;
use observer::cluster::k8s_openapi::api::core::v1::Pod;
use observer::cluster::k8s_openapi::api::discovery::v1::EndpointSlice;
use observer::cluster::kube::runtime::watcher::Event;
use observer::cluster::{ResourceEvent, StampedEvent};
use observer::engine::{Engine, EngineConfig, Output};
use observer::probe::decode::{ConnectRecord, FailureClass, Outcome};
use serde_json::json;

const TOTAL_EVENTS: u64 = 10_000_000;
/// RSS is read after the first chunk that crosses each of these.
const MARKS: [u64; 3] = [1_000_000, 5_000_000, 10_000_000];
const CHUNK: usize = 65_536;
const PODS: u32 = 300;
/// Simulated time between two connect events.
const EVENT_SPACING_NS: u64 = 10_000;
const TERMINATION_EVERY: Duration = Duration::from_millis(40);
const TICK_EVERY: Duration = Duration::from_millis(100);

/// One input to the engine (as the agent's, unboxed: connects are
/// nearly every input).
#[allow(clippy::large_enum_variant)]
enum Input {
    Connect(ConnectRecord),
    Cluster(StampedEvent),
    Tick(MonoTime),
}

/// A pod slot: the pod currently in it and when its termination began.
struct Slot {
    generation: u32,
    ip: Ipv4Addr,
    terminating_since: Option<u64>,
}

/// Deterministic generator of the recording.
struct Recording {
    slots: Vec<Slot>,
    /// Cluster events due, by (time, sequence).
    due: BTreeMap<(u64, u64), StampedEvent>,
    seq: u64,
    now: u64,
    next_termination: u64,
    next_tick: u64,
    next_slot: usize,
    rng: u64,
    /// Slots terminating now, the targets of watched connects.
    active: Vec<usize>,
}

fn ns(d: Duration) -> u64 {
    d.as_nanos() as u64
}

fn pod_object(slot: usize, generation: u32, ip: Ipv4Addr, ready: bool, deleting: bool) -> Pod {
    let mut value = json!({
        "metadata": {
            "name": format!("web-{slot}-{generation}"), "namespace": "shop",
            "uid": format!("uid-{slot}-{generation}"),
            "labels": {"pod-template-hash": "abc12"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-abc12",
                                  "uid": "rs", "controller": true}]
        },
        "spec": {"containers": [{"name": "web", "ports": [{"containerPort": 8080}],
                                 "lifecycle": {"preStop": {"sleep": {"seconds": 5}}}}],
                 "terminationGracePeriodSeconds": 30},
        "status": {"phase": "Running", "podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}],
                   "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
    });
    if deleting {
        value["metadata"]["deletionTimestamp"] = json!("2026-03-02T09:01:47Z");
    }
    serde_json::from_value(value).unwrap_or_default()
}

fn slice_object(slot: usize, generation: u32, ip: Option<Ipv4Addr>, ready: bool) -> EndpointSlice {
    let endpoints: Vec<_> = ip
        .into_iter()
        .map(|ip| {
            json!({"addresses": [ip.to_string()],
                   "conditions": {"ready": ready, "serving": true, "terminating": !ready},
                   "targetRef": {"kind": "Pod", "namespace": "shop", "uid": format!("uid-{slot}-{generation}")}})
        })
        .collect();
    serde_json::from_value(json!({
        "addressType": "IPv4",
        "metadata": {"name": format!("web-{slot}"), "namespace": "shop",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "endpoints": endpoints,
        "ports": [{"port": 8080, "protocol": "TCP"}]
    }))
    .unwrap_or_default()
}

fn pod_event(at: u64, event: Event<Pod>) -> StampedEvent {
    StampedEvent {
        at: MonoTime(at),
        event: ResourceEvent::Pod(Box::new(event)),
    }
}

fn slice_event(at: u64, slice: EndpointSlice) -> StampedEvent {
    StampedEvent {
        at: MonoTime(at),
        event: ResourceEvent::EndpointSlice(Box::new(Event::Apply(slice))),
    }
}

impl Recording {
    fn new() -> Recording {
        let mut recording = Recording {
            slots: Vec::new(),
            due: BTreeMap::new(),
            seq: 0,
            now: ns(Duration::from_secs(1)),
            next_termination: ns(Duration::from_secs(2)),
            next_tick: 0,
            next_slot: 0,
            rng: 0x9e37_79b9_7f4a_7c15,
            active: Vec::new(),
        };
        for i in 0..PODS {
            let ip = Ipv4Addr::new(10, 1, (i / 250) as u8, (i % 250 + 1) as u8);
            let slot = i as usize;
            recording.slots.push(Slot {
                generation: 0,
                ip,
                terminating_since: None,
            });
            let t = recording.now;
            recording.schedule(
                t,
                pod_event(t, Event::Apply(pod_object(slot, 0, ip, true, false))),
            );
            recording.schedule(t, slice_event(t, slice_object(slot, 0, Some(ip), true)));
        }
        recording
    }

    fn random(&mut self) -> u64 {
        // xorshift64*: deterministic and cheap.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn schedule(&mut self, at: u64, event: StampedEvent) {
        self.seq += 1;
        self.due.insert((at, self.seq), event);
    }

    /// Starts terminating the next ready pod and schedules the rest of its
    /// life: slice update, removal, and its successor.
    fn terminate_next(&mut self) {
        let slot = self.next_slot;
        self.next_slot = (self.next_slot + 1) % self.slots.len();
        if self.slots[slot].terminating_since.is_some() {
            return;
        }
        let t = self.next_termination;
        let (generation, ip) = (self.slots[slot].generation, self.slots[slot].ip);
        self.slots[slot].terminating_since = Some(t);
        self.active.push(slot);
        let s = |secs: f64| t + (secs * 1e9) as u64;
        self.schedule(
            t,
            pod_event(
                t,
                Event::Apply(pod_object(slot, generation, ip, true, true)),
            ),
        );
        self.schedule(
            s(0.5),
            slice_event(s(0.5), slice_object(slot, generation, Some(ip), false)),
        );
        self.schedule(
            s(2.0),
            pod_event(
                s(2.0),
                Event::Delete(pod_object(slot, generation, ip, false, true)),
            ),
        );
        self.schedule(
            s(2.0),
            slice_event(s(2.0), slice_object(slot, generation, None, false)),
        );
        // Every other successor reuses the address before the quiet period
        // ends; the rest after the window closed.
        let next = generation + 1;
        let arrive = if generation.is_multiple_of(2) {
            s(3.0)
        } else {
            s(8.0)
        };
        self.schedule(
            arrive,
            pod_event(
                arrive,
                Event::Apply(pod_object(slot, next, ip, false, false)),
            ),
        );
        let ready = arrive + ns(Duration::from_secs(1));
        self.schedule(
            ready,
            pod_event(ready, Event::Apply(pod_object(slot, next, ip, true, false))),
        );
        self.schedule(
            ready,
            slice_event(ready, slice_object(slot, next, Some(ip), true)),
        );
    }

    fn connect(&mut self) -> ConnectRecord {
        let r = self.random();
        let t = self.now;
        let mut outcome = Outcome::Connect;
        let mut watched = true;
        let mut syn = None;
        let ip = if !self.active.is_empty() && r % 100 < 98 {
            let slot = self.active[(r >> 8) as usize % self.active.len()];
            let since = self.slots[slot].terminating_since.unwrap_or(t);
            // The app stops listening 1.5 s in: refused from then on.
            if t > since + ns(Duration::from_millis(1_500)) && r.is_multiple_of(4) {
                outcome = failure(FailureClass::Refused);
                syn = Some(MonoTime(t));
            } else if r % 2 == 1 {
                outcome = Outcome::Established {
                    latency_ns: 100_000,
                };
                syn = Some(MonoTime(t.saturating_sub(100_000)));
            }
            self.slots[slot].ip
        } else {
            watched = false;
            outcome = failure(FailureClass::TimedOut);
            syn = Some(MonoTime(t));
            if r.is_multiple_of(2) {
                Ipv4Addr::new(192, 0, 2, (r >> 16) as u8)
            } else {
                self.slots[(r >> 16) as usize % self.slots.len()].ip
            }
        };
        ConnectRecord {
            ts: MonoTime(t),
            syn,
            src: SocketAddr::new(
                IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
                40_000 + (r % 20_000) as u16,
            ),
            dst: SocketAddr::new(IpAddr::V4(ip), 8080),
            pid: 4242,
            tid: 4243,
            comm: "nginx".into(),
            cgroup_id: 1,
            pod_uid: None,
            container_id: None,
            retry: false,
            retried: None,
            count: 1,
            watched,
            outcome,
        }
    }

    /// Fills `chunk` with the next inputs; returns how many are events
    /// (connects and cluster events; ticks are not counted).
    fn fill(&mut self, chunk: &mut Vec<Input>) -> u64 {
        chunk.clear();
        let mut events = 0;
        while chunk.len() < CHUNK {
            self.now += EVENT_SPACING_NS;
            while self.next_termination <= self.now {
                self.terminate_next();
                self.next_termination += ns(TERMINATION_EVERY);
            }
            while let Some(entry) = self.due.first_entry() {
                if entry.key().0 > self.now {
                    break;
                }
                chunk.push(Input::Cluster(entry.remove()));
                events += 1;
            }
            let now = self.now;
            for slot in &mut self.slots {
                // Connects stop 3 s into a termination (the ingress caught up).
                if slot
                    .terminating_since
                    .is_some_and(|s| now > s + ns(Duration::from_secs(3)))
                {
                    slot.terminating_since = None;
                    slot.generation += 1;
                }
            }
            let slots = &self.slots;
            self.active
                .retain(|s| slots[*s].terminating_since.is_some());
            if self.next_tick <= self.now {
                chunk.push(Input::Tick(MonoTime(self.now)));
                self.next_tick = self.now + ns(TICK_EVERY);
            }
            let record = self.connect();
            chunk.push(Input::Connect(record));
            events += 1;
        }
        events
    }
}

fn failure(class: FailureClass) -> Outcome {
    Outcome::Failed {
        class,
        errno: 0,
        waited_ns: 0,
        synchronous: false,
    }
}

/// `VmRSS` / `VmHWM` of this process in KiB.
fn status_kib(field: &str) -> anyhow::Result<u64> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/self/status"))
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Prints the markdown table of figures on stdout.
fn main() -> anyhow::Result<()> {
    print!("{}", run()?);
    Ok(())
}

fn run() -> anyhow::Result<String> {
    let mut recording = Recording::new();
    let mut engine = Engine::new(EngineConfig::default());
    let mut chunk: Vec<Input> = Vec::with_capacity(CHUNK + 64);
    let mut out: Vec<Output> = Vec::new();
    let (mut events, mut engine_time, mut outputs) = (0u64, Duration::ZERO, 0u64);
    let mut rss_at: Vec<(u64, u64)> = Vec::new();
    while events < TOTAL_EVENTS {
        events += recording.fill(&mut chunk);
        let start = Instant::now();
        for input in chunk.drain(..) {
            match input {
                Input::Connect(record) => engine.on_connect(&record, &mut out),
                Input::Cluster(event) => engine.on_cluster(event, &mut out),
                Input::Tick(now) => engine.on_tick(now, &mut out),
            }
            // A live agent hands outputs on as they come; so does this.
            if out.len() > 1024 {
                outputs += out.len() as u64;
                out.clear();
            }
        }
        engine_time += start.elapsed();
        outputs += out.len() as u64;
        out.clear();
        if MARKS.get(rss_at.len()).is_some_and(|mark| events >= *mark) {
            rss_at.push((events, status_kib("VmRSS:")?));
        }
    }
    let peak = status_kib("VmHWM:")?;
    let rate = events as f64 / engine_time.as_secs_f64();
    let sizes = engine.sizes();
    let counters = engine.counters();
    let mut t = String::new();
    let _ = writeln!(t, "| figure | value |");
    let _ = writeln!(t, "|---|---|");
    let _ = writeln!(t, "| events (connects + cluster events) | {events} |");
    let _ = writeln!(
        t,
        "| engine time (one thread) | {:.2} s |",
        engine_time.as_secs_f64()
    );
    let _ = writeln!(t, "| **events/s** | **{:.2} million** |", rate / 1e6);
    let _ = writeln!(t, "| outputs emitted | {outputs} |");
    let _ = writeln!(
        t,
        "| terminations closed | {} |",
        counters.terminations_closed
    );
    for (after, kib) in &rss_at {
        let _ = writeln!(t, "| RSS after {after} events | {} |", mib(*kib));
    }
    let _ = writeln!(t, "| peak RSS (VmHWM) | {} |", mib(peak));
    let _ = writeln!(
        t,
        "| at the end: open windows / watched / replay buffer / pods in model | {} / {} / {} / {} |",
        sizes.open_windows, sizes.watched, sizes.replay, sizes.model_pods
    );
    Ok(t)
}
