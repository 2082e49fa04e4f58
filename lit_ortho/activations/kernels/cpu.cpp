// lit_ortho's CPU kernels: each family's forward, and its dx with every coefficient-gradient sum in one pass.
//
// Coefficients come from cpu.py channel by channel, [C, ROWS] (shared: C = 1), and the backward's sums go back as
// [C, SUMS]. Two layouts (cpu.py's `layout`). Columns: a row-major [N, C] float32 array with one coefficient set per
// channel c (x[n * C + c]). The work goes in tiles of R rows by one vector of W channels: the tile's coefficients are
// loaded into registers once, its R rows are computed with them, and the backward's sums are kept in registers over
// the R rows before being added to the thread's partial sums; inductor's CPU backend cannot fuse such column sums with
// dx. Rows: [O, C, I], each (o, c) a contiguous row of I elements with one coefficient set (shared coefficients:
// O = C = 1), walked in vectors.
//
// Compiled by cpu.py with -DLIT_K=<coefficients per line or term>: every loop over K is then unrolled and its sums
// stay in registers. GCC vector extensions give one source for AVX-512, AVX2 or SSE.
#include <algorithm>
#include <cfloat>
#include <climits>
#include <cmath>
#include <cstring>
#include <cstdint>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif
#include <omp.h>
#include <vector>

#ifndef LIT_K
#error "compile with -DLIT_K=<number of coefficients>"
#endif
constexpr int K = LIT_K;

#if defined(__AVX512F__)
constexpr int W = 16;
#elif defined(__AVX__)
constexpr int W = 8;
#else
constexpr int W = 4;
#endif
typedef float vf __attribute__((vector_size(W * 4)));
typedef int vi __attribute__((vector_size(W * 4)));
typedef unsigned vu __attribute__((vector_size(W * 4)));
// A tile is R rows of one vector of W channels, computed in blocks of B rows with the tile's coefficients and
// partial sums held in registers over all R rows. Short tiles cost: each one reloads its coefficients and adds its
// sums to memory. Tropical-rational-6's backward on 12288 x 3072 took 57 ms in tiles of 8 rows, 33 ms in tiles of 341.
// So R covers TILE_ELEMENTS elements (at least B rows, at most a thread's share). Those rows are C floats apart, which
// the hardware prefetchers do not follow: the rows PREFETCH rows ahead are prefetched (33 ms -> 25 ms). In Fourier's
// backward (F::PREFETCH_NEXT_VECTOR) they go on past the tile's last row into the next vector of channels' first rows,
// so that its walk does not begin with PREFETCH rows of misses: 12288 x 3072 per channel 18.2 -> 17.3 ms,
// 4096 x 1536 2.87 -> 2.78 ms (two builds alternated in one process, twice; the same bits). The cheaper backwards lost
// by it at C = 1536 (Hermite-3 1.53 -> 1.64 ms, Tropical-rational-6 1.85 -> 2.05 ms), even as an untaken branch on a
// runtime flag (hence a compile-time member), and Fourier's forward did not gain.
//
// Even so, a walk down rows 12 KiB apart (C = 3072) reads memory at about half the rate of a sequential one, and the
// cheap walks are then bound by it. From C = F::FORWARD_PANEL_C (F::BACKWARD_PANEL_C for the backward; Hermite and
// Tropical only with at most 8 coefficients a channel forward; backward Hermite up to 5 from C = 512 and up to 12 from
// C = 2048, Tropical up to 8 from C = 512), tiles are B rows: the walk goes across the B rows, nearly in memory order,
// and each tile reloads its coefficients and adds its sums through L2.
// Tropical-6 on 12288 x 3072: forward 9.8 -> 7.4 ms, backward 15 -> 12 ms; Hermite-4 forward 9.8 ->
// 8.4 ms; Tropical-rational-7's forward (no sums) 10.2 -> 8.7 ms, 3.4 -> 2.9 ms at 6144 x 2048; Fourier-5's forward
// 10.1 -> 8.5 ms, 3.4 -> 3.0 ms at 6144 x 2048 (two builds alternated in one process; an earlier one-off measurement
// had it losing). Backwards with many sums lose (Fourier-5's 19 -> 27-29 ms, Tropical-rational-7's 17 ->
// 18-21 ms; tall tiles 2 or 4 vectors wide were slower still, and so were tiles of 4 rows for Hermite and Tropical),
// as do small C (Tropical-6's backward at C = 96: 12 -> 24 ms; Fourier-5's forward at C = 96: 8.3 -> 9.1 ms;
// Tropical-rational-7's forward at C = 1536: 1.15 -> 1.49 ms). Since the panels prefetch and stream, the cheap
// backwards gain from C = 512 (session 19, two builds alternated in one process, quiet and slow minutes): Hermite-3 at
// 4096 x 1536 1.18-1.20 -> 0.90 ms (slow minutes 3.2 -> 1.83), 6144 x 1024 1.94-2.48 -> 1.23-1.68, 12288 x 512 1.99
// -> 1.70; Hermite-5 at 6144 x 1024 7.45 -> 2.57 ms; Tropical-5 at 4096 x 1536 2.07 -> 1.23, 6144 x 1024 3.1 -> 1.31,
// 12288 x 512 1.81 -> 1.42; Tropical-3 and -8 likewise. They lose at C = 256 (Tropical-5 1.58 -> 1.67 ms) and at
// C = 96 (8.0 -> 18.9 ms), as do Hermite-6 and up at C = 512-1536 (Hermite-8 at 4096 x 1536: 3.66 -> 4.33 ms) and
// Tropical-rational-6 (2.06 -> 2.20 ms at C = 1536): more sums a tile to add through L2. (The tall tiles were slowest
// at C = 1024, rows 4 KiB apart, where all of a tile's lines fall in one L1 set: probably the cause; this VM has no
// counters to show it.)
// A panel's rows are B streams, which the hardware prefetchers follow; Hermite's panels also prefetch the lines
// F::PANEL_PREFETCH vectors of channels on in each row (Hermite-3 at 12288 x 3072, quiet host: forward 6.2-6.4 -> 5.1
// ms, backward 7.0-7.1 -> 6.2 ms; in a slower minute 9.5 -> 9.0 and 11.1 -> 10.3 ms; 6144 x 2048 and 4096 x 1536 the
// same or faster). Fourier's forward lost by it (4096 x 1536: 1.23-1.39 -> 1.30-1.44 ms), and so did the tropical
// forwards (Tropical-5 at 12288 x 3072: 6.3 -> 8.4 ms).
constexpr long TILE_ELEMENTS = 1L << 20, PREFETCH = 16;
constexpr int B = 8;  // rows a family's block function works on at once (its loops unroll over them; 4 and 16: slower)
constexpr long NO_PANELS = LONG_MAX;
template <class F, bool BACKWARD> static inline long tile_rows(long N, long C, int threads) {
    if (C >= (BACKWARD ? F::BACKWARD_PANEL_C : F::FORWARD_PANEL_C)) return B;
    // Every thread gets the same number of tiles, all of about the same height: with tiles of TILE_ELEMENTS, 4096 rows
    // of 1536 made 7 tiles, 4 for one thread and 3 for the other, and the forward took 1.33x its balanced time.
    const long share = (N + threads - 1) / threads, tallest = std::max<long>(B, TILE_ELEMENTS / std::max(C, 1L));
    const long per_thread = (share + tallest - 1) / tallest;
    return std::max<long>(B, (share + per_thread - 1) / per_thread);
}

static inline float load(const float *p, float) { return *p; }
static inline vf load(const float *p, vf) { vf v; std::memcpy(&v, p, sizeof v); return v; }
static inline void store(float *p, float v) { *p = v; }
static inline void store(float *p, vf v) { std::memcpy(p, &v, sizeof v); }

