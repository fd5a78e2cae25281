//! A Kubernetes API simulator that speaks the list/watch protocol.
