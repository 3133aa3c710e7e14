/* Sparse-input 1x1 convolution on channels_last rows, for unstructured zeros in activations.

   y[p, :] = clamp(bias + sum over c with x[p, c] != 0 of x[p, c] * w[c, :] (+ residual[p, :]), lo, hi)

   Pixels go in tiles of TILE. A tile first lists the union of its pixels' non-zero channels (zeros
   in real maps are correlated between neighbours, so the union stays small); then, for each panel of
   output channels, it keeps TILE x R vector accumulators in registers and adds one weight row per
   listed channel, each row loaded once for the whole tile. Panels are the outer loop and tiles the
   inner one, so a panel of the weight (cin x panel width) stays in cache while every tile passes
   over it: weights of several MB are read once per panel, not once per pixel.

   The weight is packed by the caller as (cin, cout_padded) with cout_padded a multiple of 16.
   Entry points take plain pointers (called through ctypes, which drops the GIL) and a pixel range,
   so the caller can split the pixels between threads. The ISA is chosen by the caller:
   0 = portable C, 1 = AVX2 + FMA, 2 = AVX-512F. */

#include <Python.h>
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>

#define TILE 4

typedef struct {
    const float *x;        /* (pixels, cin) */
    const float *w;        /* (cin, ldw) */
    const float *bias;     /* (cout) */
    const float *residual; /* (pixels, cout) or NULL */
    float *y;              /* (pixels, cout) */
    int32_t *lists;        /* per tile: count, then up to cin channel indices */
    int64_t cin, cout, ldw;
    float lo, hi;
} Conv1x1;

/* Vectors of the `left` floats at p, at most 16. Only a partial vector goes under a mask: masked loads
   and stores measured several times slower than plain ones on AMD Zen 5, even with every lane set. */
static inline __mmask16 tail_mask(int64_t left) {
    return left >= 16 ? (__mmask16)0xFFFF : left <= 0 ? (__mmask16)0 : (__mmask16)((1u << left) - 1);
}

__attribute__((target("avx512f"), always_inline))
static inline __m512 load_part(const float *p, int64_t left) {
    return left >= 16 ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(tail_mask(left), p);
}

__attribute__((target("avx512f"), always_inline))
static inline void store_part(float *p, __m512 v, int64_t left) {
    if (left >= 16)
        _mm512_storeu_ps(p, v);
    else
        _mm512_mask_storeu_ps(p, tail_mask(left), v);
}

/* The union of the non-zero channels of `rows` pixels starting at row `p`, written to list[1..],
   with its length in list[0]. */
static int64_t union_list_c(const Conv1x1 *a, int64_t p, int rows, int32_t *list) {
    int32_t n = 0;
    for (int64_t c = 0; c < a->cin; c++) {
        int any = 0;
        for (int j = 0; j < rows; j++) any |= a->x[(p + j) * a->cin + c] != 0.0f;
        if (any) list[1 + n++] = (int32_t)c;
    }
    list[0] = n;
    return 0;
}

__attribute__((target("avx2")))
static int64_t union_list_avx2(const Conv1x1 *a, int64_t p, int rows, int32_t *list) {
    int32_t n = 0;
    int64_t c = 0;
    const __m256 zero = _mm256_setzero_ps();
    for (; c + 8 <= a->cin; c += 8) {
        __m256 nz = _mm256_setzero_ps();
        for (int j = 0; j < rows; j++)
            nz = _mm256_or_ps(nz, _mm256_cmp_ps(_mm256_loadu_ps(a->x + (p + j) * a->cin + c), zero, _CMP_NEQ_UQ));
        unsigned bits = (unsigned)_mm256_movemask_ps(nz);
        while (bits) {
            list[1 + n++] = (int32_t)(c + __builtin_ctz(bits));
            bits &= bits - 1;
        }
    }
    for (; c < a->cin; c++) {
        int any = 0;
        for (int j = 0; j < rows; j++) any |= a->x[(p + j) * a->cin + c] != 0.0f;
        if (any) list[1 + n++] = (int32_t)c;
    }
    list[0] = n;
    return 0;
}

/* Also returns the sum of the pixels' own non-zero counts, which decides whether they run alone. */
__attribute__((target("avx512f,popcnt")))
static int64_t union_list_avx512(const Conv1x1 *a, int64_t p, int rows, int32_t *list) {
    int32_t n = 0;
    int64_t own = 0;
    __m512i index = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i step = _mm512_set1_epi32(16);
    for (int64_t c = 0; c < a->cin; c += 16) {
        int64_t left = a->cin - c;
        __mmask16 valid = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
        __mmask16 nz = 0;
        for (int j = 0; j < rows; j++) {
            __mmask16 m = _mm512_mask_cmp_ps_mask(valid, load_part(a->x + (p + j) * a->cin + c, left),
                                                  _mm512_setzero_ps(), _CMP_NEQ_UQ);
            own += __builtin_popcount(m);
            nz |= m;
        }
        /* compress in a register and store all 16 lanes: the memory form of vpcompressd is
           microcoded on AMD Zen 4/5 (~100x slower); lists have 16 slots of slack for the tail */
        _mm512_storeu_si512(list + 1 + n, _mm512_maskz_compress_epi32(nz, index));
        n += __builtin_popcount(nz);
        index = _mm512_add_epi32(index, step);
    }
    list[0] = n;
    return own;
}

/* NaN stays NaN, as in torch.clamp: the vector forms keep it by taking v as the second operand of
   max and min, which return their second operand when either is NaN. */
static inline float clampf(float v, float lo, float hi) { return v < lo ? lo : (v > hi ? hi : v); }

/* The epilogue shared by the portable path: residual, clamp, store of one pixel's panel. */
static void tile_panel_c(const Conv1x1 *a, int64_t p, int rows, const int32_t *list, int64_t c0, int64_t width) {
    float acc[TILE][96];
    for (int j = 0; j < rows; j++)
        for (int64_t o = 0; o < width; o++) acc[j][o] = a->bias[c0 + o];
    for (int32_t k = 0; k < list[0]; k++) {
        int64_t c = list[1 + k];
        const float *wrow = a->w + c * a->ldw + c0;
        for (int j = 0; j < rows; j++) {
            float v = a->x[(p + j) * a->cin + c];
            for (int64_t o = 0; o < width; o++) acc[j][o] += v * wrow[o];
        }
    }
    for (int j = 0; j < rows; j++) {
        float *out = a->y + (p + j) * a->cout + c0;
        const float *res = a->residual ? a->residual + (p + j) * a->cout + c0 : NULL;
        for (int64_t o = 0; o < width; o++) out[o] = clampf(acc[j][o] + (res ? res[o] : 0.0f), a->lo, a->hi);
    }
}

/* The register tiles below name each accumulator: GCC keeps a small array of vectors on the stack
   (a store and a load per FMA) unless every index is a constant before its early passes run, so the
   arrays appear only in the epilogues, once per tile and panel. R, a constant at every call site,
   switches the unused accumulators off. */

#define ROW8(j, xj)                                                    \
    v = _mm256_broadcast_ss(xj + c);                                   \
    a##j##0 = _mm256_fmadd_ps(v, w0, a##j##0);                         \
    if (R > 1) a##j##1 = _mm256_fmadd_ps(v, w1, a##j##1);              \
    if (R > 2) a##j##2 = _mm256_fmadd_ps(v, w2, a##j##2);

/* R vectors of 8 outputs per pixel, TILE pixels: 4 x 3 accumulators + 3 weights + 1 broadcast fill
   the 16 ymm registers. */
__attribute__((target("avx2,fma"), always_inline))
static inline void tile_panel_avx2_r(const Conv1x1 *a, int64_t p, int rows, const int32_t *list, int64_t c0,
                                     int64_t width, const int R) {
    const float *bias = a->bias + c0;
    __m256 a00, a01, a02, a10, a11, a12, a20, a21, a22, a30, a31, a32, v;
    a00 = a10 = a20 = a30 = _mm256_loadu_ps(bias);  /* bias is padded to ldw */
    a01 = a11 = a21 = a31 = R > 1 ? _mm256_loadu_ps(bias + 8) : a00;
    a02 = a12 = a22 = a32 = R > 2 ? _mm256_loadu_ps(bias + 16) : a00;
    const int64_t cin = a->cin, ldw = a->ldw;
    const float *x0 = a->x + p * cin;
    const float *x1 = x0 + (rows > 1 ? cin : 0), *x2 = x0 + (rows > 2 ? 2 * cin : 0);
    const float *x3 = x0 + (rows > 3 ? 3 * cin : 0);
    const float *w = a->w + c0;
    const int32_t n = list[0], *idx = list + 1;
    for (int32_t k = 0; k < n; k++) {
        const int64_t c = idx[k];
        const float *wrow = w + c * ldw;
        __m256 w0 = _mm256_loadu_ps(wrow);
        __m256 w1 = R > 1 ? _mm256_loadu_ps(wrow + 8) : w0, w2 = R > 2 ? _mm256_loadu_ps(wrow + 16) : w0;
        ROW8(0, x0) ROW8(1, x1) ROW8(2, x2) ROW8(3, x3)
    }
    __m256 acc[TILE][3] = {{a00, a01, a02}, {a10, a11, a12}, {a20, a21, a22}, {a30, a31, a32}};
    const __m256 lo = _mm256_set1_ps(a->lo), hi = _mm256_set1_ps(a->hi);
    for (int j = 0; j < rows; j++) {
        float *out = a->y + (p + j) * a->cout + c0;
        const float *res = a->residual ? a->residual + (p + j) * a->cout + c0 : NULL;
        for (int r = 0; r < R; r++) {
            int64_t left = width - 8 * r;
            if (left >= 8) {
                __m256 v = acc[j][r];
                if (res) v = _mm256_add_ps(v, _mm256_loadu_ps(res + 8 * r));
                _mm256_storeu_ps(out + 8 * r, _mm256_min_ps(hi, _mm256_max_ps(lo, v)));
            } else {
                float tmp[8];
                _mm256_storeu_ps(tmp, acc[j][r]);
                for (int64_t o = 0; o < left; o++)
                    out[8 * r + o] = clampf(tmp[o] + (res ? res[8 * r + o] : 0.0f), a->lo, a->hi);
            }
        }
    }
}

__attribute__((target("avx2,fma")))
static void tile_panel_avx2(const Conv1x1 *a, int64_t p, int rows, const int32_t *list, int64_t c0, int64_t width) {
    switch ((width + 7) / 8) {
        case 1: tile_panel_avx2_r(a, p, rows, list, c0, width, 1); break;
        case 2: tile_panel_avx2_r(a, p, rows, list, c0, width, 2); break;
        default: tile_panel_avx2_r(a, p, rows, list, c0, width, 3); break;
    }
}

#define ROW16(j, xj)                                                   \
    v = _mm512_set1_ps(xj[c]);                                         \
    a##j##0 = _mm512_fmadd_ps(v, w0, a##j##0);                         \
    if (R > 1) a##j##1 = _mm512_fmadd_ps(v, w1, a##j##1);              \
    if (R > 2) a##j##2 = _mm512_fmadd_ps(v, w2, a##j##2);              \
    if (R > 3) a##j##3 = _mm512_fmadd_ps(v, w3, a##j##3);              \
    if (R > 4) a##j##4 = _mm512_fmadd_ps(v, w4, a##j##4);              \
    if (R > 5) a##j##5 = _mm512_fmadd_ps(v, w5, a##j##5);

/* Stores the accumulators of one pixel: + residual, clamp, masked store of the panel's tail. */
__attribute__((target("avx512f"), always_inline))
static inline void store_pixel_avx512(const Conv1x1 *a, int64_t p, int64_t c0, int64_t width, const __m512 *acc,
                                      const int R) {
    const __m512 lo = _mm512_set1_ps(a->lo), hi = _mm512_set1_ps(a->hi);
    float *out = a->y + p * a->cout + c0;
    const float *res = a->residual ? a->residual + p * a->cout + c0 : NULL;
    for (int r = 0; r < R; r++) {
        __m512 v = acc[r];
        if (res) v = _mm512_add_ps(v, load_part(res + 16 * r, width - 16 * r));
        store_part(out + 16 * r, _mm512_min_ps(hi, _mm512_max_ps(lo, v)), width - 16 * r);
    }
}