// Outputs of STREAM_BYTES or more go to memory with non-temporal stores where a family's walk gains by it: the stores
// skip the read of each line before it is written and leave the caches to the inputs (and to the Python that runs
// between kernels), as glibc's memcpy does for large copies. Only where every store writes a whole line: walks in
// memory order (rows, and the columns' tiles of B rows across all channels: F::STREAM_FORWARD, F::STREAM_BACKWARD),
// and the backward's tall tiles of aligned rows (F::STREAM_TALL_BACKWARD). Measured (kernels alone, one process):
// - in memory order: Tropical-6 at 12288 x 3072 per channel 27.7 -> 21.8 ms, at 6.3 M elements 1.20 -> 1.01 ms;
//   Hermite-4's backward on NHWC's dim 1 11.0 -> 9.0 ms; Tropical-rational-7 (since its backward compares once a
//   threshold) backward on NHWC's dim 1 13.7 -> 11.7 ms, NCHW's dim 1 3.73 -> 3.07 ms, shared at 6.3 M 1.62 -> 1.37 ms,
//   forward at 12288 x 3072 per channel 8.1 -> 6.8 ms, shared at 6.3 M 0.89 -> 0.83 ms. The kernels bound by their
//   arithmetic lose there (Fourier-5's forward at 6.3 M 1.16 -> 1.26 ms, on NHWC's dim 1 8.2 -> 9.2 ms, its backward
//   on NHWC's dim 1 18.1 -> 20.2 ms; Hermite-4's forward at 38.5 M 5.0 -> 6.1 ms);
// - the backward down tall tiles (its dx no longer prefetched for writing): Tropical-rational-7 at 4096 x 1536 per
//   channel 2.66 -> 2.13 ms, at 12288 x 3072 20.7 -> 17.6 ms, NHWC's dim 3 12.5 -> 10.7 ms; Hermite-4 at 4096 x 1536
//   2.02 -> 1.73 ms, NHWC's dim 3 12.7 -> 10.9 ms; Fourier-5 at 12288 x 3072 20.8 -> 19.3 ms, 4096 x 1536 3.37 ->
//   3.16 ms (NHWC's dim 3 16.4 -> 16.8 ms). Tropical-6 loses at 4096 x 1536 (1.26 -> 1.35 ms; gains on NHWC's dim 3,
//   10.4 -> 9.4 ms), and the forwards down tall tiles lose (Fourier-5's at 12288 x 3072 10.0 -> 12.5 ms).
constexpr long STREAM_BYTES = 16L << 20;
static inline bool streams(bool wanted, const float *out, long elements) {
    return wanted && out && elements * long(sizeof(float)) >= STREAM_BYTES &&
           reinterpret_cast<std::uintptr_t>(out) % sizeof(vf) == 0;
}
static inline void stream(float *p, float v) { *p = v; }
static inline void stream(float *p, vf v) {  // p aligned to a vector
#if defined(__AVX512F__)
    _mm512_stream_ps(p, (__m512)v);
#elif defined(__AVX__)
    _mm256_stream_ps(p, (__m256)v);
#elif defined(__SSE__)
    _mm_stream_ps(p, (__m128)v);
#else
    store(p, v);  // no non-temporal store here (Arm: the caches decide)
#endif
}
// Streamed lines are in memory before the threads join (x86 orders them only with a fence).
static inline void fence_streams() {
#if defined(__SSE__)
    _mm_sfence();
#endif
}
template <class V> static inline void put(float *p, V v, bool streaming) {
    if (streaming) stream(p, v);
    else store(p, v);
}
template <class V> static inline V splat(float s) { return V{} + s; }

template <class V> static inline V select(bool c, V a, V b) { return c ? a : b; }
static inline vf select(vi c, vf a, vf b) { return c ? a : b; }

static inline bool invert(bool m) { return !m; }
static inline vi invert(vi m) { return ~m; }
// a > b as a mask: with AVX-512 a mask register (__mmask16), made once and used by every select and add_where that
// reads it. As a vector of -1/0, GCC compared again for each use: the tropical backwards made two compares a threshold
// and row. Tropical-rational-7's backward at 4096 x 1536 per channel 2.95 -> 2.72 ms, at 12288 x 3072 18.9 -> 17.4 ms,
// shared at 6.3 M elements 1.77 -> 1.44 ms; Tropical-6's at 12288 x 3072 14.1 -> 13.1 ms (same sums, bit for bit).
static inline bool greater(float a, float b) { return a > b; }
#if defined(__AVX512F__)
typedef __mmask16 vmask;
static inline vmask greater(vf a, vf b) { return _mm512_cmp_ps_mask((__m512)a, (__m512)b, _CMP_GT_OQ); }
static inline vmask invert(vmask m) { return vmask(~m); }
static inline vf select(vmask m, vf a, vf b) { return (vf)_mm512_mask_mov_ps((__m512)b, m, (__m512)a); }
static inline vf add_where(vf sum, vmask m, vf v) { return (vf)_mm512_mask_add_ps((__m512)sum, m, (__m512)sum, (__m512)v); }
#else
static inline vi greater(vf a, vf b) { return a > b; }
#endif
// sum + (mask ? v : 0) as one masked add.
template <class V, class M> static inline V add_where(V sum, M mask, V v) { return select(mask, sum + v, sum); }
// max(a, b) that returns NaN when either is NaN, as torch.maximum does.
template <class V> static inline V nan_max(V a, V b) { return select((b > a) | (b != b), b, a); }
template <class V> static inline V clamp_finite(V t) {
    const V big = splat<V>(FLT_MAX);
    return select(t > big, big, select(t < -big, -big, t));
}
// a + b for combining partial sums: an infinite part counts as the largest finite float, so that an overflow in one
// thread's or tile's part (+inf) and the opposite one in another's (-inf) give a finite sum, not NaN (a blown-up layer's
// gradients are then large, as within one part; NaN inputs still give NaN).
template <class V> static inline V saturated_sum(V a, V b) { return clamp_finite(clamp_finite(a) + clamp_finite(b)); }
// v with the sign bit `sign` (0 or 0x80000000) xor-ed in.
static inline float flip_sign(float v, unsigned sign) {
    unsigned a;
    std::memcpy(&a, &v, 4);
    a ^= sign;
    std::memcpy(&v, &a, 4);
    return v;
}
// v with its sign flipped where the integer held in the low mantissa bit of k is odd: (-1)^j v.
static inline float flip_if_odd(float v, float k) {
    unsigned b;
    std::memcpy(&b, &k, 4);
    return flip_sign(v, b << 31);
}
static inline vf flip_if_odd(vf v, vf k) { return (vf)((vu)v ^ ((vu)k << 31)); }

// ---- Hermite: F = sum_k a_k P_k, P_k = He_k / k!; rows: a_0..a_{K-1}; sums: g P_0 .. g P_{K-1} ------------
// Clenshaw's recurrence with every b_k saturated at the largest finite float, as the compiled twin does.
template <int N, class V> static inline V clenshaw(V x, const V *a) {
    if (N == 1) return a[0];
    const V big = splat<V>(FLT_MAX);
    V b1 = a[N - 1], b2 = V{};
    for (int k = N - 2; k >= 0; --k) {
        V t = a[k] + (x * b1) * (1.0f / (k + 1));
        if (k < N - 2) t = t - b2 * (1.0f / (k + 2));
        b2 = b1;
        b1 = clamp_finite(t);
    }
    return select((b1 >= big) | (b1 <= -big), b1 * splat<V>(__builtin_inff()), b1);
}

struct Hermite {
    static constexpr bool PLAIN_WHERE_FINITE = false;
    static constexpr int FORWARD_ROWS = K, BACKWARD_ROWS = K, SUMS = K;
    static constexpr bool STREAM_FORWARD = false, STREAM_BACKWARD = true, STREAM_TALL_BACKWARD = true;
    static constexpr long FORWARD_PANEL_C = K <= 8 ? 1024 : NO_PANELS, BACKWARD_PANEL_C = K <= 5 ? 512 : K <= 12 ? 2048 : NO_PANELS;
    static constexpr bool PREFETCH_NEXT_VECTOR = false;
    static constexpr long ROW_PREFETCH = 0, PANEL_PREFETCH = 4;
    template <class V> static inline void forward_block(const V *x, V *y, const V *a, const float *, bool) {
        for (int r = 0; r < B; ++r) y[r] = clenshaw<K>(x[r], a);
    }
    template <class V> static inline void backward_block(const V *x, const V *g, V *d, const V *a, V *s, const float *) {
        for (int r = 0; r < B; ++r) {
            d[r] = g[r] * clenshaw<K - 1>(x[r], a + 1);  // P_k' = P_{k-1}
            s[0] += g[r];
            s[1] += g[r] * x[r];
            V p_prev = splat<V>(1.0f), p = x[r];
            for (int k = 1; k < K - 1; ++k) {
                V p_next = clamp_finite((x[r] * p - p_prev) * (1.0f / (k + 1)));
                s[k + 1] += g[r] * p_next;
                p_prev = p;
                p = p_next;
            }
        }
    }
};

// ---- Fourier: F = a_0 + sum_k (c_k / k!) cos(z_k), z_k = w_k x - phi_k -------------------------------------
// Forward rows: bias, w/pi [K], -phi/pi [K], c/k! [K] (z in half turns); consts: fourier.py's 5 sine and 5 cosine
// coefficients (the cosine's used). Backward rows: bias, 2w/pi [K], -2phi/pi [K], c/k! [K], -(c/k!) w [K] (z in
// quarter turns); consts: fourier.py's QUARTER_ 3 sine and 4 cosine coefficients; sums: g, then per term g cos,
// g sin, g x sin. Term by term over the block's rows, so that only one term's coefficients and sums are live at a
// time (all of them at once spill).
constexpr float ROUNDER = 12582912.0f;  // 1.5 * 2^23: u + ROUNDER - ROUNDER rounds u to an integer

