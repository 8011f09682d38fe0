/* Fused support kernels for the CPU (supportnet.kernels.cpu builds and loads this file).
 *
 * Paper: Eq. 9 (eta*(q; tau) = q if q > tau else 0), Eq. 13 (a fixed support, "gated":
 * z = m * relu_tau(q)) and Eq. 39-41 (the batch rule). Activations are float32 rows of U
 * units in memory order, one row per example (row n starts at n * U). Packed supports are
 * MaskStore rows: one row of row_stride bytes per example, this layer's bits from bit `off`,
 * most significant bit first (np.packbits order), unit u of the row at bit off + u.
 *
 * Every function is one OpenMP region over rows (or fixed groups of rows) with `nt` threads,
 * so each thread reads back the rows it wrote. Sums are taken in a fixed order that does not
 * depend on the thread count, and no floating-point expression is contracted or reassociated
 * (built with -ffp-contract=off, without -ffast-math): the same inputs give the same bits.
 * Selections are written as bit masks rather than branches so that they vectorise; a
 * mispredicted branch per activation cost 10x (the support bits are close to random).
 */
#include <stdint.h>
#include <string.h>
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>
#define SN_AVX512 1 /* the instance kernel's terms by mask compares and compress-stores */
#endif

#define SN_ABI 7
#define CHUNK 1024 /* units per stack chunk of unpacked bits */
#define SERIAL 65536 /* below this many activations, one thread */

typedef float f32;

int sn_abi(void) { return SN_ABI; }

static inline uint32_t fbits(f32 x) { uint32_t u; memcpy(&u, &x, 4); return u; }
static inline f32 bitsf(uint32_t u) { f32 x; memcpy(&x, &u, 4); return x; }
static inline uint32_t all(int c) { return 0u - (uint32_t)(c != 0); } /* 0 or 0xffffffff */
static inline int threads(int64_t B, int64_t U, int nt) { return B * U < SERIAL ? 1 : nt; }
/* With tau == 0 the torch code's threshold is relu, which passes NaN on (and NaN * 0 is NaN): so
 * do the kernels, so that a diverged activation still reaches the loss and the divergence guard.
 * With tau > 0 it is where(q > tau, q, 0), which drops NaN, as q > tau does here. */
static inline uint32_t nan_kept(f32 x, uint32_t keep) { return keep & all(x != x); }

/* ---- B-alternation: the batch rule's support and the gated output ------------------------ */

static void row_stat(const f32 *restrict q, f32 *restrict acc, int64_t U, f32 tau, int vote, uint32_t keep)
{
    if (vote) {
        for (int64_t u = 0; u < U; u++) acc[u] += (f32)(q[u] > tau);
    } else {
        for (int64_t u = 0; u < U; u++) {
            f32 x = bitsf(fbits(q[u]) & (all(q[u] > tau) | nan_kept(q[u], keep)));
            acc[u] += x * x;
        }
    }
}

static void row_gate(const f32 *restrict q, const uint8_t *restrict m, f32 *restrict o, int64_t U, f32 tau,
                     uint32_t keep)
{
    for (int64_t u = 0; u < U; u++)
        o[u] = bitsf(fbits(q[u]) & ((all(q[u] > tau) & (0u - (uint32_t)m[u])) | nan_kept(q[u], keep)));
}

/* rule: 0 energy-rel, 1 energy, 2 vote. part: (ceil(B / group), U) float32 scratch.
 * out = relu_tau(q) * m and m (uint8 0/1 per unit), with m_u from the statistic summed over the
 * batch: group sums in float32 over `group` consecutive rows, then over the groups in order. */