/* R vectors of 16 outputs per pixel, TILE pixels: 4 x 6 accumulators + 6 weights + 1 broadcast of
   the 32 zmm registers. */
__attribute__((target("avx512f"), always_inline))
static inline void tile_panel_avx512_r(const Conv1x1 *a, int64_t p, int rows, const int32_t *list, int64_t c0,
                                       int64_t width, const int R) {
    const float *bias = a->bias + c0;
    __m512 b0 = _mm512_loadu_ps(bias), b1 = R > 1 ? _mm512_loadu_ps(bias + 16) : b0;
    __m512 b2 = R > 2 ? _mm512_loadu_ps(bias + 32) : b0, b3 = R > 3 ? _mm512_loadu_ps(bias + 48) : b0;
    __m512 b4 = R > 4 ? _mm512_loadu_ps(bias + 64) : b0, b5 = R > 5 ? _mm512_loadu_ps(bias + 80) : b0;
    __m512 a00 = b0, a01 = b1, a02 = b2, a03 = b3, a04 = b4, a05 = b5;
    __m512 a10 = b0, a11 = b1, a12 = b2, a13 = b3, a14 = b4, a15 = b5;
    __m512 a20 = b0, a21 = b1, a22 = b2, a23 = b3, a24 = b4, a25 = b5;
    __m512 a30 = b0, a31 = b1, a32 = b2, a33 = b3, a34 = b4, a35 = b5, v;
    const int64_t cin = a->cin, ldw = a->ldw;
    const float *x0 = a->x + p * cin;
    const float *x1 = x0 + (rows > 1 ? cin : 0), *x2 = x0 + (rows > 2 ? 2 * cin : 0);
    const float *x3 = x0 + (rows > 3 ? 3 * cin : 0);
    const float *w = a->w + c0;
    const int32_t n = list[0], *idx = list + 1;
    for (int32_t k = 0; k < n; k++) {
        const int64_t c = idx[k];
        const float *wrow = w + c * ldw;
        __m512 w0 = _mm512_loadu_ps(wrow);
        __m512 w1 = R > 1 ? _mm512_loadu_ps(wrow + 16) : w0, w2 = R > 2 ? _mm512_loadu_ps(wrow + 32) : w0;
        __m512 w3 = R > 3 ? _mm512_loadu_ps(wrow + 48) : w0, w4 = R > 4 ? _mm512_loadu_ps(wrow + 64) : w0;
        __m512 w5 = R > 5 ? _mm512_loadu_ps(wrow + 80) : w0;
        ROW16(0, x0) ROW16(1, x1) ROW16(2, x2) ROW16(3, x3)
    }
    __m512 acc[TILE][6] = {{a00, a01, a02, a03, a04, a05}, {a10, a11, a12, a13, a14, a15},
                           {a20, a21, a22, a23, a24, a25}, {a30, a31, a32, a33, a34, a35}};
    for (int j = 0; j < rows; j++) store_pixel_avx512(a, p + j, c0, width, acc[j], R);
}

__attribute__((target("avx512f")))
static void tile_panel_avx512(const Conv1x1 *a, int64_t p, int rows, const int32_t *list, int64_t c0,
                              int64_t width) {
    switch ((width + 15) / 16) {
        case 1: tile_panel_avx512_r(a, p, rows, list, c0, width, 1); break;
        case 2: tile_panel_avx512_r(a, p, rows, list, c0, width, 2); break;
        case 3: tile_panel_avx512_r(a, p, rows, list, c0, width, 3); break;
        case 4: tile_panel_avx512_r(a, p, rows, list, c0, width, 4); break;
        case 5: tile_panel_avx512_r(a, p, rows, list, c0, width, 5); break;
        default: tile_panel_avx512_r(a, p, rows, list, c0, width, 6); break;
    }
}

/* One pixel over its own non-zero channels: no register reuse of the weight rows, but no work on
   channels that are zero in this pixel. Wins when a tile's pixels share few non-zero channels. */
__attribute__((target("avx512f"), always_inline))
static inline void pixel_panel_avx512_r(const Conv1x1 *a, int64_t p, const int32_t *list, int64_t c0,
                                        int64_t width, const int R) {
    const float *bias = a->bias + c0;
    __m512 a00 = _mm512_loadu_ps(bias), a01 = R > 1 ? _mm512_loadu_ps(bias + 16) : a00;
    __m512 a02 = R > 2 ? _mm512_loadu_ps(bias + 32) : a00, a03 = R > 3 ? _mm512_loadu_ps(bias + 48) : a00;
    __m512 a04 = R > 4 ? _mm512_loadu_ps(bias + 64) : a00, a05 = R > 5 ? _mm512_loadu_ps(bias + 80) : a00, v;
    const int64_t ldw = a->ldw;
    const float *x0 = a->x + p * a->cin, *w = a->w + c0;
    const int32_t n = list[0], *idx = list + 1;
    for (int32_t k = 0; k < n; k++) {
        const int64_t c = idx[k];
        const float *wrow = w + c * ldw;
        __m512 w0 = _mm512_loadu_ps(wrow);
        __m512 w1 = R > 1 ? _mm512_loadu_ps(wrow + 16) : w0, w2 = R > 2 ? _mm512_loadu_ps(wrow + 32) : w0;
        __m512 w3 = R > 3 ? _mm512_loadu_ps(wrow + 48) : w0, w4 = R > 4 ? _mm512_loadu_ps(wrow + 64) : w0;
        __m512 w5 = R > 5 ? _mm512_loadu_ps(wrow + 80) : w0;
        ROW16(0, x0)
    }
    __m512 acc[6] = {a00, a01, a02, a03, a04, a05};
    store_pixel_avx512(a, p, c0, width, acc, R);
}

__attribute__((target("avx512f")))
static void pixel_panel_avx512(const Conv1x1 *a, int64_t p, const int32_t *list, int64_t c0, int64_t width) {
    switch ((width + 15) / 16) {
        case 1: pixel_panel_avx512_r(a, p, list, c0, width, 1); break;
        case 2: pixel_panel_avx512_r(a, p, list, c0, width, 2); break;
        case 3: pixel_panel_avx512_r(a, p, list, c0, width, 3); break;
        case 4: pixel_panel_avx512_r(a, p, list, c0, width, 4); break;
        case 5: pixel_panel_avx512_r(a, p, list, c0, width, 5); break;
        default: pixel_panel_avx512_r(a, p, list, c0, width, 6); break;
    }
}

/* Writes the union list of `rows` pixels; AVX-512 also returns the sum of their own counts. */
typedef int64_t (*UnionFn)(const Conv1x1 *, int64_t, int, int32_t *);
typedef void (*PanelFn)(const Conv1x1 *, int64_t, int, const int32_t *, int64_t, int64_t);

/* Pixels [begin, end) of one call; `lists` holds LIST_SLOTS * (cin + 17) int32 per tile of this range:
   the union of the tile's non-zero channels, then each pixel's own. A tile runs on its union unless
   its pixels share so few channels that they run faster alone: a pixel alone reads each weight row
   for itself, which measured 0.8x the cost of a union channel shared by four pixels (AVX-512;
   without a single-pixel kernel, AVX2 and portable C always run the union). */
#define LIST_SLOTS (TILE + 1)
int actzip_sparse_conv1x1(const float *x, const float *w, const float *bias, const float *residual, float *y,
                          int32_t *lists, int64_t begin, int64_t end, int64_t cin, int64_t cout, int64_t ldw,
                          float lo, float hi, int isa) {
    static const int panel_width[3] = {96, 24, 96};
    static const UnionFn unions[3] = {union_list_c, union_list_avx2, union_list_avx512};
    static const PanelFn panels[3] = {tile_panel_c, tile_panel_avx2, tile_panel_avx512};
    if (isa < 0 || isa > 2 || ldw < cout || ldw % 16) return -1;
    Conv1x1 a = {x, w, bias, residual, y, lists, cin, cout, ldw, lo, hi};
    int64_t tiles = (end - begin + TILE - 1) / TILE, slot = cin + 17;
    for (int64_t t = 0; t < tiles; t++) {
        int64_t p = begin + t * TILE;
        int rows = end - p < TILE ? (int)(end - p) : TILE;
        int32_t *l = lists + t * LIST_SLOTS * slot;
        int64_t own = unions[isa](&a, p, rows, l);
        if (isa != 2 || 4 * own >= 5 * (int64_t)l[0]) continue;
        l[0] = -1;  /* the pixels run alone, each on its own list */
        for (int j = 0; j < rows; j++) unions[isa](&a, p + j, 1, l + (1 + j) * slot);
    }
    int64_t pw = panel_width[isa];
    for (int64_t c0 = 0; c0 < cout; c0 += pw) {
        int64_t width = cout - c0 < pw ? cout - c0 : pw;
        for (int64_t t = 0; t < tiles; t++) {
            int64_t p = begin + t * TILE;
            int rows = end - p < TILE ? (int)(end - p) : TILE;
            int32_t *l = lists + t * LIST_SLOTS * slot;
            if (l[0] >= 0) {
                panels[isa](&a, p, rows, l, c0, width);
            } else {
                for (int j = 0; j < rows; j++) pixel_panel_avx512(&a, p + j, l + (1 + j) * slot, c0, width);
            }
        }
    }
    return 0;
}

/* The same conv with each pixel over its own non-zero channels, for zeros that neighbouring pixels
   do not share: there a tile's union covers most channels (1 - z^4 of them for independent zeros),
   while a pixel alone does only its own. Without a tile, each weight row a pixel reads serves that
   pixel alone, so the rows must come from L1: the input channels go in blocks of PIXEL_CHANNELS (one
   64-bit mask of a pixel's non-zeros), and PIXEL_BLOCK pixels pass over a block's rows (at most
   64 x 192 floats, 48 KB) before the next block; their partial sums wait in y. A panel is 192
   outputs, 12 accumulators: one broadcast of x feeds 12 FMAs. AVX-512 only; elsewhere the tiles run.

   The loop over a pixel's non-zeros ends after a count that varies from pixel to pixel, and its
   mispredicted exit cost as much as a few non-zeros. So the pixels of a block pass in order of
   their count in the channel block (a counting sort, shared by every panel): pixels with the same
   count follow each other and the predictor learns where the loop ends (1.05-1.16x on the
   synthetic maps of benchmarks/sparse_conv1x1.py). Two neighbours in that order with the same
   count then share one loop, each with its own sums: one loop exit for two pixels, and two chains
   of FMAs in flight instead of one (1.05-1.2x more); three where a panel of at most 8 vectors
   leaves registers for three sets of sums (1.03-1.08x more).

   One weight load per FMA bounds that loop (about 0.24 ns per FMA on an Intel Xeon, against 0.16
   for a register tile with half a load per FMA). Neighbouring pixels that share non-zero channels
   therefore run as a pair: the channels they share load each weight vector once for both pixels'
   FMAs, and each pixel's other channels follow alone, so no FMA is spent on a zero (a loop over
   the pair's union, with FMAs on zeros, took up to 1.15x the time of pixels alone). Against pixels
   alone, Intel Xeon: 0.82-0.92x the time on synthetic maps whose zeros neighbours share, 0.87-0.95x
   on Lite0's late project convs over the photos, 0.96-1.05x on independent zeros, 0.97-1.0x on the
   L1 MobileNet v1's maps. Pairs pass in the order they come: sorted by their shared count, like the
   pixels above, the sort cost more than the predictor saved (AMD Zen 4: 0.90-1.0x the time on the
   synthetic maps without it, 0.96x the L1 MobileNet v1's forward, whose pixels nearly all pair). */
#define PIXEL_CHANNELS 64
#define PIXEL_BLOCK 256
#define PIXEL_PANEL 192
/* Outputs that split into panels of 128 run in those: a block's weight rows (64 x 128 floats, 32 KB)
   then fit AMD Zen 4's L1, and 8 vectors leave registers for three pixels' sums. On Zen 4, against
   panels of 192: 256 -> 256 and 512 -> 512 at 80 % independent zeros 0.92-0.93x the time; the L1
   MobileNet v1's forward (batch 64) 0.96x. Where 128 does not divide the outputs, 192 stays: 1152 ->
   192 as 128 + 64 took up to 1.2x the time. */
#define PIXEL_NARROW_PANEL 128

