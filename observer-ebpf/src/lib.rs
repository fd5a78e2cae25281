//! Marker library so `observer`'s build script can depend on this crate and
//! be rebuilt when it changes. The programs live in `main.rs` and its modules.
#![no_std]