template <class V> static inline V horner(V t, const float *c, int n) {
    V acc = t * c[n - 1] + c[n - 2];
    for (int i = n - 3; i >= 0; --i) acc = acc * t + c[i];
    return acc;
}
// cos(pi u): u = j + f, f in [-1/2, 1/2] (exact for |u| < 2^22), negated for odd j.
template <class V> static inline V cos_pi(V u, const float *poly) {
    const V k = u + ROUNDER, f = u - (k - ROUNDER);
    return flip_if_odd(horner(f * f, poly + 5, 5), k);
}
// sin and cos of (pi / 2) v, v = j + f (reduce_turns): j mod 4, in the low bits of k, rotates (s, c) = the sine and
// cosine of (pi / 2) f: an odd j swaps them, the sine is negated for j = 2, 3 (mod 4) and the cosine for j = 1, 2.
static inline void rotate_quarters(float k, float s, float c, float &sin_v, float &cos_v) {
    unsigned bits;
    std::memcpy(&bits, &k, 4);
    const unsigned odd = bits << 31, second = (bits << 30) & 0x80000000u;
    sin_v = flip_sign(odd ? c : s, second);
    cos_v = flip_sign(odd ? s : c, second ^ odd);
}
static inline void rotate_quarters(vf k, vf s, vf c, vf &sin_v, vf &cos_v) {
    const vu odd = (vu)k << 31, second = ((vu)k << 30) & 0x80000000u;
    const vi swap = (vi)odd < 0;
    sin_v = (vf)((vu)(swap ? c : s) ^ second);
    cos_v = (vf)((vu)(swap ? s : c) ^ (second ^ odd));
}
// v = j + f with f in [-1/2, 1/2] (exact for |v| < 2^22): k holds j in its low bits, t = f^2.
template <class V> static inline void reduce_turns(V v, V &k, V &f, V &t) {
    k = v + ROUNDER, f = v - (k - ROUNDER), t = f * f;
}

struct Fourier {
    static constexpr bool PLAIN_WHERE_FINITE = false;
    // The backward walks its block's rows H at a time: all B = 8 at once kept x, g, g x and dx of 8 rows live with the
    // sine's and cosine's temporaries, more than the 32 vector registers, and the spills cost a third of its time
    // (backward at 128x56x56x96 per channel: 24 ms with 8, 17 ms with 4, 16-21 ms with 2). Within the H rows it reduces
    // the next term's argument while it evaluates this term's polynomials (see backward_block), and that fits in the
    // registers with H = 2, not with 4.
    static constexpr int H = 2;
    static_assert(B % H == 0);
    static constexpr int FORWARD_ROWS = 1 + 3 * K, BACKWARD_ROWS = 1 + 4 * K, SUMS = 1 + 3 * K;
    static constexpr bool STREAM_FORWARD = false, STREAM_BACKWARD = false, STREAM_TALL_BACKWARD = true;
    static constexpr long FORWARD_PANEL_C = 1024, BACKWARD_PANEL_C = NO_PANELS;
    static constexpr bool PREFETCH_NEXT_VECTOR = true;
    static constexpr long ROW_PREFETCH = 512, PANEL_PREFETCH = 0;  // see row_segment's note and TILE_ELEMENTS'
    template <class V> static inline void forward_block(const V *x, V *y, const V *a, const float *poly, bool) {
        for (int r = 0; r < B; ++r) y[r] = a[0];
        for (int k = 0; k < K; ++k) {
            const V w = a[1 + k], phi = a[1 + K + k], weight = a[1 + 2 * K + k];
            for (int r = 0; r < B; ++r) y[r] = weight * cos_pi(w * x[r] + phi, poly) + y[r];
        }
    }
    // Term k's sine and cosine are a chain of about 35 cycles (the argument, its reduction, the polynomials, the
    // rotation) before the four multiply-adds that use them. Written term after term, the block ran at about two thirds
    // of the rate this Zen 5's execution units allow for its operations (47.5 cycles a vector, one thread, data in L2).
    // So the argument of term k + 1 is reduced (j, f, f^2) one step ahead, in the same pass as term k's polynomials:
    // 40 cycles a vector, and the same operations in the same order for each sum, so the same bits. The walks, 2
    // threads, two builds alternated in one process: 6.3 M elements shared 2.47 -> 2.31 ms, 4096 x 1536 per channel
    // 2.85 -> 2.78 ms, 12288 x 3072 17.3 -> 17.0 ms, NHWC's dim 1 16.8 -> 15.8 ms, dim 3 17.8 -> 17.0 ms (with H = 4 it
    // spilled: 6.3 M 3.6 ms); Fourier-8 at 6.3 M 3.67 -> 3.25 ms, Fourier-3 (near memory's speed) lost 2-4 % in the rows
    // walks. Done the same way in the forward, the block gained alone (21.6 -> 19.4 cycles) but the walks did not (their
    // speed there is memory's).
    template <class V> static inline void backward_block(const V *x, const V *g, V *d, const V *a, V *s, const float *poly) {
        for (int r = 0; r < B; ++r) s[0] += g[r];
        for (int h = 0; h < B; h += H) {
            V gx[H], dh[H], j[H], f[H], t[H];  // j, f, t: the next term's reduced argument
            const auto reduce_term = [&](int k) {  // term k's argument (w_k x + phi_k) reduced, into j, f, t
                for (int r = 0; r < H; ++r) reduce_turns(a[1 + k] * x[h + r] + a[1 + K + k], j[r], f[r], t[r]);
            };
            for (int r = 0; r < H; ++r) gx[r] = g[h + r] * x[h + r], dh[r] = V{};
            reduce_term(0);
            for (int k = 0; k < K; ++k) {
                const V slope = a[1 + 3 * K + k];
                V s_cos = s[1 + 3 * k], s_sin = s[2 + 3 * k], s_xsin = s[3 + 3 * k], jk[H], fk[H], tk[H];
                for (int r = 0; r < H; ++r) jk[r] = j[r], fk[r] = f[r], tk[r] = t[r];
                if (k + 1 < K) reduce_term(k + 1);
                for (int r = 0; r < H; ++r) {
                    V sin_u, cos_u;
                    rotate_quarters(jk[r], fk[r] * horner(tk[r], poly, 3), horner(tk[r], poly + 3, 4), sin_u, cos_u);
                    dh[r] = slope * sin_u + dh[r];
                    s_cos = g[h + r] * cos_u + s_cos;
                    s_sin = g[h + r] * sin_u + s_sin;
                    s_xsin = gx[r] * sin_u + s_xsin;
                }
                s[1 + 3 * k] = s_cos, s[2 + 3 * k] = s_sin, s[3 + 3 * k] = s_xsin;
            }
            for (int r = 0; r < H; ++r) d[h + r] = g[h + r] * dh[r];
        }
    }
};

// ---- max of lines: max_k (s_k x + c_k), line by line over the block's rows -------------------------------
// Where the block's x and the coefficients are all finite, no line is NaN and a plain max (one vmaxps a line, against
// nan_max's compares, mask or and select) gives torch.maximum's result, signed zeros included; otherwise the block
// takes nan_max. Tropical-rational-7's forward at 6.3 M elements: 1.39 -> 1.05 ms. The coefficients are checked once a
// call for each vector of channels (finite_coefficients) or once a channel in the rows walk, and passed to every
// family's forward_block as `rows_finite`: GCC did not hoist the check of 28 coefficient vectors out of the block loop
// (Tropical-rational-7's forward per channel at 4096 x 1536: 1.35 -> 1.25 ms; on NHWC's dim 1: 6.0 -> 5.2 ms).
template <class V> static inline V plain_max(V a, V b) { return b > a ? b : a; }
template <class V> static inline auto finite(V v) { return (v - v) == V{}; }  // false for NaN and +-inf
static inline bool any_lane(bool m) { return m; }
static inline bool any_lane(vi m) {
    int any = 0;
    for (int l = 0; l < W; ++l) any |= m[l];
    return any != 0;
}
template <class V> static inline bool all_finite(const V *v, int n) {
    auto ok = finite(v[0]);
    for (int j = 1; j < n; ++j) ok = ok & finite(v[j]);
    return !any_lane(invert(ok));
}
template <bool PLAIN, class V> static inline void max_of_lines(const V *x, V *best, const V *slopes, const V *intercepts) {
    for (int r = 0; r < B; ++r) best[r] = slopes[0] * x[r] + intercepts[0];
    for (int k = 1; k < K; ++k)
        for (int r = 0; r < B; ++r) {
            const V line = slopes[k] * x[r] + intercepts[k];
            best[r] = PLAIN ? plain_max(best[r], line) : nan_max(best[r], line);
        }
}