/* The non-zero masks of pixels [p0, p1) on input channels [k0, k0 + kb); the pairs (their first
   pixel, from p0; the second is the next one) in order; the other pixels in order of their count. */
typedef struct {
    uint64_t mask[PIXEL_BLOCK];
    int16_t pairs[PIXEL_BLOCK / 2], singles[PIXEL_BLOCK];
    int npairs, nsingles;
} PixelOrder;

__attribute__((target("avx512f"), always_inline))
static inline uint64_t nonzero_mask_avx512(const float *x, int64_t n) {
    uint64_t m = 0;
    for (int64_t j = 0; j < n; j += 16)  /* NaN counts as non-zero, so it reaches the output */
        m |= (uint64_t)_mm512_cmp_ps_mask(load_part(x + j, n - j), _mm512_setzero_ps(), _CMP_NEQ_UQ) << j;
    return m;
}

/* Counting sort of the n values at `items` by key(item), into `out`. */
#define COUNT_SORT(n, items, key, out) do { \
        int16_t start_[PIXEL_CHANNELS + 2] = {0}; \
        for (int i_ = 0; i_ < (n); i_++) start_[(key((items)[i_])) + 1]++; \
        for (int k_ = 1; k_ < PIXEL_CHANNELS + 2; k_++) start_[k_] += start_[k_ - 1]; \
        for (int i_ = 0; i_ < (n); i_++) (out)[start_[key((items)[i_])]++] = (items)[i_]; \
    } while (0)

__attribute__((target("avx512f")))
static void order_pixels(const Conv1x1 *a, int64_t p0, int64_t p1, int64_t k0, int64_t kb, PixelOrder *o) {
    const int n = (int)(p1 - p0);
    int16_t singles[PIXEL_BLOCK];
    int np = 0, ns = 0;
    for (int j = 0; j < n; j++) o->mask[j] = nonzero_mask_avx512(a->x + (p0 + j) * a->cin + k0, kb);
    for (int j = 0; j < n; j++) {
        if (j + 1 < n && (o->mask[j] & o->mask[j + 1]))
            o->pairs[np++] = (int16_t)j++;
        else
            singles[ns++] = (int16_t)j;
    }
#define OWN(j) __builtin_popcountll(o->mask[j])
    COUNT_SORT(ns, singles, OWN, o->singles);
#undef OWN
    o->npairs = np, o->nsingles = ns;
}
#undef COUNT_SORT

#define PIXEL_FMA(r) if (R > r) acc[r] = _mm512_fmadd_ps(v, _mm512_loadu_ps(wrow + 16 * r), acc[r]);
#define PIXEL_LOAD(p, r) (TAIL && r == R - 1 ? _mm512_maskz_loadu_ps(tail, p) : _mm512_loadu_ps(p))
/* The start and the end of a pixel's sums on the panel: bias or partial sums in; + residual, clamp
   (NaN stays NaN, as in store_pixel_avx512) on the last channel block; out. */
__attribute__((target("avx512f"), always_inline))
static inline void pixel_sums_in(const Conv1x1 *a, int64_t p, int64_t c0, int first, __m512 *acc, __mmask16 tail,
                                 const int R, const int TAIL) {
    const float *src = first ? a->bias + c0 : a->y + p * a->cout + c0;
    for (int r = 0; r < R; r++) acc[r] = PIXEL_LOAD(src + 16 * r, r);
}

__attribute__((target("avx512f"), always_inline))
static inline void pixel_sums_out(const Conv1x1 *a, int64_t p, int64_t c0, int last, __m512 *acc, __mmask16 tail,
                                  const int R, const int TAIL) {
    float *out = a->y + p * a->cout + c0;
    if (last) {
        const __m512 lo = _mm512_set1_ps(a->lo), hi = _mm512_set1_ps(a->hi);
        const float *res = a->residual ? a->residual + p * a->cout + c0 : NULL;
        for (int r = 0; r < R; r++) {
            const __m512 v = res ? _mm512_add_ps(acc[r], PIXEL_LOAD(res + 16 * r, r)) : acc[r];
            acc[r] = _mm512_min_ps(hi, _mm512_max_ps(lo, v));
        }
    }
    for (int r = 0; r < R; r++)  /* only a partial last vector goes under a mask (see load_part) */
        if (TAIL && r == R - 1)
            _mm512_mask_storeu_ps(out + 16 * r, tail, acc[r]);
        else
            _mm512_storeu_ps(out + 16 * r, acc[r]);
}

/* The asm keeps the weight vector in a register: without it GCC folds the load into both FMAs. */
#define SHARED_FMA(r) if (R > r) { __m512 wv = _mm512_loadu_ps(wrow + 16 * r); __asm__("" : "+v"(wv)); \
                                   acc[r] = _mm512_fmadd_ps(v, wv, acc[r]); acc2[r] = _mm512_fmadd_ps(u, wv, acc2[r]); }
#define SECOND_FMA(r) if (R > r) acc2[r] = _mm512_fmadd_ps(v, _mm512_loadu_ps(wrow + 16 * r), acc2[r]);
/* One pixel's channels `bits` (input row `src`) into the sums that FMA(r) adds to. */
#define OWN_CHANNELS(bits, src, FMA) \
    for (uint64_t own = (bits); own; own &= own - 1) { \
        const int64_t c = __builtin_ctzll(own); \
        const __m512 v = _mm512_set1_ps((src)[c]); \
        const float *wrow = w + c * a->ldw; \
        FMA(0) FMA(1) FMA(2) FMA(3) FMA(4) FMA(5) FMA(6) FMA(7) FMA(8) FMA(9) FMA(10) FMA(11) \
    }
#define TRIO_FMA(r) if (R > r) { acc[r] = _mm512_fmadd_ps(v, _mm512_loadu_ps(wrow + 16 * r), acc[r]); \
                                 acc2[r] = _mm512_fmadd_ps(u, _mm512_loadu_ps(urow + 16 * r), acc2[r]); \
                                 acc3[r] = _mm512_fmadd_ps(t, _mm512_loadu_ps(trow + 16 * r), acc3[r]); }
#define PAIR_FMA(r) if (R > r) { acc[r] = _mm512_fmadd_ps(v, _mm512_loadu_ps(wrow + 16 * r), acc[r]); \
                                 acc2[r] = _mm512_fmadd_ps(u, _mm512_loadu_ps(urow + 16 * r), acc2[r]); }
/* Pixels [p0, p1) in o's order on input channels [k0, k0 + kb) and the panel of R vectors at c0,
   the last one partial if TAIL. Both are constants at each call site, so that no store branches per
   vector. */
__attribute__((target("avx512f"), always_inline))
static inline void pixels_block_avx512_r(const Conv1x1 *a, int64_t p0, int64_t p1, int64_t c0, int64_t width,
                                         int64_t k0, int64_t kb, const PixelOrder *o, const int R, const int TAIL) {
    const int first = k0 == 0, last = k0 + kb >= a->cin;
    const float *w = a->w + k0 * a->ldw + c0;
    const __mmask16 tail = tail_mask(width - 16 * (R - 1));
    /* three, two or one pixels of the same count per loop: written out for each, since one loop over
       an array of G pixels' sums spilled them to the stack (0.92-0.95x on panels of 12 vectors) */
    for (int i = 0; i < o->npairs; i++) {  /* pairs: shared channels, then each pixel's own */
        const int64_t p = p0 + o->pairs[i];
        const uint64_t m = o->mask[p - p0], mb = o->mask[p - p0 + 1];
        const float *x = a->x + p * a->cin + k0, *xb = x + a->cin;
        __m512 acc[12], acc2[12];
        pixel_sums_in(a, p, c0, first, acc, tail, R, TAIL);
        pixel_sums_in(a, p + 1, c0, first, acc2, tail, R, TAIL);
        for (uint64_t both = m & mb; both; both &= both - 1) {
            const int64_t c = __builtin_ctzll(both);
            const __m512 v = _mm512_set1_ps(x[c]), u = _mm512_set1_ps(xb[c]);
            const float *wrow = w + c * a->ldw;
            SHARED_FMA(0) SHARED_FMA(1) SHARED_FMA(2) SHARED_FMA(3) SHARED_FMA(4) SHARED_FMA(5)
            SHARED_FMA(6) SHARED_FMA(7) SHARED_FMA(8) SHARED_FMA(9) SHARED_FMA(10) SHARED_FMA(11)
        }
        OWN_CHANNELS(m & ~mb, x, PIXEL_FMA)
        OWN_CHANNELS(mb & ~m, xb, SECOND_FMA)
        pixel_sums_out(a, p, c0, last, acc, tail, R, TAIL);
        pixel_sums_out(a, p + 1, c0, last, acc2, tail, R, TAIL);
    }
    for (int64_t q = 0; q < o->nsingles;) {
        const int64_t p = p0 + o->singles[q];
        uint64_t m = o->mask[p - p0];
        const float *x = a->x + p * a->cin + k0;
        __m512 acc[12];
        pixel_sums_in(a, p, c0, first, acc, tail, R, TAIL);
        const int64_t pb = q + 1 < o->nsingles ? p0 + o->singles[q + 1] : p;
        uint64_t mb = o->mask[pb - p0];
        const int64_t pc = q + 2 < o->nsingles ? p0 + o->singles[q + 2] : p;
        uint64_t mc = o->mask[pc - p0];
        if (R <= 8 && pc != p && __builtin_popcountll(m) == __builtin_popcountll(mc)) {  /* sorted: q + 1's too */
            const float *xb = a->x + pb * a->cin + k0, *xc = a->x + pc * a->cin + k0;
            __m512 acc2[12], acc3[12];
            pixel_sums_in(a, pb, c0, first, acc2, tail, R, TAIL);
            pixel_sums_in(a, pc, c0, first, acc3, tail, R, TAIL);
            for (; m; m &= m - 1, mb &= mb - 1, mc &= mc - 1) {
                const int64_t c = __builtin_ctzll(m), d = __builtin_ctzll(mb), e = __builtin_ctzll(mc);
                const __m512 v = _mm512_set1_ps(x[c]), u = _mm512_set1_ps(xb[d]), t = _mm512_set1_ps(xc[e]);
                const float *wrow = w + c * a->ldw, *urow = w + d * a->ldw, *trow = w + e * a->ldw;
                TRIO_FMA(0) TRIO_FMA(1) TRIO_FMA(2) TRIO_FMA(3) TRIO_FMA(4) TRIO_FMA(5) TRIO_FMA(6) TRIO_FMA(7)
            }
            pixel_sums_out(a, pb, c0, last, acc2, tail, R, TAIL);
            pixel_sums_out(a, pc, c0, last, acc3, tail, R, TAIL);
            q += 3;
        } else if (pb != p && __builtin_popcountll(m) == __builtin_popcountll(mb)) {  /* two pixels in turns */
            const float *xb = a->x + pb * a->cin + k0;
            __m512 acc2[12];
            pixel_sums_in(a, pb, c0, first, acc2, tail, R, TAIL);
            for (; m; m &= m - 1, mb &= mb - 1) {
                const int64_t c = __builtin_ctzll(m), d = __builtin_ctzll(mb);
                const __m512 v = _mm512_set1_ps(x[c]), u = _mm512_set1_ps(xb[d]);
                const float *wrow = w + c * a->ldw, *urow = w + d * a->ldw;
                PAIR_FMA(0) PAIR_FMA(1) PAIR_FMA(2) PAIR_FMA(3) PAIR_FMA(4) PAIR_FMA(5)
                PAIR_FMA(6) PAIR_FMA(7) PAIR_FMA(8) PAIR_FMA(9) PAIR_FMA(10) PAIR_FMA(11)
            }
            pixel_sums_out(a, pb, c0, last, acc2, tail, R, TAIL);
            q += 2;
        } else {
            OWN_CHANNELS(m, x, PIXEL_FMA)
            q += 1;
        }
        pixel_sums_out(a, p, c0, last, acc, tail, R, TAIL);
    }
}
#undef TRIO_FMA
#undef PAIR_FMA
#undef OWN_CHANNELS
#undef SECOND_FMA
#undef SHARED_FMA
#undef PIXEL_LOAD
#undef PIXEL_FMA