void sn_batch_fwd(const f32 *q, f32 *out, uint8_t *m, f32 *part, int64_t B, int64_t U, int64_t group,
                  f32 tau, f32 beta, int rule, int nt)
{
    int64_t ngroups = (B + group - 1) / group;
    #pragma omp parallel num_threads(threads(B, U, nt))
    {
        #pragma omp for schedule(static)
        for (int64_t s = 0; s < ngroups; s++) {
            f32 *acc = part + s * U;
            memset(acc, 0, sizeof(f32) * (size_t)U);
            int64_t end = (s + 1) * group < B ? (s + 1) * group : B;
            for (int64_t n = s * group; n < end; n++) row_stat(q + n * U, acc, U, tau, rule == 2, all(tau == 0.0f));
        }
        #pragma omp for schedule(static)
        for (int64_t u = 0; u < U; u++) {
            f32 e = part[u];
            for (int64_t s = 1; s < ngroups; s++) e += part[s * U + u];
            part[u] = e;
        }
        #pragma omp single
        {
            f32 thr = beta;
            if (rule == 0) { /* beta times the layer's mean energy */
                double t = 0.0;
                for (int64_t u = 0; u < U; u++) t += part[u];
                thr = beta * (f32)(t / (double)U);
            }
            if (rule == 2)
                for (int64_t u = 0; u < U; u++) m[u] = part[u] * 2.0f > (f32)B;
            else
                for (int64_t u = 0; u < U; u++) m[u] = part[u] > thr;
        }
        #pragma omp for schedule(static)
        for (int64_t n = 0; n < B; n++) row_gate(q + n * U, m, out + n * U, U, tau, all(tau == 0.0f));
    }
}

/* ---- packed supports ----------------------------------------------------------------------- */

static uint64_t SPREAD[256]; /* a byte -> its 8 bits as bytes 0/1, most significant first */

__attribute__((constructor)) static void init_spread(void)
{
    for (int b = 0; b < 256; b++) {
        uint8_t e[8];
        for (int j = 0; j < 8; j++) e[j] = (uint8_t)((b >> (7 - j)) & 1);
        memcpy(&SPREAD[b], e, 8);
    }
}

/* bits [b0, b0 + len) of row r as bytes 0/1 (len <= CHUNK): a pointer into buf (CHUNK + 16) */
static const uint8_t *unpack(const uint8_t *r, int64_t b0, int64_t len, uint8_t *buf)
{
    int64_t first = b0 >> 3, last = (b0 + len + 7) >> 3;
    for (int64_t i = first; i < last; i++) memcpy(buf + 8 * (i - first), &SPREAD[r[i]], 8);
    return buf + (b0 & 7);
}

/* ---- I-alternation, stored: a fixed per-example support read from the packed bits ---------- */

/* out = relu_tau(q) * m; the sum of squares of where(m, 0, relu(q - tau)) into acc's 16 lanes; and
 * the penalty's terms (the support off, q > tau) of the chunk: their positions as 64-bit words (bit j
 * of word w: unit 64 w + j) and q - tau there, in order, from over[0]; returns how many. */
static int64_t chunk_inst_fwd_terms(const f32 *restrict q, const uint8_t *restrict m, f32 *restrict o, int64_t len,
                                    f32 tau, uint32_t keep, f32 *restrict acc, uint64_t *restrict words,
                                    f32 *restrict over)
{
    int64_t k = 0, u = 0;
    for (int64_t w = 0; 64 * w < len; w++) words[w] = 0;
#ifdef SN_AVX512 /* compare into bit masks, compress-store the terms */
    __m512 vt = _mm512_set1_ps(tau), vacc = _mm512_loadu_ps(acc);
    for (; u + 16 <= len; u += 16) {
        __m512 x = _mm512_loadu_ps(q + u);
        __m128i mb = _mm_loadu_si128((const __m128i *)(m + u));
        __mmask16 gt = _mm512_cmp_ps_mask(x, vt, _CMP_GT_OQ), on = _mm_test_epi8_mask(mb, mb);
        __mmask16 nan = keep ? _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q) : 0;
        __mmask16 term = gt & (__mmask16)~on;
        _mm512_storeu_ps(o + u, _mm512_maskz_mov_ps((gt & on) | nan, x));
        __m512 over_v = _mm512_maskz_sub_ps(term | nan, x, vt);
        vacc = _mm512_add_ps(vacc, _mm512_mul_ps(over_v, over_v));
        _mm512_mask_compressstoreu_ps(over + k, term, over_v);
        k += __builtin_popcount((unsigned)term);
        words[u / 64] |= (uint64_t)term << (u % 64);
    }
    _mm512_storeu_ps(acc, vacc);