// Backward of M maxes of lines from their breakpoints (tropical.py's `breakpoints`): per max, K slopes sorted
// ascending then K - 1 thresholds T; sorted line k wins on (T[k-1], T[k]]. Sums per max: g over x <= T[0] and
// over x > T[k] for each k (the pieces are their differences: `piece_sums` below), then the same of g x if GX.
// consts[0] scales g (Tropical's fixed scale); the second max is subtracted (a tropical rational function).
// The block is walked H rows at a time, as Fourier's: x, g, g x, the slope and dx of 8 rows are more than the 32 vector
// registers, and which values GCC spills decides the speed. Tropical-rational-7's backward on 128x56x56x96 per channel
// on dim 1: 13.5 ms as written (H = 8), 14.9 ms with H = 4, and 18-21 ms with the same arithmetic written without the
// H loop, or with dx accumulated in d[] (measured with benchmarks/activations.py --layouts: check it after any change).
template <int M, bool GX> struct Pieces {
    static constexpr int H = B;
    static constexpr bool PREFETCH_NEXT_VECTOR = false;
    static constexpr long ROW_PREFETCH = 0, PANEL_PREFETCH = 0;
    static constexpr int MAXES = M, GROUPS = M * (GX ? 2 : 1);  // groups of K sums: per max g, then g x if GX
    static constexpr int BACKWARD_ROWS = M * (2 * K - 1), SUMS = GROUPS * K;
    template <class V> static inline void backward_block(const V *x, const V *g, V *d, const V *a, V *s, const float *consts) {
        const V zero = V{};
        for (int h = 0; h < B; h += H) {  // H rows at a time: x, g, g x, the slope and dx of each are live throughout
            V gs[H], gx[H], slope[H], dh[H];
            for (int r = 0; r < H; ++r) {
                gs[r] = g[h + r] * consts[0];
                gx[r] = gs[r] * x[h + r];
                dh[r] = V{};
            }
            for (int m = 0; m < M; ++m) {
                const V *slopes = a + m * (2 * K - 1), *thresholds = slopes + K;
                V *sums = s + m * K * (GX ? 2 : 1);
                for (int r = 0; r < H; ++r) slope[r] = slopes[0];
                for (int k = 0; k < K - 1; ++k) {
                    const V t = thresholds[k], next = slopes[k + 1];
                    V first = zero, first_x = zero, above_g = zero, above_gx = zero;
#pragma GCC unroll 16
                    for (int r = 0; r < H; ++r) {
                        const auto above = greater(x[h + r], t);
                        slope[r] = select(above, next, slope[r]);
                        above_g = add_where(above_g, above, gs[r]);
                        if (GX) above_gx = add_where(above_gx, above, gx[r]);
                        if (k == 0) {
                            const auto not_above = invert(above);  // NaN included, as in the compiled twin
                            first = add_where(first, not_above, gs[r]);
                            if (GX) first_x = add_where(first_x, not_above, gx[r]);
                        }
                    }
                    sums[1 + k] += above_g;
                    if (GX) sums[K + 1 + k] += above_gx;
                    if (k == 0) {
                        sums[0] += first;
                        if (GX) sums[K] += first_x;
                    }
                }
                for (int r = 0; r < H; ++r) dh[r] = m == 0 ? dh[r] + slope[r] : dh[r] - slope[r];
            }
            for (int r = 0; r < H; ++r) d[h + r] = gs[r] * dh[r];
        }
    }
};

// Tropical: F = scale * max_k (k x + c_k); rows: c [K]; consts[0]: scale.
struct Tropical : Pieces<1, false> {
    static constexpr bool PLAIN_WHERE_FINITE = true;
    static constexpr int FORWARD_ROWS = K;
    static constexpr bool STREAM_FORWARD = true, STREAM_BACKWARD = true, STREAM_TALL_BACKWARD = false;
    static constexpr long FORWARD_PANEL_C = K <= 8 ? 1024 : NO_PANELS, BACKWARD_PANEL_C = K <= 8 ? 512 : NO_PANELS;
    template <class V>
    static inline void forward_block(const V *x, V *y, const V *c, const float *consts, bool rows_finite) {
        V slopes[K];
        for (int k = 0; k < K; ++k) slopes[k] = splat<V>(float(k));
        if (rows_finite && all_finite(x, B)) max_of_lines<true>(x, y, slopes, c);
        else max_of_lines<false>(x, y, slopes, c);
        for (int r = 0; r < B; ++r) y[r] = y[r] * consts[0];
    }
};

// Tropical rational: F = max_k (p_k x + c_k) - max_k (q_k x + d_k); rows: p, c, q, d [K each].
struct TropicalRational : Pieces<2, true> {
    static constexpr bool PLAIN_WHERE_FINITE = true;
    static constexpr int FORWARD_ROWS = 4 * K;
    static constexpr bool STREAM_FORWARD = true, STREAM_BACKWARD = true, STREAM_TALL_BACKWARD = true;
    static constexpr long FORWARD_PANEL_C = 2048, BACKWARD_PANEL_C = NO_PANELS;
    template <class V> static inline void forward_block(const V *x, V *y, const V *a, const float *, bool rows_finite) {
        V den[B];
        if (rows_finite && all_finite(x, B)) {
            max_of_lines<true>(x, y, a, a + K);
            max_of_lines<true>(x, den, a + 2 * K, a + 3 * K);
        } else {
            max_of_lines<false>(x, y, a, a + K);
            max_of_lines<false>(x, den, a + 2 * K, a + 3 * K);
        }
        for (int r = 0; r < B; ++r) y[r] = y[r] - den[r];
    }
};

// ---- drivers ------------------------------------------------------------------------------------------------
// A vector's lanes added up (saturating).
static inline float lane_total(vf v) {
    float total = 0.0f;
    for (int l = 0; l < W; ++l) total = saturated_sum(total, v[l]);
    return total;
}

// sums[i] = the threads' parts partial[t * n + i] added up (saturating).
static void combine_partials(const std::vector<float> &partial, int threads, long n, float *sums) {
    std::memcpy(sums, partial.data(), n * sizeof(float));
    for (int t = 1; t < threads; ++t)
        for (long i = 0; i < n; ++i) sums[i] = saturated_sum(sums[i], partial[size_t(t) * n + i]);
}

// n values per channel (coefficients or sums) for the columns walk, vector of channels by vector: the W channels of
// vector v have their n values together, [C / W][n][W], and the last C % W channels theirs as [n][C % W]. A tile then
// reads its coefficients and adds its sums in a few adjacent lines (in cpu.py's [C, n] a vector's value j is strided;
// in [n, C] rows, n lines C floats apart: in 8-row tiles across all channels those were n more streams for the
// prefetchers, and Tropical-rational-7's backward at 12288 x 3072 took 40 ms there against 18-21 ms this way).
struct ChannelVectors {
    long C, full;  // full: channels in whole vectors
    int n;
    ChannelVectors(long C, int n) : C(C), full(C / W * W), n(n) {}
    long size() const { return C * n; }
    long at(long c) const { return c < full ? c / W * n * W + c % W : full * n + (c - full); }  // channel c's value 0
    long stride(long c) const { return c < full ? W : C - full; }                            // from value j to j + 1
    void from_channels(const float *channels, float *out) const {  // channels: [C, n]
        for (long c = 0; c < C; ++c)
            for (int j = 0; j < n; ++j) out[at(c) + j * stride(c)] = channels[c * n + j];
    }
    // The same in storage of whole vectors: each vector of channels' values then start on a vector boundary.
    std::vector<vf> laid_out(const float *channels) const {
        std::vector<vf> storage((size() + W - 1) / W);
        from_channels(channels, reinterpret_cast<float *>(storage.data()));
        return storage;
    }
    void to_channels(const float *in, float *channels) const {
        for (long c = 0; c < C; ++c)
            for (int j = 0; j < n; ++j) channels[c * n + j] = in[at(c) + j * stride(c)];
    }
};

// A tile: rows [0, nr) of one vector of channels (or one channel, V = float), in blocks of B rows (zero-padded). Its
// coefficients and sums are `step` floats apart (ChannelVectors).
template <class V> static inline int load_block(const float *p, long nr, long r0, long C, V *out) {
    const int n = int(std::min<long>(B, nr - r0));
    for (int r = 0; r < B; ++r) out[r] = r < n ? load(p + (r0 + r) * C, V{}) : V{};
    return n;
}

// A tile's coefficients: copied into `copy` for a tall tile, whose rows then read them from there; read in place for a
// panel's tile (B rows), where the copy cost more than the rows' reads: Fourier-5's forward at 4096 x 1536 per channel
// 1.52 -> 1.37 ms and 1.45 -> 1.29 ms (two builds alternated in one process; each tile stored its 16 coefficient
// vectors on the stack and loaded them back). In place only for a whole vector of channels, whose values start on a
// vector boundary, W floats apart (ChannelVectors::laid_out).
template <class V, int ROWS, bool PANEL>
static inline const V *tile_coefficients(const float *coefficients, long step, V *copy) {
    if constexpr (PANEL && sizeof(V) == sizeof(vf)) return reinterpret_cast<const V *>(coefficients);
    for (int j = 0; j < ROWS; ++j) copy[j] = load(coefficients + j * step, V{});
    return copy;
}

