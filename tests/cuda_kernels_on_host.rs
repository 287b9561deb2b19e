//! The arithmetic of embedtune's CUDA kernels, checked without a GPU: the
//! f32 kernels of `cuda/*.cu` are compiled as host C++ (the CUDA keywords
//! defined away, a launch emulated thread by thread with fewer threads than
//! elements, so their stride loops run) and must give exactly what the CPU
//! gives: dropout drops what `keep_mask` drops and scales the rest by
//! 1/(1 − p); one AdamW step leaves the weights the CPU's in-place update
//! leaves. On a GPU, `tests/device.rs` checks the real kernels. Skipped,
//! with a notice, where no C++ compiler (`c++`) is installed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{Device, Tensor, Var};
use embedtune::layers::dropout::{DropoutSeed, keep_mask, keep_threshold};
use embedtune::training::optim::{AdamW, AdamWParams};

/// What every harness starts with: the CUDA keywords and launch indices as
/// host C++, the kernel source, and a launch on the host.
const PRELUDE: &str = r#"
#include <cmath>
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
// Every thread of a 3-block, 32-thread grid, one after the other.
#define LAUNCH(call)                                         \
    blockDim = {32, 1, 1};                                   \
    gridDim = {3, 1, 1};                                     \
    for (unsigned b = 0; b < gridDim.x; b++)                 \
        for (unsigned th = 0; th < blockDim.x; th++) {       \
            blockIdx = {b, 0, 0};                            \
            threadIdx = {th, 0, 0};                          \
            call;                                            \
        }
"#;

/// `cuda/NAME.cu`'s f32 kernels compiled with `main` into a host program
/// in `dir`; `None` (after a notice) without a C++ compiler. The
/// half-precision headers and kernels are left out, and C linkage.
fn host_program(dir: &Path, name: &str, main: &str) -> Option<PathBuf> {
    let path = format!("{}/cuda/{name}.cu", env!("CARGO_MANIFEST_DIR"));
    let cu = std::fs::read_to_string(&path).expect("kernel source");
    let f32_only = cu
        .lines()
        .filter(|l| !l.contains("cuda_fp16.h") && !l.contains("cuda_bf16.h"))
        .filter(|l| !l.contains("_f16,") && !l.contains("_bf16,"))
        .map(|l| l.replace("extern \"C\" ", ""))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(dir.join("kernel.inc"), f32_only).unwrap();
    std::fs::write(dir.join("harness.cpp"), format!("{PRELUDE}{main}")).unwrap();
    let exe = dir.join("harness");
    let compiled = Command::new("c++")
        .args(["-O1", "-std=c++17", "-o"])
        .arg(&exe)
        .arg(dir.join("harness.cpp"))
        .current_dir(dir)
        .output();
    let compiled = match compiled {
        Ok(o) => o,
        Err(e) => {
            eprintln!("skipped: no C++ compiler to build the kernels on the host ({e})");
            return None;
        }
    };
    assert!(
        compiled.status.success(),
        "cuda/{name}.cu does not compile as C++:\n{}",
        String::from_utf8_lossy(&compiled.stderr)
    );
    Some(exe)
}

/// Runs `exe` with `args`: the f32 values it prints, one per line.
fn run(exe: &Path, args: &[String]) -> Vec<f32> {
    let out = Command::new(exe).args(args).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect()
}

const DROPOUT_MAIN: &str = r#"
int main(int argc, char **argv) {
    uint64_t key = strtoull(argv[1], nullptr, 10);
    uint32_t threshold = (uint32_t)strtoul(argv[2], nullptr, 10);
    float p = strtof(argv[3], nullptr);
    uint32_t groups = 2, t = 5, cols = 8;
    std::vector<uint64_t> rows = {4, 1, 7};
    uint64_t n = rows.size() * groups * t * cols;
    std::vector<float> x(n), y(n, -1.0f);
    for (uint64_t e = 0; e < n; e++) x[e] = 0.5f + (float)(e % 7);
    LAUNCH(embedtune_dropout_f32(x.data(), y.data(), rows.data(), key, threshold,
                                 1.0f / (1.0f - p), groups, t, cols, n));
    for (uint64_t e = 0; e < n; e++) printf("%.9g\n", y[e]);
}
"#;

#[test]
fn the_dropout_kernel_drops_what_the_cpu_drops() {
    let dir = tempfile::tempdir().unwrap();
    let Some(exe) = host_program(dir.path(), "dropout", DROPOUT_MAIN) else {
        return;
    };
    for (seed, site, p) in [(11u64, 4u32, 0.25f32), (3, 0, 0.1), (u64::MAX, 9, 0.6)] {
        let key = DropoutSeed(seed).site(site);
        let args = [
            key.0.to_string(),
            keep_threshold(p).to_string(),
            p.to_string(),
        ];
        let got = run(&exe, &args);
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

const ADAMW_MAIN: &str = r#"
int main() {
    double beta1 = 0.9, beta2 = 0.999, eps = 1e-8, wd = 0.01, lr = 0.1, scale = 0.5;
    uint64_t n = 100;
    std::vector<float> theta(n), g(n), m(n, 0.0f), v(n, 0.0f);
    for (uint64_t e = 0; e < n; e++) {
        theta[e] = ((float)(e % 13) - 6.0f) * 0.125f;
        g[e] = ((float)(e % 7) - 3.0f) * 0.25f + 0.0625f;
    }
    // The first step: the bias corrections are 1 - beta.
    double bc1 = 1.0 - beta1, bc2 = 1.0 - beta2;
    LAUNCH(embedtune_adamw_moment(m.data(), g.data(), (float)beta1, (float)(1.0 - beta1),
                                  (float)scale, 0, n));
    LAUNCH(embedtune_adamw_moment(v.data(), g.data(), (float)beta2, (float)(1.0 - beta2),
                                  (float)scale, 1, n));
    LAUNCH(embedtune_adamw_update(theta.data(), m.data(), v.data(), (float)(1.0 - lr * wd),
                                  (float)lr, (float)eps, (float)(1.0 / bc1), (float)(1.0 / bc2), n));
    for (uint64_t e = 0; e < n; e++) printf("%.9g\n", theta[e]);
}
"#;

#[test]
fn the_adamw_kernels_update_as_the_cpu_does() {
    let dir = tempfile::tempdir().unwrap();
    let Some(exe) = host_program(dir.path(), "adamw", ADAMW_MAIN) else {
        return;
    };
    let got = run(&exe, &[]);
    // The same θ and g as the harness: multiples of powers of two.
    let theta: Vec<f32> = (0..100).map(|e| ((e % 13) as f32 - 6.0) * 0.125).collect();
    let grad: Vec<f32> = (0..100)
        .map(|e| ((e % 7) as f32 - 3.0) * 0.25 + 0.0625)
        .collect();
    let var = Var::from_vec(theta, 100, &Device::Cpu).unwrap();
    let params = AdamWParams {
        weight_decay: 0.01,
        ..AdamWParams::default()
    };
    let vars = HashMap::from([("w".to_string(), var.clone())]);
    let mut opt = AdamW::new(&vars, params).unwrap();
    let g = Tensor::from_vec(grad, 100, &Device::Cpu).unwrap();
    let loss = (var.as_tensor() * g).unwrap().sum_all().unwrap();
    opt.step(&loss.backward().unwrap(), 0.1, 0.5).unwrap();
    let want: Vec<f32> = var.as_tensor().to_vec1().unwrap();
    assert_eq!(got, want);
}
