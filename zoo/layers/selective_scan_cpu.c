/* The selective scan of Mamba as one fused pass per channel block, for CPUs.
 *
 * Compiled on first use by zoo/layers/selective_scan_kernel.py with the system C compiler and loaded with ctypes;
 * see that module for why, and for the layouts. Plain C99 written so that the compiler vectorises the innermost
 * loops across channels (W channels of one time step are contiguous); no intrinsics, so it builds for any CPU.
 *
 * Per batch b, channel d and state n, with Δ = softplus(delta + bias) (softplus and bias optional):
 *     h_t = exp(Δ_t A) h_{t-1} + Δ_t u_t B_t        y_t = C_t · h_t + D u_t        out_t = y_t silu(z_t)
 *
 * Layouts (element strides; the channel axis is always unit-stride):
 *     delta, u, z, gout: (b, t, d) at b*sb + t*st + d
 *     B, C:            (b, t, n) at b*sb + t*st + n
 *     A:               (n, d) contiguous
 *     out, g_delta, g_u, g_z: (b, t, d) contiguous
 *     g_B, g_C:        (b, t, n) contiguous, accumulated (a caller running several channel ranges in parallel gives
 *                      each its own buffers and sums them)
 *     g_A:             (n, d) contiguous; g_D, g_bias: (d); all three accumulated over the caller's channels only
 *     ckpt:            (b, chunks, n, d) contiguous: the state entering each chunk of `chunk` steps
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define W 16 /* channels per block: two AVX2 / one AVX-512 register of floats */
#define LOG2E 1.4426950408889634f
#define EXP2_FLOOR -115.0f /* 2^-115 = exp(-80): nothing next to a state; below it CPUs slow down on denormals */

typedef int64_t i64;

/* 2^x, x clamped to [EXP2_FLOOR, 126], relative error ~2e-7: round-to-nearest split into an integer power of two
 * (built in the exponent bits) and a degree-6 polynomial on [-0.5, 0.5] (Cephes' exp2f coefficients). Branch-free
 * so that it vectorises. */
