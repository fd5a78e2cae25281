//! Rebuild the kernel object when bpf-linker changes: cargo does not track
//! linkers on its own.
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo::rerun-if-changed={}", linker.display());
    }
}
