//! The Kubernetes side: pod-termination and EndpointSlice tracking.