#else
    for (; u + 16 <= len; u += 16) {
        uint32_t term = 0;
        for (int j = 0; j < 16; j++) {
            f32 x = q[u + j];
            uint32_t on = 0u - (uint32_t)m[u + j], gt = all(x > tau), nan = nan_kept(x, keep);
            o[u + j] = bitsf(fbits(x) & ((on & gt) | nan));
            f32 over_j = bitsf(fbits(x - tau) & ((~on & gt) | nan));
            acc[j] += over_j * over_j;
            term |= (~on & gt & 1u) << j;
        }
        words[u / 64] |= (uint64_t)term << (u % 64);
        for (; term; term &= term - 1) over[k++] = q[u + __builtin_ctz(term)] - tau;
    }
#endif
    for (; u < len; u++) {
        f32 x = q[u];
        uint32_t on = 0u - (uint32_t)m[u], gt = all(x > tau), nan = nan_kept(x, keep);
        o[u] = bitsf(fbits(x) & ((on & gt) | nan));
        f32 over_u = bitsf(fbits(x - tau) & ((~on & gt) | nan));
        acc[0] += over_u * over_u;
        if (~on & gt & 1u) {
            words[u / 64] |= (uint64_t)1 << (u % 64);
            over[k++] = x - tau;
        }
    }
    return k;
}

/* I-alternation's stored support, forward. pen_rows (may be NULL): per example, the consistency
 * penalty's sum of squares (float32 chunks, summed in double), and their sum in *pen. With words (else
 * NULL): what backward needs for the penalty's gradient, instead of q: per example, the positions of its
 * terms (W = ceil(U / 64) words a row), their q - tau packed at the start of the example's U floats of
 * over, their count and where they will start once gathered (offsets); returns the total count. */
int64_t sn_inst_fwd(const f32 *q, f32 *out, const uint8_t *rows, int64_t row_stride, int64_t off, int64_t B,
                    int64_t U, f32 tau, double *pen_rows, double *pen, uint64_t *words, f32 *over, int64_t *counts,
                    int64_t *offsets, int nt)
{
    int64_t W = (U + 63) / 64;
    uint32_t keep = all(tau == 0.0f);
    #pragma omp parallel for schedule(static) num_threads(threads(B, U, nt))
    for (int64_t n = 0; n < B; n++) {
        uint8_t buf[CHUNK + 16];
        const uint8_t *r = rows + n * row_stride;
        const f32 *qr = q + n * U;
        double t = 0.0;
        int64_t k = 0;
        for (int64_t u = 0; u < U; u += CHUNK) {
            int64_t len = U - u < CHUNK ? U - u : CHUNK;
            const uint8_t *m = unpack(r, off + u, len, buf);
            f32 acc[16] = {0};
            if (words) {
                k += chunk_inst_fwd_terms(qr + u, m, out + n * U + u, len, tau, keep, acc, words + n * W + u / 64,
                                          over + n * U + k);
            } else { /* no penalty: the terms go to the stack and are dropped */
                uint64_t w_tmp[CHUNK / 64];
                f32 o_tmp[CHUNK];
                chunk_inst_fwd_terms(qr + u, m, out + n * U + u, len, tau, keep, acc, w_tmp, o_tmp);
            }
            f32 c = 0.0f;
            for (int j = 0; j < 16; j++) c += acc[j];
            t += c;
        }
        if (pen_rows) pen_rows[n] = t;
        if (counts) counts[n] = k;
    }
    int64_t total = 0;
    if (pen_rows) { /* the examples' sums in order, and where each example's terms will start */
        double p = 0.0;
        for (int64_t n = 0; n < B; n++) p += pen_rows[n];
        *pen = p;
    }
    if (counts)
        for (int64_t n = 0; n < B; n++) {
            offsets[n] = total;
            total += counts[n];
        }
    return total;
}

/* over's rows, each counts[n] long from n * U, one after the other into dst (from offsets[n]) */
void sn_gather_rows(const f32 *over, int64_t U, const int64_t *counts, const int64_t *offsets, int64_t B, f32 *dst,
                    int nt)
{
    #pragma omp parallel for schedule(static) num_threads(threads(B, U, nt))
    for (int64_t n = 0; n < B; n++) memcpy(dst + offsets[n], over + n * U, sizeof(f32) * (size_t)counts[n]);
}

/* the penalty's part of the gradient: gin = over * scale at its terms (where gin, threshold_backward's
 * grad * 1[out > 0], is zero); the other entries are left as they are */
