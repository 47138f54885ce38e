/* The selective scan as one C loop per batch row (variants/scan_cpu.py compiles and loads it).

   Time-major inputs: u, delta, y (l, b, d); B, C (l, b, n); A_t (n, d); D (d); states (b, n, d).
   h_t = exp(delta_t A) h_{t-1} + delta_t u_t B_t;  y_t = C_t . h_t + D u_t.
   Rows run in parallel (OpenMP, torch's own runtime: libgomp.so.1 is already loaded by torch); every row is
   computed by one thread in a fixed order, so the results do not depend on the thread count.
   The forward saves the state before every chunk; the backward recomputes a chunk's states and decays
   from it into the row's scratch and runs the adjoint recurrence over them. dA is written per row
   (b, n, d) and summed by the caller. */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define SCAN_FUNCTIONS(T, SUFFIX, EXP)                                                                  \
void scan_forward_##SUFFIX(int64_t l, int64_t b, int64_t d, int64_t n, int64_t chunk, int threads,      \
                           const T *u, const T *delta, const T *A, const T *B, const T *C, const T *D,  \
                           const T *h0, T *y, T *starts) {                                             \
    _Pragma("omp parallel for num_threads(threads) schedule(static)")                                  \
    for (int64_t row = 0; row < b; row++) {                                                              \
        T *h = malloc(sizeof(T) * n * d);                                                                \
        memcpy(h, h0 + row * n * d, sizeof(T) * n * d);                                                  \
        for (int64_t t = 0; t < l; t++) {                                                                \
            const int64_t at = t * b + row;                                                              \
            const T *ut = u + at * d, *dt = delta + at * d, *Bt = B + at * n, *Ct = C + at * n;          \
            T *yt = y + at * d;                                                                          \
            if (t % chunk == 0) memcpy(starts + ((t / chunk) * b + row) * n * d, h, sizeof(T) * n * d); \
            for (int64_t j = 0; j < d; j++) yt[j] = D[j] * ut[j];                                        \
            for (int64_t k = 0; k < n; k++) {                                                            \
                const T bk = Bt[k], ck = Ct[k];                                                          \
                const T *Ak = A + k * d;                                                                 \
                T *hk = h + k * d;                                                                       \
                _Pragma("omp simd")                                                                      \
                for (int64_t j = 0; j < d; j++) {                                                        \
                    hk[j] = EXP(dt[j] * Ak[j]) * hk[j] + dt[j] * ut[j] * bk;                             \
                    yt[j] += ck * hk[j];                                                                 \
                }                                                                                        \
            }                                                                                            \
        }                                                                                                \
        free(h);                                                                                         \
    }                                                                                                    \
}                                                                                                        \
                                                                                                         \
static void chunk_states_##SUFFIX(int64_t t0, int64_t t1, int64_t row, int64_t b, int64_t d, int64_t n, \
                                  const T *u, const T *delta, const T *A, const T *B, const T *start,   \
                                  T *states, T *decays) {                                                \
    const T *prev = start;                                                                               \
    for (int64_t t = t0; t < t1; t++) {                                                                  \
        const int64_t at = t * b + row;                                                                  \
        const T *ut = u + at * d, *dt = delta + at * d, *Bt = B + at * n;                                \
        T *h = states + (t - t0) * n * d, *e = decays + (t - t0) * n * d;                                \
        for (int64_t k = 0; k < n; k++) {                                                                \
            const T bk = Bt[k];                                                                          \
            _Pragma("omp simd")                                                                          \
            for (int64_t j = 0; j < d; j++) {                                                            \
                e[k * d + j] = EXP(dt[j] * A[k * d + j]);                                                \
                h[k * d + j] = e[k * d + j] * prev[k * d + j] + dt[j] * ut[j] * bk;                      \
            }                                                                                            \
        }                                                                                                \
        prev = h;                                                                                        \
    }                                                                                                    \
}                                                                                                        \
                                                                                                         \