#define PIXEL_CASE(n) case n: tail ? pixels_block_avx512_r(a, p0, p1, c0, width, k0, kb, o, n, 1) \
                              : pixels_block_avx512_r(a, p0, p1, c0, width, k0, kb, o, n, 0); break;
__attribute__((target("avx512f")))
static void pixels_block_avx512(const Conv1x1 *a, int64_t p0, int64_t p1, int64_t c0, int64_t width, int64_t k0,
                                int64_t kb, const PixelOrder *o) {
    const int tail = width % 16 != 0;
    switch ((width + 15) / 16) {
        PIXEL_CASE(1) PIXEL_CASE(2) PIXEL_CASE(3) PIXEL_CASE(4) PIXEL_CASE(5) PIXEL_CASE(6)
        PIXEL_CASE(7) PIXEL_CASE(8) PIXEL_CASE(9) PIXEL_CASE(10) PIXEL_CASE(11) PIXEL_CASE(12)
        default: break;
    }
}
#undef PIXEL_CASE

/* Pixels [begin, end), the same arguments as actzip_sparse_conv1x1 (which runs where AVX-512 does not). */
static int pixels_conv1x1(const float *x, const float *w, const float *bias, const float *residual, float *y,
                          int32_t *lists, int64_t begin, int64_t end, int64_t cin, int64_t cout, int64_t ldw,
                          float lo, float hi, int isa) {
    if (isa != 2 || cin == 0)
        return actzip_sparse_conv1x1(x, w, bias, residual, y, lists, begin, end, cin, cout, ldw, lo, hi, isa);
    if (ldw < cout || ldw % 16) return -1;
    Conv1x1 a = {x, w, bias, residual, y, lists, cin, cout, ldw, lo, hi};
    PixelOrder order;
    const int64_t panel = cout % PIXEL_NARROW_PANEL ? PIXEL_PANEL : PIXEL_NARROW_PANEL;
    for (int64_t p0 = begin; p0 < end; p0 += PIXEL_BLOCK) {
        const int64_t p1 = end - p0 < PIXEL_BLOCK ? end : p0 + PIXEL_BLOCK;
        for (int64_t k0 = 0; k0 < cin; k0 += PIXEL_CHANNELS) {  /* each panel in turn adds this block's share */
            const int64_t kb = cin - k0 < PIXEL_CHANNELS ? cin - k0 : PIXEL_CHANNELS;
            order_pixels(&a, p0, p1, k0, kb, &order);
            for (int64_t c0 = 0; c0 < cout; c0 += panel)
                pixels_block_avx512(&a, p0, p1, c0, cout - c0 < panel ? cout - c0 : panel, k0, kb, &order);
        }
    }
    return 0;
}

/* Kept output pixels of a conv, straight from the zero-padded NHWC input (no im2col buffer):

   y[out_rows[k] + o] = clamp(bias[o] + sum over taps t inside the input, channels c of
                              x[in_rows[k] + taps[t] + c] * w[t * cin + c, o]  (+ residual[out_rows[k] + o]))

   in_rows[k] is where kept pixel k's top-left tap starts in the NHWC input (outside it, for a pixel
   on the border), taps[t] each tap's offset from there, out_rows[k] where its output row starts (in
   the full NHWC output, so kept rows land in place). The conv's zero padding is never copied:
   inside[k], where given, packs the kernel rows [i0, i1) and columns [j0, j1) of pixel k's taps that
   fall inside the input, 16 bits each (i0 | i1 << 16 | j0 << 32 | j1 << 48); the other taps read a
   row of zeros. Rows [begin, end) of the kept pixels; every input channel counts.

   The weight comes packed in panels of PANEL output channels, each panel's (taps * cin, PANEL) rows
   contiguous, so a panel streams from memory in order. A register tile is P pixels x PANEL outputs
   (P x 4 accumulators): each weight row is loaded once for P pixels, and each input value once for
   four vectors. The best P differs between CPUs (`rows_tile_pixels`). On AMD Zen 5, against tiles
   of 3, 5 and 6 pixels x 64 outputs, 4 x 96 and 8 x 48, and FMAs that broadcast their input from
   memory, 4 x 64 was the fastest: 0.8-0.9x the time of oneDNN's dense conv at 30 % masked pixels
   (0.7x would be ideal). On an Intel Xeon (AVX-512), 6 x 64 took 0.73-0.80x of oneDNN's time on
   ResNet18's 3x3 convs against 0.81-0.89x for 4 x 64 (7 and 8 pixels spill registers: 0.78-1.07x);
   with 3 input channels (the stem) 4 stays faster there too. On AMD Zen 4 (AVX-512 on 256-bit
   units) 4 and 6 measured the same over whole models (Lite0 on photos, ResNet18 at s = 0.3), as
   did 8 or 12 pixels for convs of one or two output vectors; there the 4 x 64 loop alone, its
   operands in L1, runs at the core's FMA peak. */
#define PIX 4
#define ROWS_PIX 6  /* the widest rows-conv tile */
#define RMAX 4
#define PANEL (16 * RMAX)
typedef struct {
    const float *x, *w, *bias, *residual, *zeros;
    float *y;
    const int64_t *in_rows, *taps, *out_rows;
    const uint64_t *inside;
    int64_t ntaps, kw, cin, cout;
    float lo, hi;
    int rows_side_by_side;  /* each kernel row's taps lie one after the other in the input */
    uint64_t every_tap;     /* the inside ranges of a pixel whose taps all lie inside the input */
    const char *prefetch;   /* lines of the weight a tile asks into L2, one per channel step */
    int64_t prefetch_lines;
    const float *fill;      /* or NULL: the masked rows' value, written between the kept ones */
    int64_t kept, out_floats;
} RowsConv;

/* Whether the tap at kernel row i, column j lies inside the input for a pixel whose inside ranges
   are `b` (see the doc above). */
static inline int tap_inside(uint64_t b, int64_t i, int64_t j) {
    return i >= (int64_t)(b & 0xFFFF) && i < (int64_t)(b >> 16 & 0xFFFF) && j >= (int64_t)(b >> 32 & 0xFFFF) &&
           j < (int64_t)(b >> 48);
}

/* Where pixel k reads tap t, kernel row i and column j: its input row, or the row of zeros for a
   tap in the padding. */
static inline const float *tap_row(const RowsConv *a, int64_t k, int64_t t, int64_t i, int64_t j) {
    if (a->inside && !tap_inside(a->inside[k], i, j)) return a->zeros;
    return a->x + (a->in_rows[k] + a->taps[t]);
}

/* Where output channel c0's columns start in the packed weight: in its panel, which may have
   begun before c0 (a thread's share of the outputs may start inside a panel). */
static inline const float *panel_at(const RowsConv *a, int64_t c0) {
    return a->w + (c0 - c0 % PANEL) * a->ntaps * a->cin + c0 % PANEL;
}

/* Taps [t0, t1) of up to P kept pixels from row k on the panel at c0 (R vectors wide): taps come
   in blocks whose panel rows stay in L2 while every tile passes over them. The first block starts
   from the bias, later ones from the sums the block before stored; only the last adds the residual
   and clamps. A short tile computes its missing pixels on its first pixel's input and drops them. */
__attribute__((target("avx512f"), always_inline))
static inline void rows_tile_avx512_r(const RowsConv *a, int64_t k, int rows, int64_t c0, int64_t width,
                                      int64_t t0, int64_t t1, const int R, const int P) {
    const int first = t0 == 0, last = t1 == a->ntaps;
    const int64_t cin = a->cin;
    __m512 acc[ROWS_PIX][RMAX];
    if (first) {  /* apart from the partial sums: in one loop with them, GCC builds the sums on the stack */
        for (int r = 0; r < R; r++) {
            const __m512 bias = _mm512_loadu_ps(a->bias + c0 + 16 * r);
            for (int j = 0; j < P; j++) acc[j][r] = bias;
        }
    } else {
        for (int j = 0; j < P; j++)
            for (int r = 0; r < R; r++)
                acc[j][r] = j >= rows ? _mm512_loadu_ps(a->bias + c0 + 16 * r)
                                      : load_part(a->y + a->out_rows[k + j] + c0 + 16 * r, width - 16 * r);
    }
    /* a tile whose pixels have every tap inside (most) skips the per-tap check */
    const uint64_t every_tap = a->every_tap;
    int64_t in_row[ROWS_PIX];
    uint64_t inside[ROWS_PIX];
    int edge = 0;
    for (int j = 0; j < P; j++) {
        const int64_t kj = k + (j < rows ? j : 0);
        in_row[j] = a->in_rows[kj];
        inside[j] = a->inside ? a->inside[kj] : every_tap;
        edge |= inside[j] != every_tap;
    }
    const float *panel = panel_at(a, c0);
    const char *pf = a->prefetch;
    int64_t pf_left = a->prefetch_lines;
    /* no division for the first tap: a 64-bit one costs as much as a narrow tile's FMAs */
    for (int64_t t = t0, ti = t0 ? t0 / a->kw : 0, tj = t0 ? t0 % a->kw : 0; t < t1;) {
        /* a whole kernel row of taps inside the input, where they lie side by side, runs as one
           tap of kw * cin channels (the stem's 3 channels alone left the loop mostly overhead) */
        const int64_t taps = !edge && a->rows_side_by_side && tj == 0 && t + a->kw <= t1 ? a->kw : 1;
        const float *w = panel + t * cin * PANEL, *x[ROWS_PIX];
        const int64_t tap = a->taps[t];
        for (int j = 0; j < P; j++)
            x[j] = edge && !tap_inside(inside[j], ti, tj) ? a->zeros : a->x + (in_row[j] + tap);
        t += taps;
        tj += taps;
        if (tj == a->kw) tj = 0, ti++;
        for (int64_t c = 0; c < taps * cin; c++, w += PANEL) {
            if (pf_left > 0) _mm_prefetch(pf, _MM_HINT_T1), pf += 64, pf_left--;
            __m512 v[ROWS_PIX];
#pragma GCC unroll 8
            for (int j = 0; j < P; j++) v[j] = _mm512_set1_ps(x[j][c]);
#pragma GCC unroll 8
            for (int r = 0; r < R; r++) {
                const __m512 wr = _mm512_loadu_ps(w + 16 * r);
#pragma GCC unroll 8
                for (int j = 0; j < P; j++) acc[j][r] = _mm512_fmadd_ps(v[j], wr, acc[j][r]);
            }
        }
    }
    const __m512 lo = _mm512_set1_ps(a->lo), hi = _mm512_set1_ps(a->hi);
    for (int j = 0; j < rows && j < P; j++) {  /* rows <= P: the bound tells the compiler so */
        float *out = a->y + a->out_rows[k + j] + c0;
        const float *res = a->residual && last ? a->residual + a->out_rows[k + j] + c0 : NULL;
        for (int r = 0; r < R; r++) {
            __m512 v = acc[j][r];
            if (res) v = _mm512_add_ps(v, load_part(res + 16 * r, width - 16 * r));
            if (last) v = _mm512_min_ps(hi, _mm512_max_ps(lo, v));
            store_part(out + 16 * r, v, width - 16 * r);
        }
    }
}

#define ROWS_CASE(r) case r: pixels == ROWS_PIX ? rows_tile_avx512_r(a, k, rows, c0, width, t0, t1, r, ROWS_PIX) \
                                                  : rows_tile_avx512_r(a, k, rows, c0, width, t0, t1, r, PIX); break;
__attribute__((target("avx512f")))
static void rows_tile_avx512(const RowsConv *a, int64_t k, int rows, int pixels, int64_t c0, int64_t width,
                             int64_t t0, int64_t t1) {
    switch ((width + 15) / 16) {
        ROWS_CASE(1) ROWS_CASE(2) ROWS_CASE(3)
        default: ROWS_CASE(4)
    }
}
#undef ROWS_CASE

/* A full tile of P pixels of a 1x1 conv whose input rows and output rows each follow one another
   (every pixel kept, or compact kept rows), on the panel at c0 (R vectors, the last partial if
   TAIL): the pixels' rows are found by steps of cin and cout, and with P, R and TAIL constants the
   sums stay in registers through the stores. The general tile reads each pixel's rows from the
   tables, checks its taps, and stores up to a row count and width known only at run time, which
   keeps its sums on the stack: with 16 to 80 input channels that cost it a tenth to a third of
   the time (AMD Zen 4). */