static inline float exp2_clamped(float x) {
    x = x < EXP2_FLOOR ? EXP2_FLOOR : x;
    x = x > 126.0f ? 126.0f : x;
    float k = rintf(x);
    float f = x - k;
    float p = 1.535336188319500e-4f;
    p = p * f + 1.339887440266574e-3f;
    p = p * f + 9.618437357674640e-3f;
    p = p * f + 5.550332471162809e-2f;
    p = p * f + 2.402264791363012e-1f;
    p = p * f + 6.931472028550421e-1f;
    p = p * f + 1.0f;
    int32_t bits = ((int32_t)k + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

static inline float sigmoidf_(float x) { return 1.0f / (1.0f + exp2_clamped(-x * LOG2E)); }

/* torch's softplus (threshold 20): max(x, 0) + log1p(exp(-|x|)), with log1p(y) = 2 atanh(y / (2 + y)) as its
 * series (|y / (2 + y)| <= 1/3, so seven terms reach float precision and no 1 + y rounding loses a small y). */
static inline float softplus_(float x) {
    float y = exp2_clamped(-fabsf(x) * LOG2E), s = y / (2.0f + y), s2 = s * s;
    float p = 2.0f / 13.0f;
    p = p * s2 + 2.0f / 11.0f;
    p = p * s2 + 2.0f / 9.0f;
    p = p * s2 + 2.0f / 7.0f;
    p = p * s2 + 2.0f / 5.0f;
    p = p * s2 + 2.0f / 3.0f;
    p = p * s2 + 2.0f;
    float r = (x > 0.0f ? x : 0.0f) + s * p;
    return x > 20.0f ? x : r;
}

/* Δ for w channels of one step: delta (+ bias) (then softplus); `pre` keeps delta + bias for the backward. */
static inline __attribute__((always_inline)) void load_dt(int w, const float *dp, const float *bias, int softplus,
                                                          float *pre, float *dt) {
    for (int j = 0; j < w; j++) {
        float x = dp[j] + (bias ? bias[j] : 0.0f);
        pre[j] = x;
        dt[j] = softplus ? softplus_(x) : x;
    }
}

/* One block of `w` <= W channels starting at d0, one batch element: the forward scan. `w` is a compile-time W for
 * full blocks (always_inline lets the constant reach the loops) and the remainder for the last one. */
static inline __attribute__((always_inline)) void fwd_block(
    int w, i64 b, i64 d0, i64 L, i64 D, i64 N,
    const float *delta, i64 dl_sb, i64 dl_st, const float *bias, int softplus, const float *u, i64 u_sb, i64 u_st,
    const float *A, const float *Bm, i64 B_sb, i64 B_st, const float *Cm, i64 C_sb, i64 C_st, const float *Dskip,
    const float *z, i64 z_sb, i64 z_st, float *out, float *ckpt, i64 chunk, float *h, float *a2) {
    i64 chunks = chunk > 0 ? (L + chunk - 1) / chunk : 0;
    for (i64 n = 0; n < N; n++)
        for (int j = 0; j < w; j++) {
            a2[n * W + j] = A[n * D + d0 + j] * LOG2E;
            h[n * W + j] = 0.0f;
        }
    for (i64 t = 0; t < L; t++) {
        if (ckpt && t % chunk == 0) {
            float *dst = ckpt + ((b * chunks + t / chunk) * N) * D + d0;
            for (i64 n = 0; n < N; n++) memcpy(dst + n * D, h + n * W, sizeof(float) * w);
        }
        const float *up = u + b * u_sb + t * u_st + d0;
        const float *bp = Bm + b * B_sb + t * B_st;
        const float *cp = Cm + b * C_sb + t * C_st;
        float pre[W], dtp[W], dtu[W], y[W];
        load_dt(w, delta + b * dl_sb + t * dl_st + d0, bias ? bias + d0 : 0, softplus, pre, dtp);
        for (int j = 0; j < w; j++) {
            dtu[j] = dtp[j] * up[j];
            y[j] = 0.0f;
        }
        for (i64 n = 0; n < N; n++) {
            float bn = bp[n], cn = cp[n];
            float *hn = h + n * W;
            const float *an = a2 + n * W;
            for (int j = 0; j < w; j++) {
                float hv = exp2_clamped(dtp[j] * an[j]) * hn[j] + dtu[j] * bn;
                hn[j] = hv;
                y[j] += hv * cn;
            }
        }
        float *op = out + (b * L + t) * D + d0;
        if (Dskip)
            for (int j = 0; j < w; j++) y[j] += Dskip[d0 + j] * up[j];
        if (z) {
            const float *zp = z + b * z_sb + t * z_st + d0;
            for (int j = 0; j < w; j++) y[j] *= zp[j] * sigmoidf_(zp[j]);
        }
        memcpy(op, y, sizeof(float) * w);
    }
}

/* Returns 0, or -1 when its scratch memory cannot be allocated. */
int zoo_scan_forward(i64 batch, i64 L, i64 D, i64 N, i64 d_begin, i64 d_end,
                     const float *delta, i64 dl_sb, i64 dl_st, const float *bias, int softplus,
                     const float *u, i64 u_sb, i64 u_st, const float *A,
                      const float *Bm, i64 B_sb, i64 B_st, const float *Cm, i64 C_sb, i64 C_st,
                      const float *Dskip, const float *z, i64 z_sb, i64 z_st, float *out, float *ckpt, i64 chunk) {
    float *h = malloc(sizeof(float) * N * W), *a2 = malloc(sizeof(float) * N * W);
    int status = (h && a2) ? 0 : -1;
    for (i64 d0 = d_begin; status == 0 && d0 < d_end; d0 += W)
        for (i64 b = 0; b < batch; b++) {
            if (d_end - d0 >= W)
                fwd_block(W, b, d0, L, D, N, delta, dl_sb, dl_st, bias, softplus, u, u_sb, u_st, A, Bm, B_sb, B_st, Cm, C_sb, C_st,
                          Dskip, z, z_sb, z_st, out, ckpt, chunk, h, a2);
            else
                fwd_block((int)(d_end - d0), b, d0, L, D, N, delta, dl_sb, dl_st, bias, softplus, u, u_sb, u_st, A, Bm, B_sb, B_st,
                          Cm, C_sb, C_st, Dskip, z, z_sb, z_st, out, ckpt, chunk, h, a2);
        }
    free(h);
    free(a2);
    return status;
}

/* The backward of one block of `w` channels, one batch element: chunks last to first, each one's states recomputed
 * from its checkpoint into `hs` (decays into `as`), then the adjoint λ_t = C_t gy_t + a_{t+1} λ_{t+1} run backwards
 * through it. g carries a_{t+1} λ_{t+1} across chunk boundaries. */
static inline __attribute__((always_inline)) void bwd_block(
    int w, i64 b, i64 d0, i64 L, i64 D, i64 N,
    const float *delta, i64 dl_sb, i64 dl_st, const float *bias, int softplus, const float *u, i64 u_sb, i64 u_st,
    const float *A, const float *Bm, i64 B_sb, i64 B_st, const float *Cm, i64 C_sb, i64 C_st, const float *Dskip,
    const float *z, i64 z_sb, i64 z_st, const float *gout, i64 g_sb, i64 g_st, const float *ckpt, i64 chunk,
    float *g_delta, float *g_u, float *g_A, float *g_B, float *g_C, float *g_D, float *g_z, float *g_bias,
    float *hs, float *as, float *ys, float *g, float *a2) {
    i64 chunks = (L + chunk - 1) / chunk;
    for (i64 n = 0; n < N; n++)
        for (int j = 0; j < w; j++) {
            a2[n * W + j] = A[n * D + d0 + j] * LOG2E;
            g[n * W + j] = 0.0f;
        }
    for (i64 c = chunks - 1; c >= 0; c--) {
        i64 t0 = c * chunk, t1 = t0 + chunk < L ? t0 + chunk : L;
        const float *h0 = ckpt + ((b * chunks + c) * N) * D + d0;
        /* recompute: hs[k] is the state after step t0 + k, as[k] its decay, ys[k] = C·h (before skip and gate) */
        for (i64 t = t0; t < t1; t++) {
            i64 k = t - t0;
            const float *up = u + b * u_sb + t * u_st + d0;
            const float *bp = Bm + b * B_sb + t * B_st;
            const float *cp = Cm + b * C_sb + t * C_st;
            float pre[W], dtp[W];
            load_dt(w, delta + b * dl_sb + t * dl_st + d0, bias ? bias + d0 : 0, softplus, pre, dtp);
            float *yk = ys + k * W;
            for (int j = 0; j < w; j++) yk[j] = 0.0f;
            for (i64 n = 0; n < N; n++) {
                const float *hp = k ? hs + ((k - 1) * N + n) * W : h0 + n * D;
                float *hk = hs + (k * N + n) * W, *ak = as + (k * N + n) * W;
                const float *an = a2 + n * W;
                float bn = bp[n], cn = cp[n];
                for (int j = 0; j < w; j++) {
                    float a = exp2_clamped(dtp[j] * an[j]);
                    float hv = a * hp[j] + dtp[j] * up[j] * bn;
                    ak[j] = a;
                    hk[j] = hv;
                    yk[j] += hv * cn;
                }
            }
        }
        for (i64 t = t1 - 1; t >= t0; t--) {
            i64 k = t - t0;
            const float *up = u + b * u_sb + t * u_st + d0;
            float pre[W], dtp[W];
            load_dt(w, delta + b * dl_sb + t * dl_st + d0, bias ? bias + d0 : 0, softplus, pre, dtp);
            const float *gp = gout + b * g_sb + t * g_st + d0;
            const float *bp = Bm + b * B_sb + t * B_st;
            const float *cp = Cm + b * C_sb + t * C_st;
            float *gBp = g_B + (b * L + t) * N, *gCp = g_C + (b * L + t) * N;
            i64 o = (b * L + t) * D + d0;
            float gy[W], dtu[W], gdt[W], gdtu[W];
            for (int j = 0; j < w; j++) {
                float y = ys[k * W + j] + (Dskip ? Dskip[d0 + j] * up[j] : 0.0f);
                float gyj = gp[j];
                if (z) {
                    float zz = z[b * z_sb + t * z_st + d0 + j], s = sigmoidf_(zz);
                    g_z[o + j] = gyj * y * s * (1.0f + zz * (1.0f - s));
                    gyj *= zz * s;
                }
                gy[j] = gyj;
                dtu[j] = dtp[j] * up[j];
                gdt[j] = 0.0f;
                gdtu[j] = 0.0f;
                if (Dskip) g_D[d0 + j] += gyj * up[j];
            }
            for (i64 n = 0; n < N; n++) {
                const float *hk = hs + (k * N + n) * W, *ak = as + (k * N + n) * W;
                const float *hp = k ? hs + ((k - 1) * N + n) * W : h0 + n * D;
                const float *an = A + n * D + d0;
                float *gn = g + n * W, *gAn = g_A + n * D + d0;
                float bn = bp[n], cn = cp[n], sc = 0.0f, sb = 0.0f;
                for (int j = 0; j < w; j++) {
                    float lam = gn[j] + cn * gy[j];
                    float wt = lam * ak[j] * hp[j]; /* dL/da_t · a_t */
                    sc += gy[j] * hk[j];
                    sb += lam * dtu[j];
                    gdt[j] += wt * an[j];
                    gAn[j] += wt * dtp[j];
                    gdtu[j] += lam * bn;
                    gn[j] = lam * ak[j];
                }
                gCp[n] += sc;
                gBp[n] += sb;
            }
            for (int j = 0; j < w; j++) {
                float gd = gdt[j] + gdtu[j] * up[j]; /* dL/dΔ, then through softplus to delta + bias */
                if (softplus && pre[j] <= 20.0f) gd *= sigmoidf_(pre[j]);
                g_delta[o + j] = gd;
                if (bias) g_bias[d0 + j] += gd;
                g_u[o + j] = gdtu[j] * dtp[j] + (Dskip ? gy[j] * Dskip[d0 + j] : 0.0f);
            }
        }
    }
}

/* Returns 0, or -1 when its scratch memory cannot be allocated. */
int zoo_scan_backward(i64 batch, i64 L, i64 D, i64 N, i64 d_begin, i64 d_end,
                      const float *delta, i64 dl_sb, i64 dl_st, const float *bias, int softplus,
                      const float *u, i64 u_sb, i64 u_st, const float *A,
                      const float *Bm, i64 B_sb, i64 B_st, const float *Cm, i64 C_sb, i64 C_st,
                      const float *Dskip, const float *z, i64 z_sb, i64 z_st, const float *gout, i64 g_sb, i64 g_st,
                      const float *ckpt, i64 chunk, float *g_delta, float *g_u, float *g_A, float *g_B, float *g_C,
                      float *g_D, float *g_z, float *g_bias) {
    float *hs = malloc(sizeof(float) * chunk * N * W), *as = malloc(sizeof(float) * chunk * N * W);
    float *ys = malloc(sizeof(float) * chunk * W), *g = malloc(sizeof(float) * N * W);
    float *a2 = malloc(sizeof(float) * N * W);
    int status = (hs && as && ys && g && a2) ? 0 : -1;
    for (i64 d0 = d_begin; status == 0 && d0 < d_end; d0 += W)
        for (i64 b = 0; b < batch; b++) {
            if (d_end - d0 >= W)
                bwd_block(W, b, d0, L, D, N, delta, dl_sb, dl_st, bias, softplus, u, u_sb, u_st, A, Bm, B_sb, B_st,
                          Cm, C_sb, C_st, Dskip, z, z_sb, z_st, gout, g_sb, g_st, ckpt, chunk, g_delta, g_u, g_A, g_B,
                          g_C, g_D, g_z, g_bias, hs, as, ys, g, a2);
            else
                bwd_block((int)(d_end - d0), b, d0, L, D, N, delta, dl_sb, dl_st, bias, softplus, u, u_sb, u_st, A,
                          Bm, B_sb, B_st, Cm, C_sb, C_st, Dskip, z, z_sb, z_st, gout, g_sb, g_st, ckpt, chunk, g_delta,
                          g_u, g_A, g_B, g_C, g_D, g_z, g_bias, hs, as, ys, g, a2);
        }
    free(hs);
    free(as);
    free(ys);
    free(g);
    free(a2);
    return status;
}
