// AdamW's in-place updates, one pass over each buffer: the CUDA twins of
// Moment and FusedUpdate in src/training/optim.rs (same f32 arithmetic,
// except that nvcc may fuse a multiply and an add).
//
// Compiled to PTX by build.rs (feature `cuda`).

#include <stdint.h>

// m <- beta * m + rest * (s * g), or (s * g)^2 when square.
extern "C" __global__ void embedtune_adamw_moment(float *m, const float *g, float beta, float rest,
                                                  float s, uint32_t square, uint64_t n) {
    uint64_t stride = (uint64_t)blockDim.x * gridDim.x;
    for (uint64_t e = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += stride) {
        float x = g[e] * s;
        m[e] = beta * m[e] + rest * (square ? x * x : x);
    }
}

// theta <- theta * decay - lr * (m * ibc1) / (sqrt(v * ibc2) + eps).
extern "C" __global__ void embedtune_adamw_update(float *theta, const float *m, const float *v,
                                                  float decay, float lr, float eps, float ibc1,
                                                  float ibc2, uint64_t n) {
    uint64_t stride = (uint64_t)blockDim.x * gridDim.x;
    for (uint64_t e = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += stride) {
        theta[e] = theta[e] * decay - lr * (m[e] * ibc1) / (sqrtf(v[e] * ibc2) + eps);
    }
}