template <class F, class V, bool PANEL>
static inline void forward_tile(const float *x, float *y, const float *coefficients, long step, long nr, long C,
                                const float *consts, bool rows_finite, bool streaming) {
    V copy[F::FORWARD_ROWS];
    const V *a = tile_coefficients<V, F::FORWARD_ROWS, PANEL>(coefficients, step, copy);
    for (long r0 = 0; r0 < nr; r0 += B) {
        V xb[B], yb[B];
        if constexpr (PANEL && F::PANEL_PREFETCH > 0) {
            for (int r = 0; r < B; ++r) {
                __builtin_prefetch(x + r * C + F::PANEL_PREFETCH * W);
                if (!streaming) __builtin_prefetch(y + r * C + F::PANEL_PREFETCH * W, 1);
            }
        } else if (r0 + PREFETCH + B <= nr)
            for (int r = 0; r < B; ++r) {
                __builtin_prefetch(x + (r0 + PREFETCH + r) * C);
                __builtin_prefetch(y + (r0 + PREFETCH + r) * C, 1);
            }
        const int n = load_block(x, nr, r0, C, xb);
        F::forward_block(xb, yb, a, consts, rows_finite);
        for (int r = 0; r < n; ++r) put(y + (r0 + r) * C, yb[r], streaming);
    }
}

template <class F, class V, bool PANEL>
static inline void backward_tile(const float *x, const float *g, float *dx, float *acc, const float *coefficients, long step,
                                 long nr, long C, const float *consts, bool streaming, long next = 0) {
    V copy[F::BACKWARD_ROWS];
    const V *a = tile_coefficients<V, F::BACKWARD_ROWS, PANEL>(coefficients, step, copy);
    V s[F::SUMS] = {};
    for (long r0 = 0; r0 < nr; r0 += B) {
        V xb[B], gb[B], db[B];
        if constexpr (PANEL && F::PANEL_PREFETCH > 0) {
            for (int r = 0; r < B; ++r) {
                __builtin_prefetch(x + r * C + F::PANEL_PREFETCH * W);
                __builtin_prefetch(g + r * C + F::PANEL_PREFETCH * W);
                if (dx && !streaming) __builtin_prefetch(dx + r * C + F::PANEL_PREFETCH * W, 1);
            }
        } else if constexpr (F::PREFETCH_NEXT_VECTOR && !PANEL) {
            for (int r = 0; r < B; ++r) {  // past the tile's end: the next vector of channels' first rows, if `next`
                long row = r0 + PREFETCH + r, at = 0;
                const bool past = row >= nr;
                if (past) row -= nr, at = next;
                if (row < nr && (!past || next)) {
                    at += row * C;
                    __builtin_prefetch(x + at);
                    __builtin_prefetch(g + at);
                    if (dx && !streaming) __builtin_prefetch(dx + at, 1);
                }
            }
        } else if (r0 + PREFETCH + B <= nr) {
            for (int r = 0; r < B; ++r) {
                __builtin_prefetch(x + (r0 + PREFETCH + r) * C);
                __builtin_prefetch(g + (r0 + PREFETCH + r) * C);
                if (dx && !streaming) __builtin_prefetch(dx + (r0 + PREFETCH + r) * C, 1);
            }
        }
        load_block(x, nr, r0, C, xb);
        const int n = load_block(g, nr, r0, C, gb);  // padding rows have g = 0: they add nothing to the sums
        F::backward_block(xb, gb, db, a, s, consts);
        if (dx)
            for (int r = 0; r < n; ++r) put(dx + (r0 + r) * C, db[r], streaming);
    }
    // The tile's sums go in clamped to finite floats: a thread's running sum can then overflow to an infinity but never
    // become NaN from +inf + -inf, and combine_partials clamps it again (cheaper than saturated_sum at every tile).
    for (int j = 0; j < F::SUMS; ++j) store(acc + j * step, load(acc + j * step, V{}) + clamp_finite(s[j]));
}

// Per vector of channels (then per channel of the tail), whether its coefficients are all finite, for the families
// whose forward takes a plain max there (F::PLAIN_WHERE_FINITE; the others ignore it). Found once a call, not once a
// tile: in tiles of B rows, Tropical-rational-7's forward at 12288 x 3072 took 8.5 ms against 7.9 ms, at 6144 x 2048
// 2.9 ms against 2.7 ms.
template <class F> static std::vector<unsigned char> finite_coefficients(const ChannelVectors &layout, const float *a) {
    const long vectors = layout.full / W;
    std::vector<unsigned char> finite(vectors + (layout.C - layout.full), 1);
    if (!F::PLAIN_WHERE_FINITE) return finite;
    for (long v = 0; v < vectors; ++v) {
        vf rows[F::FORWARD_ROWS];
        for (int j = 0; j < F::FORWARD_ROWS; ++j) rows[j] = load(a + layout.at(v * W) + j * W, vf{});
        finite[v] = all_finite(rows, F::FORWARD_ROWS);
    }
    for (long c = layout.full; c < layout.C; ++c) {
        float rows[F::FORWARD_ROWS];
        for (int j = 0; j < F::FORWARD_ROWS; ++j) rows[j] = a[layout.at(c) + j * layout.stride(c)];
        finite[vectors + (c - layout.full)] = all_finite(rows, F::FORWARD_ROWS);
    }
    return finite;
}

// One tile's nr rows across all channels, a vector of channels at a time.
template <class F, bool PANEL>
static void forward_tiles(const float *x, float *y, const float *a, const ChannelVectors &layout,
                          const std::vector<unsigned char> &finite, long nr, const float *consts, bool streaming) {
    const long C = layout.C;
    long c = 0;
    for (; c + W <= C; c += W)
        forward_tile<F, vf, PANEL>(x + c, y + c, a + layout.at(c), W, nr, C, consts, finite[c / W], streaming);
    for (; c < C; ++c)
        forward_tile<F, float, PANEL>(x + c, y + c, a + layout.at(c), layout.stride(c), nr, C, consts,
                                      finite[layout.full / W + (c - layout.full)], false);
}

template <class F>
static void forward(const float *x, float *y, const float *rows, long N, long C, const float *consts, int threads) {
    const long R = tile_rows<F, false>(N, C, threads), tiles = (N + R - 1) / R;
    const ChannelVectors layout(C, F::FORWARD_ROWS);
    const std::vector<vf> coefficients = layout.laid_out(rows);
    const float *a = reinterpret_cast<const float *>(coefficients.data());
    const std::vector<unsigned char> finite = finite_coefficients<F>(layout, a);
    const bool streaming = C % W == 0 && streams(R == B && F::STREAM_FORWARD, y, N * C);  // rows aligned
    const auto tiles_of = R == B ? forward_tiles<F, true> : forward_tiles<F, false>;
#pragma omp parallel num_threads(threads)
    {
#pragma omp for schedule(static)
        for (long t = 0; t < tiles; ++t)
            tiles_of(x + t * R * C, y + t * R * C, a, layout, finite, std::min(R, N - t * R), consts, streaming);
        fence_streams();
    }
}

// One tile's nr rows across all channels, a vector of channels at a time, its sums added to the thread's `acc`.
template <class F, bool PANEL>
static void backward_tiles(const float *x, const float *g, float *dx, float *acc, const float *a,
                           const ChannelVectors &layout, const ChannelVectors &sum_layout, long nr, const float *consts,
                           bool streaming) {
    const long C = layout.C;
    long c = 0;
    for (; c + W <= C; c += W)
        backward_tile<F, vf, PANEL>(x + c, g + c, dx ? dx + c : nullptr, acc + sum_layout.at(c), a + layout.at(c), W, nr,
                                    C, consts, streaming, c + 2 * W <= C ? W : 0);
    for (; c < C; ++c)
        backward_tile<F, float, PANEL>(x + c, g + c, dx ? dx + c : nullptr, acc + sum_layout.at(c), a + layout.at(c),
                                       layout.stride(c), nr, C, consts, false);
}

