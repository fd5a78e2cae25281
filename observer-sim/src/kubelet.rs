//! The kubelet's part of a pod's life: start, readiness, preStop, SIGTERM,
//! the grace deadline, and the final delete that frees the IP.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, PodCondition, PodIP, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until, timeout_at};

use super::cluster::{DeploymentSpec, LifecycleEvent, PodInfo, Shared};
use super::{StoreError, store::Store};

/// What ended a wait on the pod.
enum Wake {
    Timer,
    Terminating(Duration),
    Gone,
}

/// Waits until `until` (forever if None) unless the pod is marked for
/// deletion or removed first; reacts to the store, level-triggered.
async fn wait_pod(store: &Store, ns: &str, name: &str, until: Option<Instant>) -> Wake {
    let mut changes = store.subscribe();
    loop {
        changes.borrow_and_update();
        match store.get::<Pod>(ns, name) {
            None => return Wake::Gone,
            Some(p) if p.metadata.deletion_timestamp.is_some() => {
                let grace = p
                    .metadata
                    .deletion_grace_period_seconds
                    .unwrap_or(30)
                    .max(0);
                return Wake::Terminating(Duration::from_secs(grace.unsigned_abs()));
            }
            Some(_) => {}
        }
        tokio::select! {
            _ = sleep_until(until.unwrap_or_else(Instant::now)), if until.is_some() => return Wake::Timer,
            r = changes.changed() => if r.is_err() { return Wake::Gone },
        }
    }
}

/// Read-modify-write of a pod's status, retried on conflicts with other writers.
fn set_status(
    store: &Store,
    ns: &str,
    name: &str,
    f: impl Fn(&mut PodStatus),
) -> Result<(), StoreError> {
    loop {
        let Some(mut pod) = store.get::<Pod>(ns, name) else {
            return Ok(());
        };
        f(pod.status.get_or_insert_with(Default::default));
        match store.update(pod) {
            Err(StoreError::Conflict { .. }) => continue,
            Err(StoreError::NotFound { .. }) => return Ok(()),
            other => return other.map(|_| ()),
        }
    }
}

pub(super) fn condition(type_: &str, on: bool) -> PodCondition {
    PodCondition {
        type_: type_.into(),
        status: if on { "True" } else { "False" }.into(),
        last_transition_time: Some(Time(
            Timestamp::from_second(Timestamp::now().as_second()).unwrap_or(Timestamp::UNIX_EPOCH),
        )),
        ..Default::default()
    }
}

fn set_ready(s: &mut PodStatus, ready: bool) {
    let conds = s.conditions.get_or_insert_with(Vec::new);
    for t in ["ContainersReady", "Ready"] {
        match conds.iter_mut().find(|c| c.type_ == t) {
            Some(c) if (c.status == "True") == ready => {}
            Some(c) => *c = condition(t, ready),
            None => conds.push(condition(t, ready)),
        }
    }
}

/// Aborts the task when dropped (the kubelet's step ended, however).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Mirrors the prober's results into the pod's Ready condition; the first
/// success is the pod's `PodReady`.
async fn follow_readiness(
    shared: Arc<Shared>,
    ns: String,
    name: String,
    ip: IpAddr,
    mut readiness: watch::Receiver<bool>,
) {
    let mut announced = false;
    loop {
        let ready = *readiness.borrow_and_update();
        if let Err(e) = set_status(&shared.store, &ns, &name, |s| set_ready(s, ready)) {
            tracing::warn!(pod = %name, error = %e, "sim: kubelet could not set readiness");
        }
        if ready && !announced {
            announced = true;
            shared.emit(LifecycleEvent::PodReady {
                name: name.clone(),
                ip,
            });
        }
        if readiness.changed().await.is_err() {
            return;
        }
    }
}

pub(crate) async fn run(
    shared: Arc<Shared>,
    ns: String,
    name: String,
    spec: DeploymentSpec,
    revision: u64,
) {
    let store = shared.store.clone();
    let mut ip: Option<IpAddr> = None;
    if let Err(e) = lifecycle(&shared, &store, &ns, &name, &spec, revision, &mut ip).await {
        tracing::warn!(pod = %name, error = %e, "sim: kubelet step failed");
    }
    // Whatever happened, the pod ends up gone and its IP free.
    match store.delete::<Pod>(&ns, &name, Some(0)) {
        Ok(_) | Err(StoreError::NotFound { .. }) => {}
        Err(e) => tracing::warn!(pod = %name, error = %e, "sim: kubelet could not delete pod"),
    }
    if let Some(ip) = ip {
        shared.ips().release(ip);
    }
    shared.emit(LifecycleEvent::PodDeleted { name, ip });
}

