//! The CUDA dropout kernel's arithmetic, checked without a GPU: the f32
//! kernel of `cuda/dropout.cu` is compiled as host C++ (the CUDA keywords
//! defined away, a launch emulated thread by thread with fewer threads than
//! elements, so its stride loop runs) and must drop exactly what the CPU's
//! `keep_mask` drops, and scale the rest by 1/(1 − p). On a GPU,
//! `tests/device.rs` checks the real kernel. Skipped, with a notice, where
//! no C++ compiler (`c++`) is installed.

use std::process::Command;

use embedtune::layers::dropout::{DropoutSeed, keep_mask, keep_threshold};

const HARNESS: &str = r#"
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>
struct Dim { unsigned x, y, z; };
static Dim blockIdx, blockDim, threadIdx, gridDim;
#define __device__
#define __forceinline__ inline
#define __global__
#include "kernel.inc"
int main(int argc, char **argv) {
    uint64_t key = strtoull(argv[1], nullptr, 10);
    uint32_t threshold = (uint32_t)strtoul(argv[2], nullptr, 10);
    float p = strtof(argv[3], nullptr);
    uint32_t groups = 2, t = 5, cols = 8;
    std::vector<uint64_t> rows = {4, 1, 7};
    uint64_t n = rows.size() * groups * t * cols;
    std::vector<float> x(n), y(n, -1.0f);
    for (uint64_t e = 0; e < n; e++) x[e] = 0.5f + (float)(e % 7);
    blockDim = {32, 1, 1};
    gridDim = {3, 1, 1};
    for (unsigned b = 0; b < gridDim.x; b++)
        for (unsigned th = 0; th < blockDim.x; th++) {
            blockIdx = {b, 0, 0};
            threadIdx = {th, 0, 0};
            embedtune_dropout_f32(x.data(), y.data(), rows.data(), key, threshold,
                                  1.0f / (1.0f - p), groups, t, cols, n);
        }
    for (uint64_t e = 0; e < n; e++) printf("%.9g\n", y[e]);
}
"#;

/// The f32 kernel of the `.cu` file: no half-precision headers or kernels,
/// no C linkage (the harness calls it directly).
fn f32_kernel_source() -> String {
    let cu = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/cuda/dropout.cu"))
        .expect("cuda/dropout.cu");
    cu.lines()
        .filter(|l| !l.contains("cuda_fp16.h") && !l.contains("cuda_bf16.h"))
        .filter(|l| !l.contains("embedtune_dropout_f16") && !l.contains("embedtune_dropout_bf16"))
        .map(|l| l.replace("extern \"C\" ", ""))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_dropout_kernel_drops_what_the_cpu_drops() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("kernel.inc"), f32_kernel_source()).unwrap();
    std::fs::write(dir.path().join("harness.cpp"), HARNESS).unwrap();
    let exe = dir.path().join("harness");
    let compiled = Command::new("c++")
        .args(["-O1", "-std=c++17", "-o"])
        .arg(&exe)
        .arg(dir.path().join("harness.cpp"))
        .current_dir(dir.path())
        .output();
    let compiled = match compiled {
        Ok(o) => o,
        Err(e) => {
            eprintln!("skipped: no C++ compiler to build the kernel on the host ({e})");
            return;
        }
    };
    assert!(
        compiled.status.success(),
        "the kernel does not compile as C++:\n{}",
        String::from_utf8_lossy(&compiled.stderr)
    );
    for (seed, site, p) in [(11u64, 4u32, 0.25f32), (3, 0, 0.1), (u64::MAX, 9, 0.6)] {
        let key = DropoutSeed(seed).site(site);
        let out = Command::new(&exe)
            .args([
                key.0.to_string(),
                keep_threshold(p).to_string(),
                p.to_string(),
            ])
            .output()
            .unwrap();
        assert!(out.status.success());
        let got: Vec<f32> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| l.parse().unwrap())
            .collect();
        let mask = keep_mask(key, p, &[4, 1, 7], 2, 5, 8);
        assert_eq!(got.len(), mask.len());
        let scale = 1.0 / (1.0 - p);
        for (e, (&y, &keep)) in got.iter().zip(&mask).enumerate() {
            let want = if keep == 1 {
                (0.5 + (e % 7) as f32) * scale
            } else {
                0.0
            };
            assert_eq!(y, want, "seed {seed} site {site} p {p}: element {e}");
        }
    }
}