// sums: [C, SUMS], overwritten. dx may be null (no input gradient wanted).
template <class F>
static void backward(const float *x, const float *g, float *dx, float *sums, const float *rows, long N, long C,
                     const float *consts, int threads) {
    const long R = tile_rows<F, true>(N, C, threads), tiles = (N + R - 1) / R;
    threads = int(std::max(1L, std::min<long>(threads, tiles)));
    const ChannelVectors layout(C, F::BACKWARD_ROWS), sum_layout(C, F::SUMS);
    std::vector<float> partial(size_t(threads) * sum_layout.size(), 0.0f);
    const std::vector<vf> coefficients = layout.laid_out(rows);
    const float *a = reinterpret_cast<const float *>(coefficients.data());
    const bool streaming = C % W == 0 && streams(R == B ? F::STREAM_BACKWARD : F::STREAM_TALL_BACKWARD, dx, N * C);
    const auto tiles_of = R == B ? backward_tiles<F, true> : backward_tiles<F, false>;
#pragma omp parallel num_threads(threads)
    {
        const int t = omp_get_thread_num(), nt = omp_get_num_threads();
        float *acc = partial.data() + size_t(t) * sum_layout.size();
        for (long tile = tiles * t / nt; tile < tiles * (t + 1) / nt; ++tile) {
            const long off = tile * R * C;
            tiles_of(x + off, g + off, dx ? dx + off : nullptr, acc, a, layout, sum_layout, std::min(R, N - tile * R),
                     consts, streaming);
        }
        fence_streams();
    }
    std::vector<float> total(sum_layout.size());
    combine_partials(partial, threads, sum_layout.size(), total.data());
    sum_layout.to_channels(total.data(), sums);
}

// ---- channels outside the innermost dim: x as [O, C, I], each (o, c) a contiguous row of I elements ---------
// A row's coefficients are scalars, broadcast to every lane, and its sums lanes of vectors, added across into the
// thread's per-channel sums when the channel changes. A channel's coefficients and sums lie together in memory, and
// the next channel's are prefetched: between two uses of a channel, the rows streamed through evict them from L1 and
// L2. (Laid out [ROWS, C] and [SUMS, C], Tropical-rational-6's backward on NHWC's dim 1, 56 rows of 5376 per image,
// took 20 ms against 13 ms for the same elements with shared coefficients; now 14 ms.)
//
// The backward walks rows shorter than SHORT_ROW elements (cpu.py's SHORT_ROW too) channel by channel (all the rows of
// one channel, then the next), so that the sums stay in registers across rows: flushed row by row, its time on NCHW
// 256x160x16x16 (rows of 256) was 6.7 ms against 4.4 ms. Such rows are too short for the hardware prefetchers to
// follow from one to the next, so the channel's row AHEAD rows on is prefetched (1 row ahead: 4.6 ms, 2: 3.9 ms).
// Everything else, the forward included (it has no sums: 3.0 -> 2.6 ms there), goes in memory order, where the hardware
// prefetchers keep the lines coming. Fourier's walk also prefetches F::ROW_PREFETCH floats ahead itself (on across
// segments and rows to the end of the thread's part; not in the walk channel by channel, whose next row lies elsewhere,
// AHEAD rows on): its arithmetic per line is long, so the out-of-order window reaches only a few lines ahead, and for
// the minutes in which this VM's memory was slower (a 151 MB copy 1.7x slower, compiled GELU 1.35x) its walk slowed 2x
// where the prefetched column walks slowed like GELU. Fourier-5 at 6.3 M elements shared, forward + backward: 7.0-10.7
// -> 4.6-5.6 ms in such minutes (two builds alternated in one process, three processes); on a quiet host 3.6 ms both,
// and NCHW's dim 1 forward (rows of 256) 2.3-2.5 -> 2.1-2.3 ms. The memory-bound families lose by it on a quiet host
// (Hermite-3's forward on NHWC's dim 1 8.0-8.5 -> 8.7-9.6 ms), and so does Fourier's backward with 4 KiB ahead (by up
// to 10 %). Rows are cut into segments of SEGMENT elements so that every thread gets work; a segment's last block is
// zero-padded (x = 0 and g = 0 add nothing to a sum). Shared coefficients are the case O = C = 1.
constexpr long SEGMENT = 1L << 15, SHORT_ROW = 4096, AHEAD = 2;

template <class F, bool BACKWARD, int ROWS, int SUMS>
static inline void row_segment(const float *x, const float *g, float *out, long len, long reach, const vf *a, vf *s,
                               const float *consts, bool rows_finite, bool streaming) {
    for (long i = 0; i < len; i += B * W) {
        vf xb[B], gb[B], ob[B];
        const long n = std::min<long>(B * W, len - i);
        if constexpr (F::ROW_PREFETCH > 0)
            if (i + F::ROW_PREFETCH + B * W <= reach)
                for (int r = 0; r < B; ++r) {
                    __builtin_prefetch(x + i + F::ROW_PREFETCH + r * W);
                    if (BACKWARD) __builtin_prefetch(g + i + F::ROW_PREFETCH + r * W);
                    if (out && !streaming) __builtin_prefetch(out + i + F::ROW_PREFETCH + r * W, 1);
                }
        if (n == B * W) {
            for (int r = 0; r < B; ++r) xb[r] = load(x + i + r * W, vf{});
            if (BACKWARD)
                for (int r = 0; r < B; ++r) gb[r] = load(g + i + r * W, vf{});
        } else {
            float xp[B * W] = {}, gp[B * W] = {};
            std::memcpy(xp, x + i, n * sizeof(float));
            if (BACKWARD) std::memcpy(gp, g + i, n * sizeof(float));
            for (int r = 0; r < B; ++r) xb[r] = load(xp + r * W, vf{}), gb[r] = load(gp + r * W, vf{});
        }
        if constexpr (BACKWARD) F::backward_block(xb, gb, ob, a, s, consts);
        else F::forward_block(xb, ob, a, consts, rows_finite);
        if (!out) continue;
        if (n == B * W) {
            for (int r = 0; r < B; ++r) put(out + i + r * W, ob[r], streaming);
        } else {
            float op[B * W];
            for (int r = 0; r < B; ++r) store(op + r * W, ob[r]);
            std::memcpy(out + i, op, n * sizeof(float));
        }
    }
}

template <class F, bool BACKWARD>
static void rows_pass(const float *x, const float *g, float *out, float *sums, const float *rows, long O, long C, long I,
                      const float *consts, int threads) {
    constexpr int ROWS = BACKWARD ? F::BACKWARD_ROWS : F::FORWARD_ROWS, SUMS = BACKWARD ? F::SUMS : 1;
    const long segments = (I + SEGMENT - 1) / SEGMENT, work = O * C * segments;
    const bool by_channel = BACKWARD && C > 1 && I < SHORT_ROW;  // short rows: a channel's rows one after another
    threads = int(std::max(1L, std::min<long>(threads, work)));
    std::vector<float> partial(BACKWARD ? size_t(threads) * C * SUMS : 0, 0.0f);  // per thread, channel by channel
    const float *coefficients = rows;  // [C, ROWS]: one channel's in one or two lines
    const bool streaming = streams(BACKWARD ? F::STREAM_BACKWARD : F::STREAM_FORWARD, out, O * C * I);
#pragma omp parallel num_threads(threads)
    {
        const int t = omp_get_thread_num(), nt = omp_get_num_threads();
        float *acc = BACKWARD ? partial.data() + size_t(t) * C * SUMS : nullptr;
        vf a[ROWS] = {}, s[SUMS] = {};
        bool rows_finite = true;
        long channel = -1;
        auto flush = [&]() {
            if (BACKWARD && channel >= 0)
                for (int j = 0; j < SUMS; ++j)
                    acc[channel * SUMS + j] = saturated_sum(acc[channel * SUMS + j], lane_total(s[j]));
        };
        const long w0 = work * t / nt, w1 = work * (t + 1) / nt;
        const long stop = (w1 / segments) * I + (w1 % segments) * SEGMENT;  // walked in memory order: its part's end
        for (long w = w0; w < w1; ++w) {
            const long row = w / segments, start = (w % segments) * SEGMENT;
            const long o = by_channel ? row % O : row / C, c = by_channel ? row / O : row % C;
            if (c != channel) {
                flush();
                channel = c;
                for (int j = 0; j < ROWS; ++j) a[j] = splat<vf>(coefficients[c * ROWS + j]);
                for (int j = 0; j < SUMS; ++j) s[j] = vf{};
                if (!BACKWARD && F::PLAIN_WHERE_FINITE) rows_finite = all_finite(a, ROWS);
            }
            if (w + 1 < w1) {  // the next segment's channel: its coefficients and sums
                const long next = (w + 1) / segments, cn = by_channel ? next / O : next % C;
                for (int j = 0; j < ROWS; j += 8) __builtin_prefetch(coefficients + cn * ROWS + j);
                if (BACKWARD)
                    for (int j = 0; j < SUMS; j += 8) __builtin_prefetch(acc + cn * SUMS + j, 1);
            }
            const long off = (o * C + c) * I + start;
            if (by_channel && o + AHEAD < O)  // this channel's row AHEAD rows on, AHEAD * C * I floats on
                for (long i = 0; i < I; i += 16) {
                    __builtin_prefetch(x + off + AHEAD * C * I + i);
                    if (BACKWARD) __builtin_prefetch(g + off + AHEAD * C * I + i);
                    if (out && !streaming) __builtin_prefetch(out + off + AHEAD * C * I + i, 1);
                }
            const long len = std::min(SEGMENT, I - start), reach = by_channel ? len : stop - off;
            row_segment<F, BACKWARD, ROWS, SUMS>(x + off, BACKWARD ? g + off : nullptr, out ? out + off : nullptr,
                                                 len, reach, a, s, consts, rows_finite,
                                                 streaming && reinterpret_cast<std::uintptr_t>(out + off) % sizeof(vf) == 0);
        }
        flush();
        fence_streams();
    }
    if (BACKWARD) combine_partials(partial, threads, C * SUMS, sums);  // [C, SUMS] per thread, as the output
}

