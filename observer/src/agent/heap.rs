//! Hands the allocator's free memory back to the kernel after a relist.
//!
//! A relist holds a second copy of every EndpointSlice (the model applies
//! them together at its end) and a page of full objects at a time. When it
//! completes, that memory is free, but glibc keeps it in its arenas, where
//! later allocations only partly reuse it: in the soak
//! (docs/BENCHMARKS.md) each relist of 10 000 pods left the agent's
//! resident memory 1–4 MiB higher. `malloc_trim` returns every free page.
//! The static release binaries use musl, whose allocator has no such call
//! and unmaps freed memory on its own; there this does nothing.

use crate::cluster::kube::runtime::watcher::Event;
use crate::cluster::{ResourceEvent, StampedEvent};

/// Whether `event` completes a list of pods or EndpointSlices (the first
/// one, or a relist after a dropped watch or a 410).
pub fn completes_a_list(event: &StampedEvent) -> bool {
    match &event.event {
        ResourceEvent::Pod(e) => matches!(e.as_ref(), Event::InitDone),
        ResourceEvent::EndpointSlice(e) => matches!(e.as_ref(), Event::InitDone),
        ResourceEvent::SliceScope(_) => false,
    }
}

/// Returns the allocator's free pages to the kernel (glibc only).
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointer and only walks glibc's own
    // arenas, under their locks; any thread may call it at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::MonoTime;
    use crate::cluster::k8s_openapi::api::core::v1::Pod;

    #[test]
    fn only_the_end_of_a_list_completes_it() {
        let pod = |e: Event<Pod>| StampedEvent {
            at: MonoTime(1),
            event: ResourceEvent::Pod(Box::new(e)),
        };
        let slice = |e| StampedEvent {
            at: MonoTime(1),
            event: ResourceEvent::EndpointSlice(Box::new(e)),
        };
        assert!(completes_a_list(&pod(Event::InitDone)));
        assert!(completes_a_list(&slice(Event::InitDone)));
        assert!(!completes_a_list(&pod(Event::Init)));
        assert!(!completes_a_list(&pod(Event::Apply(Pod::default()))));
        assert!(!completes_a_list(&slice(Event::Init)));
    }
}