__attribute__((target("avx512f"), always_inline))
static inline void rows_1x1_tile_avx512_r(const RowsConv *a, const float *x, float *y, const float *res, int64_t c0,
                                          __mmask16 tail, const int R, const int P, const int TAIL) {
    const int64_t cin = a->cin, cout = a->cout;
    __m512 acc[ROWS_PIX][RMAX];
    for (int r = 0; r < R; r++) {
        const __m512 bias = _mm512_loadu_ps(a->bias + c0 + 16 * r);
        for (int j = 0; j < P; j++) acc[j][r] = bias;
    }
    const float *w = panel_at(a, c0);
    for (int64_t c = 0; c < cin; c++, w += PANEL) {
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            const __m512 wr = _mm512_loadu_ps(w + 16 * r);
#pragma GCC unroll 8
            for (int j = 0; j < P; j++) acc[j][r] = _mm512_fmadd_ps(_mm512_set1_ps(x[j * cin + c]), wr, acc[j][r]);
        }
    }
    const __m512 lo = _mm512_set1_ps(a->lo), hi = _mm512_set1_ps(a->hi);
#pragma GCC unroll 8
    for (int j = 0; j < P; j++) {
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            const int part = TAIL && r == R - 1;
            const int64_t at = j * cout + c0 + 16 * r;
            __m512 v = acc[j][r];
            if (res) v = _mm512_add_ps(v, part ? _mm512_maskz_loadu_ps(tail, res + at) : _mm512_loadu_ps(res + at));
            v = _mm512_min_ps(hi, _mm512_max_ps(lo, v));
            if (part)
                _mm512_mask_storeu_ps(y + at, tail, v);
            else
                _mm512_storeu_ps(y + at, v);
        }
    }
}

#define PLAIN_CASE(r) case r: \
    if (P == ROWS_PIX) { \
        if (part) rows_1x1_tile_avx512_r(a, x, y, res, c0, tail, r, ROWS_PIX, 1); \
        else rows_1x1_tile_avx512_r(a, x, y, res, c0, tail, r, ROWS_PIX, 0); \
    } else { \
        if (part) rows_1x1_tile_avx512_r(a, x, y, res, c0, tail, r, PIX, 1); \
        else rows_1x1_tile_avx512_r(a, x, y, res, c0, tail, r, PIX, 0); \
    } break;
/* The full tile of P (PIX or ROWS_PIX) rows from row k on the panel at c0, `width` outputs wide. */
__attribute__((target("avx512f")))
static void rows_1x1_tile_avx512(const RowsConv *a, int64_t k, int P, int64_t c0, int64_t width) {
    const float *x = a->x + a->in_rows[k];
    float *y = a->y + a->out_rows[k];
    const float *res = a->residual ? a->residual + a->out_rows[k] : NULL;
    const int R = (int)((width + 15) / 16), part = width % 16 != 0;
    const __mmask16 tail = tail_mask(width - 16 * (R - 1));
    switch (R) {
        PLAIN_CASE(1) PLAIN_CASE(2) PLAIN_CASE(3)
        default: PLAIN_CASE(4)
    }
}
#undef PLAIN_CASE

/* Whether the P rows from k read input rows, and write output rows, that follow one another. */
static inline int rows_follow(const RowsConv *a, int64_t k, int P) {
    for (int j = 1; j < P; j++)
        if (a->in_rows[k + j] != a->in_rows[k] + j * a->cin || a->out_rows[k + j] != a->out_rows[k] + j * a->cout)
            return 0;
    return 1;
}

/* A rows conv of at most 16 outputs and NARROW_TAPS taps x input channels, the stem of a one-channel
   image: its whole weight stays in registers, and 8 pixels whose taps are all inside the input run
   at once, each its own chain of FMAs. With only 9 FMAs per pixel, the register tile spends most
   of such a conv's time on per-tap pointers and border checks. */
#define NARROW_TAPS 9
#define NARROW_PIX 8
__attribute__((target("avx512f")))
static void rows_narrow_avx512(const RowsConv *a, int64_t begin, int64_t end) {
    __m512 w[NARROW_TAPS];
    int64_t off[NARROW_TAPS];
    int row[NARROW_TAPS], col[NARROW_TAPS];  /* each one's kernel row and column */
    /* counted, not divided: a producer runs this once per band, and 64-bit divisions add up */
    for (int t = 0, tap = 0, c = 0, i = 0, jj = 0; t < NARROW_TAPS; t++) {
        w[t] = _mm512_loadu_ps(a->w + t * PANEL);
        off[t] = a->taps[tap] + c, row[t] = i, col[t] = jj;
        if (++c == a->cin) c = 0, tap++, jj = jj + 1 == a->kw ? (i++, 0) : jj + 1;
    }
    const __m512 bias = _mm512_loadu_ps(a->bias), lo = _mm512_set1_ps(a->lo), hi = _mm512_set1_ps(a->hi);
    const uint64_t every_tap = a->every_tap;
    for (int64_t k = begin; k < end;) {
        int run = 0;  /* pixels from k with every tap inside */
        while (run < NARROW_PIX && k + run < end && (!a->inside || a->inside[k + run] == every_tap)) run++;
        const int n = run == NARROW_PIX ? NARROW_PIX : 1;
        __m512 acc[NARROW_PIX];
        const float *x[NARROW_PIX];
        if (n == NARROW_PIX) {
            for (int j = 0; j < NARROW_PIX; j++) acc[j] = bias, x[j] = a->x + a->in_rows[k + j];
            for (int t = 0; t < NARROW_TAPS; t++)
                for (int j = 0; j < NARROW_PIX; j++)
                    acc[j] = _mm512_fmadd_ps(_mm512_set1_ps(x[j][off[t]]), w[t], acc[j]);
        } else {
            const uint64_t inside = a->inside ? a->inside[k] : every_tap;
            acc[0] = bias;
            for (int t = 0; t < NARROW_TAPS; t++) {  /* a tap in the padding reads a zero: no branch */
                const float *p = tap_inside(inside, row[t], col[t]) ? a->x + (a->in_rows[k] + off[t]) : a->zeros;
                acc[0] = _mm512_fmadd_ps(_mm512_set1_ps(*p), w[t], acc[0]);
            }
        }
        for (int j = 0; j < n; j++) {
            float *out = a->y + a->out_rows[k + j];
            __m512 v = acc[j];
            if (a->residual) v = _mm512_add_ps(v, load_part(a->residual + a->out_rows[k + j], a->cout));
            store_part(out, _mm512_min_ps(hi, _mm512_max_ps(lo, v)), a->cout);
        }
        k += n;
    }
}

/* Pixels per rows-conv tile for `cin` input channels on this CPU, PIX or ROWS_PIX, as measured (see
   RowsConv's comment). The caller passes it in the Job, so that tests can run both anywhere. */
int actzip_rows_tile_pixels(int64_t cin) {
    __builtin_cpu_init();
    return cin >= 16 && __builtin_cpu_is("intel") ? ROWS_PIX : PIX;
}

/* Output channels [c0, c1) of the masked rows from float `from` to `to` of a full output: the fill
   row, or with a residual clamp(fill + residual) (NaN stays NaN), as fill_pixels writes them. */
__attribute__((always_inline))
static inline void fill_rows_between(const RowsConv *a, int64_t from, int64_t to, int64_t c0, int64_t c1) {
    for (int64_t r = from; r < to; r += a->cout) {
        float *restrict out = a->y + r;
        if (a->residual)
            for (int64_t c = c0; c < c1; c++) out[c] = clampf(a->fill[c] + a->residual[r + c], a->lo, a->hi);
        else
            for (int64_t c = c0; c < c1; c++) out[c] = a->fill[c];
    }
}

/* With a fill row, the masked rows around kept rows [k, k + rows) on output channels [c0, c1): those
   before each (from the kept row before it, or from the output's start) and, after the last kept
   row, those to the output's end. Kept rows come in the order of the output, so the masked ones
   lie between them, and a tile writes them in the pass that writes its own, while their lines are
   near, instead of a second pass over the output. */
__attribute__((always_inline))
static inline void fill_masked_rows(const RowsConv *a, int64_t k, int64_t rows, int64_t c0, int64_t c1) {
    if (!a->fill) return;
    for (int64_t i = k; i < k + rows; i++) {
        fill_rows_between(a, i ? a->out_rows[i - 1] + a->cout : 0, a->out_rows[i], c0, c1);
        if (i == a->kept - 1) fill_rows_between(a, a->out_rows[i] + a->cout, a->out_floats, c0, c1);
    }
}

__attribute__((target("avx512f")))
static void fill_masked_rows_avx512(const RowsConv *a, int64_t k, int64_t rows, int64_t c0, int64_t c1) {
    fill_masked_rows(a, k, rows, c0, c1);
}

/* The portable path (and AVX2's, which has no tuned kernel here): one pixel and panel at a time. */
static void rows_tile_c(const RowsConv *a, int64_t k, int rows, int64_t c0, int64_t width) {
    const float *panel = panel_at(a, c0);
    for (int j = 0; j < rows; j++) {
        float acc[PANEL];
        for (int64_t o = 0; o < width; o++) acc[o] = a->bias[c0 + o];
        for (int64_t t = 0; t < a->ntaps; t++) {
            const float *x = tap_row(a, k + j, t, t / a->kw, t % a->kw);
            const float *w = panel + t * a->cin * PANEL;
            for (int64_t c = 0; c < a->cin; c++)
                for (int64_t o = 0; o < width; o++) acc[o] += x[c] * w[c * PANEL + o];
        }
        float *out = a->y + a->out_rows[k + j] + c0;
        const float *res = a->residual ? a->residual + a->out_rows[k + j] + c0 : NULL;
        for (int64_t o = 0; o < width; o++) out[o] = clampf(acc[o] + (res ? res[o] : 0.0f), a->lo, a->hi);
    }
}

/* One call of either kernel, shared between the threads of an OpenMP team: the caller starts the
   team through PyTorch's own libgomp (GOMP_parallel), so the threads are PyTorch's and its thread
   count stays as the user set it; `thread_num` is that runtime's omp_get_thread_num. */
typedef struct Job {
    int (*thread_num)(void);
    int kernel;   /* 0: sparse_conv1x1, 1: rows_conv, 2: max_pool, 3: depthwise_rows, 4: producer_depthwise,
                   5: sparse_conv1x1 pixel by pixel, 6: fill_pixels, 7: nonzero_masks, 8: sparse_conv3x3 */
    int threads, isa, status;
    int64_t rows, list_ints, ntaps, kw, cin, cout, ldw;
    const float *x, *w, *bias, *residual, *zeros;
    float *y;
    int32_t *lists;
    const int64_t *in_rows, *taps, *out_rows;
    const uint64_t *inside;
    const int64_t *geometry;  /* max_pool: n, h, w, c, ho, wo, kh, kw, sh, sw, ph, pw; depthwise: see there */
    float lo, hi;
    const float *fill;        /* depthwise: the row a masked input pixel reads; rows_conv: see RowsConv */
    /* producer_depthwise: two jobs, a ring of rows per thread and the band schedule (see there) */
    const struct Job *producer, *consumer;
    const int64_t *bands;
    float *ring;
    int64_t nbands, nparts, ring_floats, in_image;
    int64_t tile;             /* rows_conv: pixels per register tile, PIX or ROWS_PIX */
    /* producer_depthwise, optionally: the 1x1 conv reading the depthwise rows, band by band */
    const struct Job *project;
    float *band;
    int64_t band_floats, out_image;
    int64_t masked;           /* fill_pixels: masked pixels per image */
    int64_t by_outputs;       /* rows_conv: threads share the output channels, not the rows (see there) */
    int64_t out_floats;       /* rows_conv with a fill row: the floats of the whole output */
} Job;

/* The end of the panel piece from output channel c0, at most c1. */
static inline int64_t piece_end(int64_t c0, int64_t c1) {
    const int64_t next = c0 - c0 % PANEL + PANEL;
    return next < c1 ? next : c1;
}

/* The rows conv whose weight outgrows L2 (AVX-512): panel by panel, in blocks of taps whose panel
   rows (taps x cin x PANEL floats) stay within ~512 KB of L2 while every tile of rows [begin, end)
   passes over them, the sums going through the output between blocks. The tiles share out the
   next block's weight rows to ask into L2 as they go: with few rows (batch 1), the weight streams
   in from L3 at each block's first tile, which left the core idle. */