void scan_backward_##SUFFIX(int64_t l, int64_t b, int64_t d, int64_t n, int64_t chunk, int threads,     \
                            const T *u, const T *delta, const T *A, const T *B, const T *C, const T *D, \
                            const T *starts, const T *gy, T *du, T *ddelta, T *dB, T *dC, T *dA_rows,    \
                            T *dh0) {                                                                    \
    const int64_t chunks = (l + chunk - 1) / chunk, span = l < chunk ? l : chunk;                         \
    _Pragma("omp parallel for num_threads(threads) schedule(static)")                                  \
    for (int64_t row = 0; row < b; row++) {                                                              \
        T *states = malloc(sizeof(T) * span * n * d), *decays = malloc(sizeof(T) * span * n * d);        \
        T *dudelta = malloc(sizeof(T) * d), *dd = malloc(sizeof(T) * d);                                 \
        T *adj = dh0 + row * n * d, *dA = dA_rows + row * n * d;                                         \
        memset(adj, 0, sizeof(T) * n * d);                                                               \
        memset(dA, 0, sizeof(T) * n * d);                                                                \
        for (int64_t c = chunks - 1; c >= 0; c--) {                                                      \
            const int64_t t0 = c * chunk, t1 = t0 + chunk < l ? t0 + chunk : l;                          \
            const T *start = starts + (c * b + row) * n * d;                                             \
            chunk_states_##SUFFIX(t0, t1, row, b, d, n, u, delta, A, B, start, states, decays);          \
            for (int64_t t = t1 - 1; t >= t0; t--) {                                                     \
                const int64_t at = t * b + row;                                                          \
                const T *ut = u + at * d, *dt = delta + at * d, *Bt = B + at * n, *Ct = C + at * n;      \
                const T *gt = gy + at * d;                                                               \
                const T *h = states + (t - t0) * n * d, *e = decays + (t - t0) * n * d;                  \
                const T *prev = t > t0 ? h - n * d : start;                                              \
                memset(dudelta, 0, sizeof(T) * d);                                                       \
                memset(dd, 0, sizeof(T) * d);                                                            \
                for (int64_t k = 0; k < n; k++) {                                                        \
                    const T bk = Bt[k], ck = Ct[k];                                                      \
                    const T *Ak = A + k * d, *hk = h + k * d, *pk = prev + k * d, *ek = e + k * d;       \
                    T *ak = adj + k * d, *dAk = dA + k * d, gC = 0, gB = 0;                              \
                    _Pragma("omp simd reduction(+:gC, gB)")                                              \
                    for (int64_t j = 0; j < d; j++) {                                                    \
                        const T a = ak[j] + ck * gt[j];  /* dL/dh_t */                                   \
                        gC += gt[j] * hk[j];                                                             \
                        gB += a * dt[j] * ut[j];                                                         \
                        dudelta[j] += a * bk;                                                            \
                        const T glog = a * pk[j] * ek[j];  /* dL/d(delta A) */                           \
                        dd[j] += glog * Ak[j];                                                           \
                        dAk[j] += glog * dt[j];                                                          \
                        ak[j] = a * ek[j];  /* dL/dh_{t-1} through the decay */                          \
                    }                                                                                    \
                    dC[at * n + k] = gC;                                                                 \
                    dB[at * n + k] = gB;                                                                 \
                }                                                                                        \
                for (int64_t j = 0; j < d; j++) {                                                        \
                    ddelta[at * d + j] = dd[j] + dudelta[j] * ut[j];                                     \
                    du[at * d + j] = dudelta[j] * dt[j] + gt[j] * D[j];                                  \
                }                                                                                        \
            }                                                                                            \
        }                                                                                                \
        free(states); free(decays); free(dudelta); free(dd);                                             \
    }                                                                                                    \
}

SCAN_FUNCTIONS(float, f32, expf)
SCAN_FUNCTIONS(double, f64, exp)
