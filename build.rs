//! With the `cuda` feature, compiles embedtune's own CUDA kernels
//! (`cuda/*.cu`) to PTX with `nvcc` (from `NVCC`, else `PATH`, as
//! `scripts/setup-cuda.sh` sets it up) for `CUDA_COMPUTE_CAP` (default 90:
//! H100/H200). The PTX is embedded in the binary and loaded by the driver,
//! which compiles it for the GPU it finds.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo::rerun-if-env-changed=NVCC");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
    let cap: String = cap.chars().filter(char::is_ascii_digit).collect();
    let nvcc = std::env::var("NVCC").unwrap_or_else(|_| "nvcc".into());
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    for kernel in ["adamw", "dropout"] {
        let src = format!("cuda/{kernel}.cu");
        println!("cargo::rerun-if-changed={src}");
        let ptx = out.join(format!("{kernel}.ptx"));
        let status = Command::new(&nvcc)
            .args(["--ptx", "-O3", "-std=c++17"])
            .arg(format!("-arch=compute_{cap}"))
            .arg("-o")
            .arg(&ptx)
            .arg(&src)
            .status()
            .unwrap_or_else(|e| {
                panic!("cannot run `{nvcc}` ({e}); for --features cuda run scripts/setup-cuda.sh and `source .cuda/env.sh`")
            });
        assert!(status.success(), "`{nvcc}` failed on {src}");
    }
}