static void rows_by_blocks(RowsConv *a, int64_t begin, int64_t end, int64_t c_lo, int64_t c_hi, int P) {
    const int64_t ntaps = a->ntaps, cin = a->cin, tiles = (end - begin + P - 1) / P;
    int64_t block = (512 << 10) / (cin * PANEL * 4);
    block = block < 1 ? 1 : block;
    for (int64_t c0 = c_lo; c0 < c_hi; c0 = piece_end(c0, c_hi)) {
        const int64_t width = piece_end(c0, c_hi) - c0;
        for (int64_t t0 = 0; t0 < ntaps; t0 += block) {
            const int64_t t1 = t0 + block < ntaps ? t0 + block : ntaps;
            const int64_t c_next = t1 < ntaps ? c0 : piece_end(c0, c_hi), t_next = t1 < ntaps ? t1 : 0;
            const int64_t next_taps = c_next < c_hi ? (t_next + block < ntaps ? block : ntaps - t_next) : 0;
            const char *next = (const char *)(panel_at(a, c_next - c_next % PANEL) + t_next * cin * PANEL);
            const int64_t lines = next_taps * cin * PANEL * 4 / 64, share = (lines + tiles - 1) / tiles;
            for (int64_t k = begin, i = 0; k < end; k += P, i++) {
                a->prefetch = next + i * share * 64;
                a->prefetch_lines = lines - i * share < share ? lines - i * share : share;
                rows_tile_avx512(a, k, end - k < P ? (int)(end - k) : P, P, c0, width, t0, t1);
                if (t1 == ntaps) fill_masked_rows_avx512(a, k, end - k < P ? end - k : P, c0, c0 + width);
            }
        }
    }
}

/* Rows [begin, end) of a rows-conv job, output channels [c_lo, c_hi) (all of them, or a thread's
   share where `by_outputs`: a few rows against a large weight, which every thread would otherwise
   stream whole). The weight is (ceil(cout / PANEL) * ntaps * cin, PANEL), the bias padded alike,
   so `ldw` must be PANEL. */
static int rows_conv_outputs(const Job *j, int64_t begin, int64_t end, int64_t c_lo, int64_t c_hi) {
    if (j->isa < 0 || j->isa > 2 || j->ldw != PANEL) return -1;
    RowsConv a = {j->x, j->w, j->bias, j->residual, j->zeros, j->y, j->in_rows, j->taps, j->out_rows, j->inside,
                  j->ntaps, j->kw, j->cin, j->cout, j->lo, j->hi, j->kw > 1,
                  (uint64_t)(j->ntaps / j->kw) << 16 | (uint64_t)j->kw << 48};
    a.fill = j->fill, a.kept = j->rows, a.out_floats = j->out_floats;
    for (int64_t t = 1, col = 1 % j->kw; t < j->ntaps; t++, col = col + 1 == j->kw ? 0 : col + 1)
        if (col && j->taps[t] != j->taps[t - 1] + j->cin) a.rows_side_by_side = 0;  /* no dilation */
    const int64_t ntaps = j->ntaps, cout = j->cout, panel_bytes = ntaps * j->cin * PANEL * 4;
    const int P = (int)j->tile;
    if (P != PIX && P != ROWS_PIX) return -1;
    if (j->isa != 2) {
        for (int64_t k = begin; k < end; k += P) {
            for (int64_t c0 = c_lo; c0 < c_hi; c0 = piece_end(c0, c_hi))
                rows_tile_c(&a, k, end - k < P ? (int)(end - k) : P, c0, piece_end(c0, c_hi) - c0);
            fill_masked_rows(&a, k, end - k < P ? end - k : P, c_lo, c_hi);
        }
        return 0;
    }
    if (cout <= 16 && ntaps * j->cin == NARROW_TAPS) {
        rows_narrow_avx512(&a, begin, end);
        fill_masked_rows_avx512(&a, begin, end - begin, c_lo, c_hi);
        return 0;
    }
    if (panel_bytes * ((c_hi - c_lo + PANEL - 1) / PANEL) <= (512 << 10)) {
        /* the whole weight stays in L2: each tile writes its output rows whole, once */
        const int plain = ntaps == 1 && !a.fill;  /* a 1x1 conv with no masked rows to write */
        for (int64_t k = begin; k < end; k += P) {
            if (plain && end - k >= P && rows_follow(&a, k, P)) {
                for (int64_t c0 = c_lo; c0 < c_hi; c0 = piece_end(c0, c_hi))
                    rows_1x1_tile_avx512(&a, k, P, c0, piece_end(c0, c_hi) - c0);
                continue;
            }
            for (int64_t c0 = c_lo; c0 < c_hi; c0 = piece_end(c0, c_hi))
                rows_tile_avx512(&a, k, end - k < P ? (int)(end - k) : P, P, c0, piece_end(c0, c_hi) - c0, 0, ntaps);
            fill_masked_rows_avx512(&a, k, end - k < P ? end - k : P, c_lo, c_hi);
        }
        return 0;
    }
    rows_by_blocks(&a, begin, end, c_lo, c_hi, P);
    return 0;
}

static int rows_conv(const Job *j, int64_t begin, int64_t end) { return rows_conv_outputs(j, begin, end, 0, j->cout); }


/* Max pooling of an NHWC input, output rows [begin, end) of the n * ho image rows (no dilation, no
   ceil mode): each output pixel is the maximum over its window's pixels inside the input, NaN if
   any of them is NaN (as PyTorch's). The output row of a pixel stays in L1 while each window pixel
   is folded into it; the compiler vectorizes the channel loop for the ISA of the caller (this plain
   loop measured 2x faster here than intrinsics holding the maxima in registers). */
__attribute__((always_inline))
static inline void max_pool_rows(const Job *j, int64_t begin, int64_t end) {
    const int64_t *g = j->geometry;
    const int64_t h = g[1], w = g[2], c = g[3], ho = g[4], wo = g[5], kh = g[6], kw = g[7];
    for (int64_t r = begin; r < end; r++) {
        const int64_t img = r / ho, oy = r % ho, y0 = oy * g[8] - g[10];
        const int64_t ya = y0 < 0 ? 0 : y0, yb = y0 + kh < h ? y0 + kh : h;
        for (int64_t ox = 0; ox < wo; ox++) {
            const int64_t x0 = ox * g[9] - g[11], xa = x0 < 0 ? 0 : x0, xb = x0 + kw < w ? x0 + kw : w;
            float *restrict out = j->y + (r * wo + ox) * c;
            for (int64_t k = 0; k < c; k++) out[k] = -__builtin_inff();
            for (int64_t y = ya; y < yb; y++)
                for (int64_t x = xa; x < xb; x++) {
                    const float *restrict in = j->x + ((img * h + y) * w + x) * c;
                    for (int64_t k = 0; k < c; k++) {
                        const float best = out[k], v = in[k];
                        out[k] = best != best || best >= v ? best : v;
                    }
                }
        }
    }
}

static void max_pool_c(const Job *j, int64_t begin, int64_t end) { max_pool_rows(j, begin, end); }

__attribute__((target("avx512f")))
static void max_pool_avx512(const Job *j, int64_t begin, int64_t end) { max_pool_rows(j, begin, end); }

/* Kept output pixels of a depthwise conv, each read from its input rows wherever they are:

   y[out_rows[k] + c] = clamp(bias[c] + sum over taps t of w[t * C + c] * row(k, t)[c], lo, hi)

   for kept pixel k of each image, where in_rows[k * T + t] says where tap t reads: an offset in floats
   within the image's input (its full NHWC map, or the producer's compact kept rows), -1 for a tap in
   the padding (a row of zeros) or -2 for an input pixel its producer masked and never wrote (the
   producer's masked value, `fill`). geometry: kept pixels per image, taps T, floats per input image,
   floats per output image, then per kept pixel its step: s > 0 where every tap of the next kept
   pixel reads s floats after its own, all inside the input, else 0 (so 0 for the last). Output
   rows [begin, end) of n * kept; channels go 64 at a time. The portable path runs one pixel at a
   time; AVX-512's (below) runs tiles of pixels. */
#define DW_MAX_TAPS 64

/* Where kept pixel k of image img reads each of its taps, into src; returns where it writes. */
static inline float *depthwise_taps(const Job *j, int64_t img, int64_t k, const float **src) {
    const int64_t T = j->geometry[1];
    /* selects, not branches: a masked producer leaves -2s in the table that no predictor learns
       (MobileNetV2's first fused block at 30 % masks took 1.5x the time with branches here) */
    const uintptr_t base = (uintptr_t)(j->x + img * j->geometry[2]), zeros = (uintptr_t)j->zeros,
                    fill = (uintptr_t)j->fill;
    for (int64_t t = 0; t < T; t++) {
        const int64_t o = j->in_rows[k * T + t];
        const uintptr_t special = o == -1 ? zeros : fill, row = base + (uintptr_t)o * sizeof(float);
        src[t] = (const float *)(o >= 0 ? row : special);
    }
    return j->y + img * j->geometry[3] + j->out_rows[k];
}

__attribute__((always_inline))
static inline void depthwise_rows_plain(const Job *j, int64_t begin, int64_t end) {
    const int64_t T = j->geometry[1], C = j->cin;
    for (int64_t r = begin; r < end; r++) {
        const float *src[DW_MAX_TAPS];
        float *restrict out = depthwise_taps(j, r / j->geometry[0], r % j->geometry[0], src);
        for (int64_t c0 = 0; c0 < C; c0 += 64) {
            const int64_t width = C - c0 < 64 ? C - c0 : 64;
            float acc[64];
            for (int64_t c = 0; c < width; c++) acc[c] = j->bias[c0 + c];
            for (int64_t t = 0; t < T; t++) {
                const float *restrict s = src[t] + c0, *restrict w = j->w + t * C + c0;
                for (int64_t c = 0; c < width; c++) acc[c] += s[c] * w[c];
            }
            for (int64_t c = 0; c < width; c++) out[c0 + c] = clampf(acc[c], j->lo, j->hi);
        }
    }
}

static void depthwise_rows_c(const Job *j, int64_t begin, int64_t end) { depthwise_rows_plain(j, begin, end); }

__attribute__((target("avx2,fma")))
static void depthwise_rows_avx2(const Job *j, int64_t begin, int64_t end) { depthwise_rows_plain(j, begin, end); }

/* The same, PIX kept pixels at a time with up to 64 sums each in R registers, so that each weight
   vector is loaded once for PIX pixels. Only a partial last vector (MASKED) goes under a mask (see
   load_part). A short tile computes its missing pixels on its first pixel's input and drops them. */
#define DW_LOAD(r, p) (MASKED && r == R - 1 ? _mm512_maskz_loadu_ps(tail, p) : _mm512_loadu_ps(p))
#define DW_FMA(p, r) if (R > r) a##p##r = _mm512_fmadd_ps(DW_LOAD(r, s##p + 16 * r), w##r, a##p##r);
#define DW_TAP(r) if (R > r) { w##r = DW_LOAD(r, w + 16 * r); DW_FMA(0, r) DW_FMA(1, r) DW_FMA(2, r) DW_FMA(3, r) }
__attribute__((target("avx512f"), always_inline))
static inline void depthwise_tile_avx512(const Job *j, const float *const (*src)[DW_MAX_TAPS], float *const *out,
                                         int rows, int64_t c0, __mmask16 tail, const int R, const int MASKED) {
    const int64_t T = j->geometry[1], C = j->cin;
    const float *b = j->bias + c0;
    __m512 w0 = DW_LOAD(0, b), w1 = R > 1 ? DW_LOAD(1, b + 16) : w0, w2 = R > 2 ? DW_LOAD(2, b + 32) : w0;
    __m512 w3 = R > 3 ? DW_LOAD(3, b + 48) : w0;
    __m512 a00 = w0, a01 = w1, a02 = w2, a03 = w3, a10 = w0, a11 = w1, a12 = w2, a13 = w3;
    __m512 a20 = w0, a21 = w1, a22 = w2, a23 = w3, a30 = w0, a31 = w1, a32 = w2, a33 = w3;
    for (int64_t t = 0; t < T; t++) {
        const float *w = j->w + t * C + c0, *s0 = src[0][t] + c0, *s1 = src[1][t] + c0, *s2 = src[2][t] + c0,
                    *s3 = src[3][t] + c0;
        DW_TAP(0) DW_TAP(1) DW_TAP(2) DW_TAP(3)
    }
    const __m512 lo = _mm512_set1_ps(j->lo), hi = _mm512_set1_ps(j->hi);
    __m512 acc[PIX][4] = {{a00, a01, a02, a03}, {a10, a11, a12, a13}, {a20, a21, a22, a23}, {a30, a31, a32, a33}};
    for (int p = 0; p < rows; p++) {
        for (int r = 0; r < R; r++) {
            const __m512 v = _mm512_min_ps(hi, _mm512_max_ps(lo, acc[p][r]));
            if (MASKED && r == R - 1)
                _mm512_mask_storeu_ps(out[p] + c0 + 16 * r, tail, v);
            else
                _mm512_storeu_ps(out[p] + c0 + 16 * r, v);
        }
    }
}
#undef DW_TAP
#undef DW_FMA
#undef DW_LOAD

