//! Link flags for the one `atoll` binary.

fn main() {
    // Pack relative relocations (DT_RELR, glibc >= 2.36). A PIE Rust binary carries
    // ~700 KB of R_X86_64_RELATIVE entries that the dynamic loader reads at every
    // exec; every per-container shim paid that in RSS. RELR encodes them in a few KB.
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
}
