// Inverted dropout with counter-based masks: the CUDA twin of
// src/layers/dropout.rs. Whether element (s, a, i, c) of a contiguous
// (b, groups, t, cols) block is kept is the same pure function of the
// site key, the row id rows[s], the position i and the column (a << 16) | c
// as on the CPU (SplitMix64's finaliser, same constants), so both devices
// drop the same elements. Kept elements are scaled by 1 / (1 - p) in f32.
// The backward pass is this kernel applied to the gradient.
//
// Compiled to PTX by build.rs (feature `cuda`).

#include <stdint.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>

__device__ __forceinline__ uint64_t mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

__device__ __forceinline__ bool kept(const uint64_t *rows, uint64_t key, uint32_t threshold,
                                     uint32_t groups, uint32_t t, uint32_t cols, uint64_t e) {
    uint64_t c = e % cols;
    uint64_t r = e / cols;
    uint64_t i = r % t;
    r /= t;
    uint64_t a = r % groups;
    uint64_t s = r / groups;
    uint64_t token = mix(mix(key ^ rows[s]) ^ (i * 0xD6E8FEB86659FD93ULL));
    uint64_t col = (a << 16) | c;
    uint32_t bits = (uint32_t)(mix(token ^ (col * 0x9E3779B97F4A7C15ULL)) >> 40);
    return bits < threshold;
}

#define DROPOUT(NAME, T, TO_F32, FROM_F32)                                                     \
    extern "C" __global__ void NAME(const T *x, T *y, const uint64_t *rows, uint64_t key,     \
                                    uint32_t threshold, float scale, uint32_t groups,         \
                                    uint32_t t, uint32_t cols, uint64_t n) {                  \
        uint64_t stride = (uint64_t)blockDim.x * gridDim.x;                                   \
        for (uint64_t e = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; e < n;             \
             e += stride) {                                                                   \
            float v = kept(rows, key, threshold, groups, t, cols, e) ? TO_F32(x[e]) * scale   \
                                                                     : 0.0f;                  \
            y[e] = FROM_F32(v);                                                               \
        }                                                                                     \
    }

#define SAME(v) (v)
DROPOUT(embedtune_dropout_f32, float, SAME, SAME)
DROPOUT(embedtune_dropout_f16, __half, __half2float, __float2half)
DROPOUT(embedtune_dropout_bf16, __nv_bfloat16, __bfloat162float, __float2bfloat16)