// ---- breakpoints of a max of K lines, per channel: tropical.py's `breakpoints`, element for element ------------
// The lines sorted by slope (stable), their order, and the K - 1 thresholds T: sorted line k wins on (T[k-1], T[k]].
// T[k-1] = min over lines i >= k of max over j < k of the x above which line i beats line j, computed in double
// and rounded to float so that `x > T` in float is the exact comparison (see tropical.py).
//
// N channels at once, one per lane of a vector of doubles (N = 1 for the channels left over). Each channel's lines are
// sorted by rank: line j goes before line i if its slope is smaller (NaN counting as the largest) or equal with j < i,
// as a stable torch.sort. For 3072 channels of 7 random lines, 2 threads: the torch version 2.4-4.9 ms (many small
// float64 ops; cummax/cummin are not vectorised), a scalar loop a channel 0.5-0.6 ms (~1000 cycles a channel of
// compares, unpredictable branches and divisions), this 0.05 ms.
template <int N> struct Lanes {
    typedef double d __attribute__((vector_size(N * 8)));
    typedef long long l __attribute__((vector_size(N * 8)));
    typedef float f __attribute__((vector_size(N * 4)));
    typedef int i __attribute__((vector_size(N * 4)));
};

// std::nextafter(l, -inf) lane by lane for a finite l or +inf (all that is nudged): the next float below, as integers.
template <class F, class I> static inline F next_down(F l) {
    const I bits = (I)l;
    return (F)(l > 0.0f ? bits - 1 : (l == 0.0f ? I{} + int(0x80000001u) : bits + 1));  // 0 -> -(smallest subnormal)
}

template <int N>
static void lane_breakpoints(const float *slopes, const float *intercepts, float *sorted_slopes, long *order,
                             float *thresholds) {
    using vd = typename Lanes<N>::d;
    using vl = typename Lanes<N>::l;
    using vf = typename Lanes<N>::f;
    using vi = typename Lanes<N>::i;
    vf s[K], c[K];
    for (int k = 0; k < K; ++k)
        for (int n = 0; n < N; ++n) s[k][n] = slopes[n * K + k], c[k][n] = intercepts[n * K + k];
    auto below = [&](int j, int i) { return (s[j] < s[i]) | ((s[i] != s[i]) & (s[j] == s[j])); };  // j's key < i's
    vi rank[K];
    for (int i = 0; i < K; ++i) {
        rank[i] = vi{};
        for (int j = 0; j < K; ++j)
            if (j != i) rank[i] -= j < i ? ~below(i, j) : below(j, i);  // masks are -1
    }
    vf ss[K], sc[K];
    vi si[K];
    for (int k = 0; k < K; ++k) {
        ss[k] = sc[k] = vf{};
        si[k] = vi{};
        for (int i = 0; i < K; ++i) {
            const vi here = rank[i] == k;
            ss[k] = here ? s[i] : ss[k];
            sc[k] = here ? c[i] : sc[k];
            si[k] = here ? vi{} + i : si[k];
        }
    }
    vd sd[K], cd[K];
    vl id[K];
    for (int k = 0; k < K; ++k) {
        sd[k] = __builtin_convertvector(ss[k], vd);
        cd[k] = __builtin_convertvector(sc[k], vd);
        id[k] = __builtin_convertvector(si[k], vl);
    }
    vf low[K][K];  // low[i][j] for j < i: all that the thresholds read
    const vd inf = vd{} + __builtin_inf(), one = vd{} + 1.0;
    for (int i = 1; i < K; ++i)
        for (int j = 0; j < i; ++j) {
            const vl i_first = id[i] < id[j], steeper = sd[i] > sd[j];
            const vd crossing = (cd[j] - cd[i]) / (steeper ? sd[i] - sd[j] : one);
            const vd above = steeper ? crossing : (((cd[i] > cd[j]) | ((cd[i] == cd[j]) & i_first)) ? -inf : inf);
            const vf l = __builtin_convertvector(above, vf);
            const vd back = __builtin_convertvector(l, vd);
            const vi nudge = __builtin_convertvector((back > above) | (i_first & steeper & (back == above)), vi);
            low[i][j] = nudge ? next_down<vf, vi>(l) : l;
        }
    for (int k = 1; k < K; ++k) {
        vf t = vf{} + __builtin_inff();
        for (int i = k; i < K; ++i) {
            vf m = vf{} - __builtin_inff();
            for (int j = 0; j < k; ++j) m = m < low[i][j] ? low[i][j] : m;  // std::max: NaN passes over
            t = m < t ? m : t;                                              // std::min
        }
        for (int n = 0; n < N; ++n) thresholds[n * (K - 1) + k - 1] = t[n];
    }
    for (int k = 0; k < K; ++k)
        for (int n = 0; n < N; ++n) sorted_slopes[n * K + k] = ss[k][n], order[n * K + k] = si[k][n];
}

extern "C" void breakpoints(const float *slopes, const float *intercepts, long C, float *sorted_slopes, long *order,
                            float *thresholds, int threads) {
    constexpr int N = W / 2;  // channels at once: a vector of doubles
    const long groups = C / N;
#pragma omp parallel for num_threads(threads) schedule(static) if (groups > 64)
    for (long g = 0; g < groups; ++g)
        lane_breakpoints<N>(slopes + g * N * K, intercepts + g * N * K, sorted_slopes + g * N * K, order + g * N * K,
                            thresholds + g * N * (K - 1));
    for (long c = groups * N; c < C; ++c)
        lane_breakpoints<1>(slopes + c * K, intercepts + c * K, sorted_slopes + c * K, order + c * K,
                            thresholds + c * (K - 1));
}

// Each line's sum in the lines' own order from the backward's per-piece sums, tropical.py's `piece_sums` for G groups
// at once: group g of channel c holds, in sorted order, [0] the sum over x <= T[0] and [k] the sum over x > T[k-1];
// sorted line k wins on (T[k-1], T[k]], so its sum is [k] - [k + 1] (the first and last as they are). Group g uses
// max of lines `maxes[g]`'s order ([M, C, K]) and is multiplied by signs[g]; out is [G, C, K]. In torch these were
// ~8 small ops a group, a few microseconds each (Tropical-rational's four groups: 0.3 ms a backward at 1536 channels).
extern "C" void piece_sums(const float *cumulative, const long *order, long C, int G, const int *maxes,
                           const float *signs, float *out) {
    for (int g = 0; g < G; ++g)
        for (long c = 0; c < C; ++c) {
            const float *cum = cumulative + (c * G + g) * K;
            const long *lines = order + (maxes[g] * C + c) * K;
            float *o = out + (g * C + c) * K;
            for (int k = 0; k < K; ++k) {
                const float piece = k == 0 || k == K - 1 ? cum[k] : cum[k] - cum[k + 1];
                o[lines[k]] = signs[g] * piece;
            }
        }
}

// ---- the tropical families' backward in one call ------------------------------------------------------------
// Breakpoints of the F::MAXES maxes of lines of every channel (slopes and intercepts [M, C, K]), the rows the pass
// reads (per max its K sorted slopes and K - 1 thresholds), the pass (`pass(rows, sums)`: the columns' or the rows'
// backward), and each line's sums in the lines' own order: group (m, j) of F::SUMS, j = 0 for g and 1 for g x, from
// max m's order and negated for the second max; out [F::GROUPS, C, K]. From Python these were three calls and a dozen
// torch ops, ~0.3 ms a step after a kernel had swept the caches.
template <class F, class Pass>
static void lines_backward(const float *slopes, const float *intercepts, long C, float *out, int threads, Pass pass) {
    constexpr int M = F::MAXES, G = F::GROUPS, LINE_ROWS = 2 * K - 1;
    const long lines = M * C;
    std::vector<float> sorted(lines * K), thresholds(lines * (K - 1)), rows(C * F::BACKWARD_ROWS), sums(C * F::SUMS);
    std::vector<long> order(lines * K);
    breakpoints(slopes, intercepts, lines, sorted.data(), order.data(), thresholds.data(), threads);
    for (long c = 0; c < C; ++c)
        for (int m = 0; m < M; ++m) {
            float *row = rows.data() + c * F::BACKWARD_ROWS + m * LINE_ROWS;
            std::memcpy(row, sorted.data() + (m * C + c) * K, K * sizeof(float));
            std::memcpy(row + K, thresholds.data() + (m * C + c) * (K - 1), (K - 1) * sizeof(float));
        }
    pass(rows.data(), sums.data());
    int maxes[G];
    float signs[G];
    for (int group = 0; group < G; ++group) maxes[group] = group / (G / M), signs[group] = maxes[group] ? -1.0f : 1.0f;
    piece_sums(sums.data(), order.data(), C, G, maxes, signs, out);
}

