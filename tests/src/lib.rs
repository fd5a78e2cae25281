//! Shared fixtures for the privileged tests.