/* A run of P (at most RUN_PIX) kept pixels from pixel k of image img whose taps read `step` floats
   apart (along an image row, away from the border: the steps above), 32 channels at a time (R
   vectors, the last partial if MASKED): the first pixel's table row gives every pixel's taps, and
   up to twice the pixels of a tile share each weight vector. With 16 channels the 4-pixel tiles
   spent more time on their tables and tap pointers (9 loads for 4 multiply-adds per tap) than on
   the multiply-adds. */
#define RUN_PIX 8
#define RUN_LOAD(r, p) (MASKED && (r) == R - 1 ? _mm512_maskz_loadu_ps(tail, p) : _mm512_loadu_ps(p))

/* How many taps from tap t (at most 5) each read `step` floats after the one before, as a kernel
   row's taps do at stride 1: pixel p's tap t + i then reads what pixel p + i's tap t reads. */
static inline int tap_chain(const float *const *src, int64_t t, int64_t T, int64_t step) {
    int n = 1;
    while (n < 5 && t + n < T && src[t + n] == src[t + n - 1] + step) n++;
    return n;
}

/* L such taps (weights from w, the first one's input from s) into the sums of a run of P pixels:
   each input vector is loaded once for the L taps that read it, not once per multiply-add. On AMD
   Zen 4 a 16-channel 3x3 conv at 28x28 took 0.93x the time, a 24-channel 5x5 one 0.91x; a 32-channel
   3x3 one at 112x112, its input from memory, 1.03x. Each pixel still adds its taps in order. */
__attribute__((target("avx512f"), always_inline))
static inline void depthwise_chain_avx512(const float *w, const float *s, int64_t step, int64_t C,
                                          __m512 (*acc)[2], __mmask16 tail, const int P, const int R, const int L,
                                          const int MASKED) {
    __m512 wv[5][2];
#pragma GCC unroll 5
    for (int i = 0; i < L; i++) wv[i][0] = RUN_LOAD(0, w + i * C), wv[i][1] = R > 1 ? RUN_LOAD(1, w + i * C + 16) : wv[i][0];
#pragma GCC unroll 12
    for (int q = 0; q < P + L - 1; q++) {
        const __m512 v0 = RUN_LOAD(0, s + q * step), v1 = R > 1 ? RUN_LOAD(1, s + q * step + 16) : v0;
#pragma GCC unroll 5
        for (int i = L - 1; i >= 0; i--) {  /* pixel q - i, its tap i */
            if (q - i < 0 || q - i >= P) continue;
            acc[q - i][0] = _mm512_fmadd_ps(v0, wv[i][0], acc[q - i][0]);
            if (R > 1) acc[q - i][1] = _mm512_fmadd_ps(v1, wv[i][1], acc[q - i][1]);
        }
    }
}
__attribute__((target("avx512f"), always_inline))
static inline void depthwise_run_avx512(const Job *j, const float *const *src, float *out, int64_t k, int64_t c0,
                                        int64_t step, __mmask16 tail, const int P, const int R, const int MASKED) {
    const int64_t T = j->geometry[1], C = j->cin;
    __m512 acc[RUN_PIX][2];
    const __m512 b0 = RUN_LOAD(0, j->bias + c0), b1 = R > 1 ? RUN_LOAD(1, j->bias + c0 + 16) : b0;
#pragma GCC unroll 8
    for (int p = 0; p < P; p++) acc[p][0] = b0, acc[p][1] = b1;
    for (int64_t t = 0; t < T;) {  /* chains of 5 or 3 taps (a kernel row), else one tap */
        const int n = tap_chain(src, t, T, step), L = n == 5 ? 5 : n >= 3 ? 3 : 1;
        const float *w = j->w + t * C + c0, *s = src[t] + c0;
        if (L == 5)
            depthwise_chain_avx512(w, s, step, C, acc, tail, P, R, 5, MASKED);
        else if (L == 3)
            depthwise_chain_avx512(w, s, step, C, acc, tail, P, R, 3, MASKED);
        else
            depthwise_chain_avx512(w, s, step, C, acc, tail, P, R, 1, MASKED);
        t += L;
    }
    const __m512 lo = _mm512_set1_ps(j->lo), hi = _mm512_set1_ps(j->hi);
#pragma GCC unroll 8
    for (int p = 0; p < P; p++) {
        float *o = out + j->out_rows[k + p] + c0;
        for (int r = 0; r < R; r++) {
            const __m512 v = _mm512_min_ps(hi, _mm512_max_ps(lo, acc[p][r]));
            if (MASKED && r == R - 1)
                _mm512_mask_storeu_ps(o + 16 * r, tail, v);
            else
                _mm512_storeu_ps(o + 16 * r, v);
        }
    }
}

/* The run on every channel: blocks of 32, then what is left (one or two vectors, the last partial
   or not). */
__attribute__((target("avx512f"), always_inline))
static inline void depthwise_run_blocks_avx512(const Job *j, int64_t img, int64_t k, int64_t step, const int P) {
    const int64_t C = j->cin;
    const float *src[DW_MAX_TAPS];
    float *const out = depthwise_taps(j, img, k, src) - j->out_rows[k];
    int64_t c0 = 0;
    for (; c0 + 32 <= C; c0 += 32) depthwise_run_avx512(j, src, out, k, c0, step, 0xFFFF, P, 2, 0);
    const int64_t left = C - c0;
    const __mmask16 tail = tail_mask(left - 16 * ((left - 1) / 16));
    switch ((left + 15) / 16 + 2 * (left % 16 != 0)) {
        case 1: depthwise_run_avx512(j, src, out, k, c0, step, tail, P, 1, 0); break;
        case 3: depthwise_run_avx512(j, src, out, k, c0, step, tail, P, 1, 1); break;
        case 4: depthwise_run_avx512(j, src, out, k, c0, step, tail, P, 2, 1); break;
        default: break;  /* none left */
    }
}
#undef RUN_LOAD

/* The step of a run of n pixels from kept pixel k, with `left` rows left, or 0 where none starts. */
static inline int64_t depthwise_run_step(const Job *j, int64_t k, int64_t left, int n) {
    const int64_t kept = j->geometry[0], *steps = j->geometry + 4;
    if (left < n || k + n > kept) return 0;
    for (int p = 1; p < n - 1; p++)
        if (steps[k + p] != steps[k]) return 0;
    return steps[k];
}

/* One tile of `rows` (at most PIX) kept pixels from pixel k of image img, every channel. */
__attribute__((target("avx512f")))
static void depthwise_tiles_avx512(const Job *j, int64_t img, int64_t k, int rows) {
    const int64_t C = j->cin, kept = j->geometry[0];
    const float *src[PIX][DW_MAX_TAPS];
    float *out[PIX];
    for (int p = 0; p < PIX; p++) {  /* a short tile's missing pixels repeat its last */
        out[p] = depthwise_taps(j, img, k, src[p]);
        if (p + 1 < rows && ++k == kept) k = 0, img++;
    }
    int64_t c0 = 0;
    for (; c0 + 64 <= C; c0 += 64) depthwise_tile_avx512(j, src, out, rows, c0, 0xFFFF, 4, 0);
    const int64_t left = C - c0, R = (left + 15) / 16;
    const __mmask16 tail = tail_mask(left - 16 * (R - 1));
    switch (R + 4 * (left % 16 != 0)) {
        case 1: depthwise_tile_avx512(j, src, out, rows, c0, tail, 1, 0); break;
        case 2: depthwise_tile_avx512(j, src, out, rows, c0, tail, 2, 0); break;
        case 3: depthwise_tile_avx512(j, src, out, rows, c0, tail, 3, 0); break;
        case 5: depthwise_tile_avx512(j, src, out, rows, c0, tail, 1, 1); break;
        case 6: depthwise_tile_avx512(j, src, out, rows, c0, tail, 2, 1); break;
        case 7: depthwise_tile_avx512(j, src, out, rows, c0, tail, 3, 1); break;
        case 8: depthwise_tile_avx512(j, src, out, rows, c0, tail, 4, 1); break;
        default: break;  /* no channels left */
    }
}

__attribute__((target("avx512f")))
static void depthwise_rows_avx512(const Job *j, int64_t begin, int64_t end) {
    const int64_t kept = j->geometry[0];
    /* row r0 is kept pixel k of image img, moved along without dividing: a 64-bit division per
       pixel took a tenth of the time of a 16-channel conv */
    int64_t img = begin / kept, k = begin % kept;
    for (int64_t r0 = begin; r0 < end;) {
        int64_t step = depthwise_run_step(j, k, end - r0, RUN_PIX);
        int rows = RUN_PIX;
        if (step) {
            depthwise_run_blocks_avx512(j, img, k, step, RUN_PIX);
        } else if ((step = depthwise_run_step(j, k, end - r0, PIX))) {  /* the end of a row */
            rows = PIX;
            depthwise_run_blocks_avx512(j, img, k, step, PIX);
        } else {
            rows = end - r0 < PIX ? (int)(end - r0) : PIX;
            depthwise_tiles_avx512(j, img, k, rows);
        }
        r0 += rows;
        for (k += rows; k >= kept; k -= kept) img++;
    }
}

static int depthwise_rows(const Job *j, int64_t begin, int64_t end) {
    if (j->ntaps > DW_MAX_TAPS) return -1;
    (j->isa == 2 ? depthwise_rows_avx512 : j->isa == 1 ? depthwise_rows_avx2 : depthwise_rows_c)(j, begin, end);
    return 0;
}

/* A kernel-5 job (the 1x1 conv skipping each pixel's zero channels, AVX-512's alone) on `n`
   consecutive rows from x into y (and residual), inside a fused block. */
static int pixel_rows(const Job *j, const float *x, float *y, const float *residual, int64_t n) {
    if (j->isa != 2) return -1;
    return pixels_conv1x1(x, j->w, j->bias, residual, y, NULL, 0, n, j->cin, j->cout, j->ldw, j->lo, j->hi, j->isa);
}

/* The project conv of one band, rows [begin, end) of its image: a rows conv, or (kernel 5) its
   pixel rows, whose band rows start the buffer and whose output rows follow each other from `y`
   (every pixel kept, or compact kept rows). */
static int project_band(const Job *j, int64_t begin, int64_t end) {
    if (j->kernel != 5) return rows_conv(j, begin, end);
    const int64_t skip = begin * j->cout;
    return pixel_rows(j, j->x, j->y + skip, j->residual ? j->residual + skip : NULL, end - begin);
}

/* The producer's rows [begin, end) of one image into the ring of `ring_rows` rows: a rows conv, or
   (kernel 5) its pixel rows, whose input rows follow each other from `x` (every pixel kept) and
   whose output rows wrap around the ring. */
static int producer_rows(const Job *j, int64_t begin, int64_t end, int64_t ring_rows) {
    if (j->kernel != 5) return rows_conv(j, begin, end);
    for (int64_t s = begin; s < end;) {
        const int64_t slot = s % ring_rows, e = end - s < ring_rows - slot ? end : s + ring_rows - slot;
        if (pixel_rows(j, j->x + s * j->cin, j->y + slot * j->cout, NULL, e - s)) return -1;
        s = e;
    }
    return 0;
}