// ---- Fourier's coefficients from its values, and its values' gradients from the backward's sums ------------
// Made in C++ (fourier_from_values below) where a cat, a multiply and a dozen slices and multiplies of [C, K] tensors
// ran (each torch call 15-80 us after a kernel has swept the caches). The same float32 operations in the same order
// as those torch ops, so the same bits (tests/test_cpu_kernels.py). scales: fourier.py's _cpu_scales (c_k's 1/k! at
// 1 + 2K + k); C = 1 for shared values.
extern "C" void fourier_rows(const float *bias, const float *w, const float *phi, const float *c, long C,
                             const float *scales, long backward, float *rows) {
    const int n = backward ? Fourier::BACKWARD_ROWS : Fourier::FORWARD_ROWS;
    for (long ch = 0; ch < C; ++ch) {
        float *row = rows + ch * n;
        const float *wc = w + ch * K, *pc = phi + ch * K, *cc = c + ch * K;
        row[0] = bias[ch] * scales[0];
        for (int k = 0; k < K; ++k) {
            row[1 + k] = wc[k] * scales[1 + k];
            row[1 + K + k] = pc[k] * scales[1 + K + k];
            row[1 + 2 * K + k] = cc[k] * scales[1 + 2 * K + k];
            if (backward) row[1 + 3 * K + k] = (cc[k] * scales[1 + 3 * K + k]) * wc[k];
        }
    }
}

// sums: [C, SUMS] (g, then per term g cos z, g sin z, g x sin z); rows: the backward's; out: each value's gradient.
extern "C" void fourier_gradients(const float *sums, const float *rows, long C, const float *scales, float *bias,
                                  float *amplitudes, float *phases, float *frequencies) {
    for (long ch = 0; ch < C; ++ch) {
        const float *s = sums + ch * Fourier::SUMS, *weight = rows + ch * Fourier::BACKWARD_ROWS + 1 + 2 * K;  // c_k / k!
        bias[ch] = s[0];
        for (int k = 0; k < K; ++k) {
            amplitudes[ch * K + k] = s[1 + 3 * k] * scales[1 + 2 * K + k];
            phases[ch * K + k] = s[2 + 3 * k] * weight[k];
            frequencies[ch * K + k] = s[3 + 3 * k] * -weight[k];
        }
    }
}

// Fourier's forward and backward from its values, one call each way: the rows (fourier_rows), the pass and, backward,
// the values' gradients (fourier_gradients), with no Python between them. As separate calls, the ctypes calls and the
// tensors between them cost a step (per channel at 4096 x 1536, after the kernels have swept the caches) 0.055-0.075
// ms before the forward's pass and 0.07-0.10 ms after the backward's; now 0.042-0.048 and 0.018-0.022 ms.
// `pass(rows, sums)` walks x: the columns' or the rows' forward (sums unused) or backward.
template <class Pass>
static void fourier_from_values(const float *bias, const float *w, const float *phi, const float *c, long C,
                                const float *scales, bool backward, float *const grads[4], Pass pass) {
    std::vector<float> rows(C * (backward ? Fourier::BACKWARD_ROWS : Fourier::FORWARD_ROWS));
    fourier_rows(bias, w, phi, c, C, scales, backward, rows.data());
    std::vector<float> sums(backward ? C * Fourier::SUMS : 0);
    pass(rows.data(), sums.data());
    if (backward) fourier_gradients(sums.data(), rows.data(), C, scales, grads[0], grads[1], grads[2], grads[3]);
}

extern "C" void fourier_forward_values(const float *x, float *y, const float *bias, const float *w, const float *phi,
                                       const float *c, const float *scales, long N, long C, const float *consts,
                                       int threads) {
    fourier_from_values(bias, w, phi, c, C, scales, false, nullptr, [&](const float *rows, float *) {
        forward<Fourier>(x, y, rows, N, C, consts, threads);
    });
}
extern "C" void fourier_forward_values_rows(const float *x, float *y, const float *bias, const float *w,
                                            const float *phi, const float *c, const float *scales, long O, long C,
                                            long I, const float *consts, int threads) {
    fourier_from_values(bias, w, phi, c, C, scales, false, nullptr, [&](const float *rows, float *) {
        rows_pass<Fourier, false>(x, nullptr, y, nullptr, rows, O, C, I, consts, threads);
    });
}
// grads: bias, amplitudes (c), phases (phi), frequencies (w), as fourier.py's values
extern "C" void fourier_backward_values(const float *x, const float *g, float *dx, float *grad_bias, float *grad_c,
                                        float *grad_phi, float *grad_w, const float *bias, const float *w,
                                        const float *phi, const float *c, const float *scales, long N, long C,
                                        const float *consts, int threads) {
    float *const grads[4] = {grad_bias, grad_c, grad_phi, grad_w};
    fourier_from_values(bias, w, phi, c, C, scales, true, grads, [&](const float *rows, float *sums) {
        backward<Fourier>(x, g, dx, sums, rows, N, C, consts, threads);
    });
}
extern "C" void fourier_backward_values_rows(const float *x, const float *g, float *dx, float *grad_bias,
                                             float *grad_c, float *grad_phi, float *grad_w, const float *bias,
                                             const float *w, const float *phi, const float *c, const float *scales,
                                             long O, long C, long I, const float *consts, int threads) {
    float *const grads[4] = {grad_bias, grad_c, grad_phi, grad_w};
    fourier_from_values(bias, w, phi, c, C, scales, true, grads, [&](const float *rows, float *sums) {
        rows_pass<Fourier, true>(x, g, dx, sums, rows, O, C, I, consts, threads);
    });
}

#define LIT_EXPORT(name, F)                                                                                         \
    extern "C" void name##_forward(const float *x, float *y, const float *rows, long N, long C, const float *consts, \
                                   int threads) {                                                                  \
        forward<F>(x, y, rows, N, C, consts, threads);                                                             \
    }                                                                                                              \
    extern "C" void name##_backward(const float *x, const float *g, float *dx, float *sums, const float *rows, long N, \
                                    long C, const float *consts, int threads) {                                    \
        backward<F>(x, g, dx, sums, rows, N, C, consts, threads);                                                  \
    }                                                                                                              \
    extern "C" void name##_forward_rows(const float *x, float *y, const float *rows, long O, long C, long I,          \
                                        const float *consts, int threads) {                                        \
        rows_pass<F, false>(x, nullptr, y, nullptr, rows, O, C, I, consts, threads);                               \
    }                                                                                                              \
    extern "C" void name##_backward_rows(const float *x, const float *g, float *dx, float *sums, const float *rows,    \
                                         long O, long C, long I, const float *consts, int threads) {                \
        rows_pass<F, true>(x, g, dx, sums, rows, O, C, I, consts, threads);                                        \
    }

LIT_EXPORT(hermite, Hermite)
LIT_EXPORT(fourier, Fourier)
LIT_EXPORT(tropical, Tropical)
LIT_EXPORT(tropical_rational, TropicalRational)

// The tropical families' backward_lines and backward_lines_rows: backward and backward_rows with each line's slope and
// intercept in place of the rows, and each line's gradient sums in place of the pass's.
#define LIT_EXPORT_LINES(name, F)                                                                                  \
    extern "C" void name##_backward_lines(const float *x, const float *g, float *dx, float *out, const float *slopes, \
                                          const float *intercepts, long N, long C, const float *consts,            \
                                          int threads) {                                                           \
        lines_backward<F>(slopes, intercepts, C, out, threads, [&](const float *rows, float *sums) {              \
            backward<F>(x, g, dx, sums, rows, N, C, consts, threads);                                              \
        });                                                                                                        \
    }                                                                                                              \
    extern "C" void name##_backward_lines_rows(const float *x, const float *g, float *dx, float *out,              \
                                               const float *slopes, const float *intercepts, long O, long C, long I, \
                                               const float *consts, int threads) {                                 \
        lines_backward<F>(slopes, intercepts, C, out, threads, [&](const float *rows, float *sums) {              \
            rows_pass<F, true>(x, g, dx, sums, rows, O, C, I, consts, threads);                                    \
        });                                                                                                        \
    }

LIT_EXPORT_LINES(tropical, Tropical)
LIT_EXPORT_LINES(tropical_rational, TropicalRational)
