//! The kernel probe: loading, decoding, and reading its maps.