/* A rows-conv producer and the depthwise conv that consumes it, image by image, in bands. Work unit
   u of [begin, end) is part u % nparts of image u / nparts: its share of the bands (parts let
   several threads share one image). Band b (bands[3b .. 3b + 2]) first computes the producer's kept
   rows of one image up to bands[3b], then the consumer's kept rows up to bands[3b + 1], which read
   no producer row past the first, nor one before bands[3b + 2], the first row this band or a later
   one reads (a part starts computing there). The producer writes its row k to row k % (ring rows)
   of a ring small enough to stay in L2 (the caller sizes it so that no band reads a row the ring
   has dropped, and gives the consumer ring offsets in its table), so the producer's map, the
   largest of an inverted residual block, never reaches memory. The producer job covers one image
   (its x is moved to each image here); the consumer job reads the ring (no per-image input offset)
   and writes each image's rows.
   With a `project` job (a rows conv of one image, whose y and residual are moved `out_image` floats
   per image here), the consumer writes each band's rows into the thread's `band` buffer instead
   (its table says where), and the project conv reads them from there at once: the depthwise map
   never reaches memory either. */
static int producer_depthwise(const Job *j, int64_t begin, int64_t end) {
    const int thread = j->thread_num();
    Job producer = *j->producer, consumer = *j->consumer, project = j->project ? *j->project : producer;
    consumer.x = producer.y = j->ring + thread * j->ring_floats;
    if (j->project) project.x = consumer.y = j->band + thread * j->band_floats;
    const int64_t kept = consumer.geometry[0], *bands = j->bands;
    for (int64_t u = begin; u < end; u++) {
        const int64_t img = u / j->nparts, part = u % j->nparts;
        const int64_t b0 = part * j->nbands / j->nparts, b1 = (part + 1) * j->nbands / j->nparts;
        if (b0 >= b1) continue;
        producer.x = j->producer->x + img * j->in_image;
        if (j->project) {
            project.y = j->project->y + img * j->out_image;
            project.residual = j->project->residual ? j->project->residual + img * j->out_image : NULL;
        }
        int64_t made = b0 ? bands[3 * b0 + 2] : 0, used = b0 ? bands[3 * b0 - 2] : 0;
        for (int64_t b = b0; b < b1; b++) {
            const int64_t make = bands[3 * b], use = bands[3 * b + 1];
            if (make > made && producer_rows(&producer, made, make, j->ring_floats / producer.cout)) return -1;
            made = make > made ? make : made;
            if (use > used && (depthwise_rows(&consumer, img * kept + used, img * kept + use)
                               || (j->project && project_band(&project, used, use)))) return -1;
            used = use > used ? use : used;
        }
    }
    return 0;
}

/* The masked pixels of a conv's NHWC output: row r of [begin, end) is masked pixel r % masked of
   image r / masked (out_rows: the pixels' indices in an image, out_image: its floats), set to the
   fill row, or with a residual (laid out as y) to clamp(fill + residual) (NaN stays NaN). The
   channel loops are left to the compiler, one copy per ISA. */
__attribute__((always_inline))
static inline void fill_rows(const Job *j, int64_t begin, int64_t end) {
    const int64_t n = j->masked, C = j->cout;
    const float *restrict fill = j->fill;
    int64_t img = begin / n, k = begin % n;  /* moved along row by row, without dividing */
    for (int64_t r = begin; r < end; r++) {
        const int64_t at = img * j->out_image + j->out_rows[k] * C;
        float *restrict out = j->y + at;
        if (j->residual) {
            const float *restrict res = j->residual + at;
            for (int64_t c = 0; c < C; c++) out[c] = clampf(fill[c] + res[c], j->lo, j->hi);
        } else {
            for (int64_t c = 0; c < C; c++) out[c] = fill[c];
        }
        if (++k == n) k = 0, img++;
    }
}

static void fill_c(const Job *j, int64_t begin, int64_t end) { fill_rows(j, begin, end); }

__attribute__((target("avx2,fma")))
static void fill_avx2(const Job *j, int64_t begin, int64_t end) { fill_rows(j, begin, end); }

__attribute__((target("avx512f")))
static void fill_avx512(const Job *j, int64_t begin, int64_t end) { fill_rows(j, begin, end); }

/* thread_num where the kernels run on the calling thread alone (no libgomp found) */
int actzip_thread_zero(void) { return 0; }

/* Sparse-input 3x3 conv, stride 1 or 2, padding 1, on NHWC maps of at most 64 input channels and
   16, 32 or 64 output channels (AVX-512). Each input pixel's non-zero channels are first a 64-bit
   mask (nonzero_masks, a job over pixels). Then each tile of T output pixels of one output row
   keeps its T x V sums in registers and walks the 3 x (S (T - 1) + 3) input pixels under it
   (stride S): for each non-zero channel of each, one broadcast and up to 3 weight rows (one per
   column tap) multiply-add into the output pixels those taps reach. Work per non-zero is the 9
   multiply-adds of its taps, so zeros cost nothing but their mask bit; oneDNN and onnxruntime run
   every input channel.
   Rows of the job: the output rows of all images (n * ho); in_image and kw hold the input's height
   and width, out_image and tile the output's, ldw the stride; lists points at the masks (uint64
   per input pixel); w is (3, 3, cin, cout). */
__attribute__((target("avx512f"))) static void nonzero_masks_avx512(const Job *j, int64_t begin, int64_t end) {
    uint64_t *m = (uint64_t *)j->lists;
    const int64_t c = j->cin;
    for (int64_t p = begin; p < end; p++) {
        const float *x = j->x + p * c;
        uint64_t bits = 0;
        for (int64_t k = 0; k < c; k += 16) {
            __mmask16 t = c - k >= 16 ? 0xffff : (__mmask16)((1u << (c - k)) - 1);
            __m512 v = _mm512_maskz_loadu_ps(t, x + k);
            bits |= (uint64_t)_mm512_mask_cmp_ps_mask(t, v, _mm512_setzero_ps(), _CMP_NEQ_UQ) << k;
        }
        m[p] = bits;
    }
}

__attribute__((target("avx512f,bmi"), always_inline))
static inline void conv3x3_tile_avx512(const Job *j, int64_t n, int64_t r, int64_t x0, const int V, const int T,
                                       const int S) {
    const int64_t H = j->in_image, W = j->kw, Ho = j->out_image, Wo = j->tile, C = j->cin, CO = j->cout;
    const uint64_t *m = (const uint64_t *)j->lists;
    __m512 acc[T][V];
    for (int o = 0; o < T; o++)
        for (int v = 0; v < V; v++) acc[o][v] = _mm512_loadu_ps(j->bias + 16 * v);
    for (int dy = 0; dy < 3; dy++) {
        const int64_t iy = S * r + dy - 1;
        if (iy < 0 || iy >= H) continue;
        const float *row = j->x + (n * H + iy) * W * C;
        const uint64_t *mrow = m + (n * H + iy) * W;
        const float *wr = j->w + dy * 3 * C * CO;
#pragma GCC unroll 20
        for (int i = 0; i < S * (T - 1) + 3; i++) {  /* input column S x0 - 1 + i: output (i - dx) / S */
            const int64_t ix = S * x0 - 1 + i;
            if (ix < 0 || ix >= W) continue;
            uint64_t bits = mrow[ix];
            const float *px = row + ix * C;
            while (bits) {
                const int64_t c = __builtin_ctzll(bits);
                bits &= bits - 1;
                const __m512 b = _mm512_set1_ps(px[c]);
                const float *w0 = wr + c * CO;
#pragma GCC unroll 3
                for (int dx = 0; dx < 3; dx++) {
                    const int o = (i - dx) / S;  /* the output this tap of this column reaches, if any */
                    if (i < dx || (i - dx) % S || o >= T) continue;
                    for (int v = 0; v < V; v++)
                        acc[o][v] = _mm512_fmadd_ps(b, _mm512_loadu_ps(w0 + dx * C * CO + 16 * v), acc[o][v]);
                }
            }
        }
    }
    const __m512 lo = _mm512_set1_ps(j->lo), hi = _mm512_set1_ps(j->hi);
    for (int o = 0; o < T && x0 + o < Wo; o++) {
        const int64_t at = ((n * Ho + r) * Wo + x0 + o) * CO;
        for (int v = 0; v < V; v++) {
            __m512 s = acc[o][v];
            if (j->residual) s = _mm512_add_ps(s, _mm512_loadu_ps(j->residual + at + 16 * v));
            _mm512_storeu_ps(j->y + at + 16 * v, _mm512_min_ps(_mm512_max_ps(s, lo), hi));
        }
    }
}

__attribute__((target("avx512f,bmi")))
static void sparse_conv3x3_avx512(const Job *j, int64_t begin, int64_t end) {
    const int64_t Ho = j->out_image, Wo = j->tile;
    for (int64_t k = begin; k < end; k++) {
        const int64_t n = k / Ho, r = k % Ho;
        for (int64_t x0 = 0; x0 < Wo; x0 += j->cout == 64 ? 4 : 8) {
            if (j->ldw == 1)
                j->cout == 16 ? conv3x3_tile_avx512(j, n, r, x0, 1, 8, 1)
                    : j->cout == 32 ? conv3x3_tile_avx512(j, n, r, x0, 2, 8, 1) : conv3x3_tile_avx512(j, n, r, x0, 4, 4, 1);
            else
                j->cout == 16 ? conv3x3_tile_avx512(j, n, r, x0, 1, 8, 2)
                    : j->cout == 32 ? conv3x3_tile_avx512(j, n, r, x0, 2, 8, 2) : conv3x3_tile_avx512(j, n, r, x0, 4, 4, 2);
        }
    }
}

void actzip_share(void *p) {
    Job *j = p;
    if (j->kernel == 1 && j->by_outputs) {  /* every row, a share of the output channels */
        const int64_t vectors = (j->cout + 15) / 16, t = j->thread_num();
        const int64_t c_lo = 16 * (t * vectors / j->threads), c_hi = 16 * ((t + 1) * vectors / j->threads);
        if (c_lo < c_hi && rows_conv_outputs(j, 0, j->rows, c_lo, c_hi < j->cout ? c_hi : j->cout)) j->status = -1;
        return;
    }
    const int64_t unit = j->kernel == 4 ? 1 : TILE;  /* producer_depthwise shares whole images */
    int64_t share = ((j->rows + j->threads - 1) / j->threads + unit - 1) / unit * unit;
    int64_t begin = j->thread_num() * share, end = begin + share < j->rows ? begin + share : j->rows;
    if (begin >= end) return;
    int status = 0;
    if (j->kernel == 0 || j->kernel == 5)
        status = (j->kernel == 0 ? actzip_sparse_conv1x1 : pixels_conv1x1)(
            j->x, j->w, j->bias, j->residual, j->y, j->lists + begin / TILE * j->list_ints, begin, end, j->cin,
            j->cout, j->ldw, j->lo, j->hi, j->isa);
    else if (j->kernel == 1)
        status = rows_conv(j, begin, end);
    else if (j->kernel == 3)
        status = depthwise_rows(j, begin, end);
    else if (j->kernel == 4)
        status = producer_depthwise(j, begin, end);
    else if (j->kernel == 6)
        (j->isa == 2 ? fill_avx512 : j->isa == 1 ? fill_avx2 : fill_c)(j, begin, end);
    else if (j->kernel == 7 || j->kernel == 8) {  /* AVX-512 only: the caller offers them nowhere else */
        if (j->isa != 2 || j->cin > 64
            || (j->kernel == 8 && ((j->cout != 16 && j->cout != 32 && j->cout != 64) || (j->ldw != 1 && j->ldw != 2))))
            status = -1;
        else
            (j->kernel == 7 ? nonzero_masks_avx512 : sparse_conv3x3_avx512)(j, begin, end);
    }
    else if (j->isa == 2)
        max_pool_avx512(j, begin, end);
    else
        max_pool_c(j, begin, end);
    if (status) j->status = status;
}

/* What this CPU can run: 2 with AVX-512F, 1 with AVX2 and FMA, else 0. */
int actzip_best_isa(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return 2;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 1;
    return 0;
}

/* An importable module with no Python functions: Python reaches the kernels through ctypes. */
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "kernels", NULL, -1, NULL};
PyMODINIT_FUNC PyInit_kernels(void) { return PyModule_Create(&module); }