#[allow(clippy::too_many_arguments)]
async fn lifecycle(
    shared: &Arc<Shared>,
    store: &Store,
    ns: &str,
    name: &str,
    spec: &DeploymentSpec,
    revision: u64,
    ip_slot: &mut Option<IpAddr>,
) -> Result<(), crate::SimError> {
    let cfg = &shared.config;
    if !matches!(
        wait_pod(store, ns, name, Some(Instant::now() + cfg.start_delay)).await,
        Wake::Timer
    ) {
        return Ok(());
    }
    let ip = shared.ips().allocate()?;
    *ip_slot = Some(ip);
    set_status(store, ns, name, |s| {
        s.phase = Some("Running".into());
        s.pod_ip = Some(ip.to_string());
        s.pod_ips = Some(vec![PodIP { ip: ip.to_string() }]);
        s.host_ip = Some(if ip.is_ipv6() { "fd00::1" } else { "192.0.2.1" }.into());
        s.start_time = Some(Time(
            Timestamp::from_second(Timestamp::now().as_second()).unwrap_or(Timestamp::UNIX_EPOCH),
        ));
        let conds = s.conditions.get_or_insert_with(Vec::new);
        conds.push(condition("PodScheduled", true));
        conds.push(condition("Initialized", true));
        set_ready(s, false);
    })?;
    let info = PodInfo {
        namespace: ns.into(),
        name: name.into(),
        uid: store
            .get::<Pod>(ns, name)
            .and_then(|p| p.metadata.uid)
            .unwrap_or_default(),
        ip,
        deployment: spec.name.clone(),
        revision,
        ports: spec.ports.clone(),
    };
    shared.emit(LifecycleEvent::PodStarting {
        name: name.into(),
        ip,
    });
    if let Err(e) = shared.runtime.start(&info).await {
        return Err(crate::SimError::Runtime(format!("start {name}: {e}")));
    }
    // With a prober, its results set readiness for as long as it runs
    // (through preStop, until the container exits); without, the pod turns
    // Ready after ready_delay.
    let follower = shared.runtime.readiness(&info).map(|readiness| {
        AbortOnDrop(tokio::spawn(follow_readiness(
            shared.clone(),
            ns.to_string(),
            name.to_string(),
            ip,
            readiness,
        )))
    });
    let ready_timer = follower.is_none().then(|| Instant::now() + cfg.ready_delay);
    let grace = match wait_pod(store, ns, name, ready_timer).await {
        Wake::Gone => return Ok(()),
        Wake::Terminating(g) => g,
        Wake::Timer => {
            set_status(store, ns, name, |s| set_ready(s, true))?;
            shared.emit(LifecycleEvent::PodReady {
                name: name.into(),
                ip,
            });
            match wait_pod(store, ns, name, None).await {
                Wake::Terminating(g) => g,
                Wake::Gone | Wake::Timer => return Ok(()),
            }
        }
    };
    // The grace period runs from when the kubelet sees the deletion and
    // covers preStop and the exit after SIGTERM together.
    let deadline = Instant::now() + grace;
    shared.emit(LifecycleEvent::PodTerminating {
        name: name.into(),
        ip,
    });
    let hook_starts = Instant::now() + shared.config.stop_delay;
    sleep_until((hook_starts + spec.pre_stop).min(deadline)).await;
    shared.emit(LifecycleEvent::PodSigterm {
        name: name.into(),
        ip,
    });
    let exit = async {
        let r = shared.runtime.stop(&info).await;
        tokio::time::sleep(spec.exit_delay).await;
        r
    };
    match timeout_at(deadline, exit).await {
        Ok(Err(e)) => tracing::warn!(pod = %name, error = %e, "sim: runtime stop failed"),
        Ok(Ok(())) => {}
        Err(_) => tracing::debug!(pod = %name, "sim: grace period over, killing"),
    }
    // The container has exited: no prober result may mark it Ready again.
    drop(follower);
    set_status(store, ns, name, |s| set_ready(s, false))?;
    shared.emit(LifecycleEvent::PodKilled {
        name: name.into(),
        ip,
    });
    Ok(())
}