void sn_inst_terms_bwd(f32 *gin, const uint64_t *words, const f32 *over, const int64_t *offsets, int64_t B,
                       int64_t U, f32 scale, int nt)
{
    int64_t W = (U + 63) / 64;
    #pragma omp parallel for schedule(static) num_threads(threads(B, U, nt))
    for (int64_t n = 0; n < B; n++) {
        const f32 *ov = over + offsets[n];
        int64_t k = 0;
        for (int64_t w = 0; w < W; w++)
            for (uint64_t word = words[n * W + w]; word; word &= word - 1)
                gin[n * U + 64 * w + __builtin_ctzll(word)] = ov[k++] * scale;
    }
}

/* ---- the estimation pass: the free output and the packed support in one pass ---------------- */

static void chunk_free(const f32 *restrict q, f32 *restrict o, int64_t len, f32 tau, uint32_t keep)
{
    for (int64_t u = 0; u < len; u++) o[u] = bitsf(fbits(q[u]) & (all(q[u] > tau) | nan_kept(q[u], keep)));
}

static void pack_bytes(const f32 *restrict q, uint8_t *restrict r, int64_t nbytes, f32 tau)
{
    for (int64_t i = 0; i < nbytes; i++) {
        uint32_t b = 0;
        for (int j = 0; j < 8; j++) b |= (uint32_t)(q[8 * i + j] > tau) << (7 - j);
        r[i] = (uint8_t)b;
    }
}

static void or_bits(const f32 *q, uint8_t *r, int64_t b0, int64_t len, f32 tau)
{
    for (int64_t u = 0; u < len; u++)
        if (q[u] > tau) r[(b0 + u) >> 3] |= (uint8_t)(0x80u >> ((b0 + u) & 7));
}

/* out = relu_tau(q); bits off .. off + U of each row = 1[q > tau]. The bytes this layer shares
 * with its neighbours are OR-ed into (their bits of this layer must be zero); the others are set. */
void sn_record(const f32 *q, f32 *out, uint8_t *rows, int64_t row_stride, int64_t off, int64_t B, int64_t U,
               f32 tau, int nt)
{
    int64_t head = (8 - (off & 7)) & 7;
    if (head > U) head = U;
    int64_t nbytes = (U - head) / 8, tail = U - head - 8 * nbytes;
    #pragma omp parallel for schedule(static) num_threads(threads(B, U, nt))
    for (int64_t n = 0; n < B; n++) {
        const f32 *qr = q + n * U;
        uint8_t *r = rows + n * row_stride;
        for (int64_t u = 0; u < U; u += CHUNK) chunk_free(qr + u, out + n * U + u, U - u < CHUNK ? U - u : CHUNK, tau, all(tau == 0.0f));
        or_bits(qr, r, off, head, tau);
        pack_bytes(qr + head, r + ((off + head) >> 3), nbytes, tau);
        or_bits(qr + head + 8 * nbytes, r, off + head + 8 * nbytes, tail, tau);
    }
}

/* ---- the change between two rounds' supports ------------------------------------------------ */

/* the number of bits that differ between a and b (n bytes each) */
int64_t sn_xor_popcount(const uint8_t *a, const uint8_t *b, int64_t n)
{
    int64_t count = 0, i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t x, y;
        memcpy(&x, a + i, 8);
        memcpy(&y, b + i, 8);
        count += __builtin_popcountll(x ^ y);
    }
    for (; i < n; i++) count += __builtin_popcount((unsigned)(a[i] ^ b[i]));
    return count;
}

/* ---- the active fraction's count ------------------------------------------------------------- */

/* the number of the n activations above tau (an integer sum: the same whatever the thread count) */
int64_t sn_count_above(const f32 *q, int64_t n, f32 tau, int nt)
{
    int64_t count = 0;
    #pragma omp parallel for schedule(static) reduction(+ : count) num_threads(threads(1, n, nt))
    for (int64_t i = 0; i < n; i += CHUNK) {
        int64_t end = i + CHUNK < n ? i + CHUNK : n;
        int32_t c = 0;
        for (int64_t j = i; j < end; j++) c += q[j] > tau;
        count += c;
    }
    return count;
}
