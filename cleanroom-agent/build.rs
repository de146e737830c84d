//! Embeds the BPF object built by `cargo xtask build`.
//!
//! The object comes from `CLEANROOM_BPF_OBJECT` (set by xtask) or, failing that, from the place
//! xtask builds it. Without one the agent still compiles (so `cargo check`, clippy and unit tests
//! work on any machine) but carries an empty object and says so at run time.

use std::{env, fs, path::PathBuf};

fn main() {
    embed("CLEANROOM_BPF_OBJECT", "cleanroom-ebpf", "cleanroom.bpf.o");
    // The empty programs `cargo xtask bench` measures against; built beside the real ones.
    embed("CLEANROOM_FLOOR_OBJECT", "cleanroom-floor", "floor.bpf.o");
}

fn embed(var: &str, built_as: &str, embedded_as: &str) {
    println!("cargo:rerun-if-env-changed={var}");
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let default = manifest
        .join("../target/bpf/bpfel-unknown-none/release")
        .join(built_as);
    let source = env::var_os(var).map_or(default, PathBuf::from);
    println!("cargo:rerun-if-changed={}", source.display());
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo")).join(embedded_as);
    match fs::read(&source) {
        Ok(bytes) => fs::write(&out, bytes).expect("writing OUT_DIR"),
        Err(_) => {
            println!(
                "cargo:warning=no BPF object at {}; the binary will not be able to measure. \
                 Build with `cargo xtask build`.",
                source.display()
            );
            fs::write(&out, []).expect("writing OUT_DIR");
        }
    }
}
