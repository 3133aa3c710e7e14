/* ctxrans's coder in C: the decoder, several chunks side by side, and the encoder's two passes.

   Decoding one ctxrans chunk is a chain: a value's context needs its left neighbour's class,
   which needs the symbol the previous rANS step looked up. The chunks of a stream are independent,
   so the decoder advances LANES of them in lock-step, one per AVX-512 lane; the portable path
   steps the same lanes one after another (on this code the core found no more to overlap).

   The loops have no data-dependent branch. A value's raw bits are read at a bit position from an
   unaligned big-endian load; the rANS state takes its renormalisation word arithmetically. Reads
   stay inside the caller's padded buffers whatever the stream says (raw bit positions are
   clamped, words are padded past any chunk's reach), and the checks of a hostile stream (an
   unused context, running out of words or raw bits, the final states) are accumulated and looked
   at once per chunk.

   Stream format and symbol model: see ctxrans.py. Called through ctypes, which drops the GIL. */

#include <Python.h>
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define LANES 16 /* one AVX-512 vector of 32-bit lanes */
#define TILE_STEPS 64 /* values per lane staged before they go to their chunks */
#define PROB_BITS 11
#define PROB_MASK ((1u << PROB_BITS) - 1)
#define STATE_LOW (1u << 15)
#define CLASSES 9

typedef struct {
    const uint8_t *words; /* the chunk's rANS words (16-bit little-endian, unaligned), readable up to n + 6 */
    const uint8_t *raw;   /* its raw bits, MSB first, readable up to raw_bits / 8 + 8 bytes */
    void *out;            /* its n values, 1 or 2 bytes each */
    int64_t n_words, raw_bits, n, x0, y0;
} Chunk;

typedef struct {
    const uint32_t *table;  /* (CLASSES^2, 2^PROB_BITS): symbol | freq << 8 | offset << 20 */
    const uint8_t *used;    /* per context: whether its row of the table is used */
    const uint64_t *symbol; /* per symbol: base value | raw bit count << 32 | class << 40 */
    uint8_t *rings;         /* 2 x LANES rings of ring_size class bytes (zeroed per group here) */
    const uint8_t *base;    /* every chunk's buffers lie within 2^31 bytes from here (AVX-512 path) */
    int64_t width, height, ring_size, value_bytes, is_signed, bits;
} Model;

typedef struct {
    uint32_t state, other;
    int64_t p, bp, x, y, bad;
} Lane;

static inline uint64_t load_be64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return __builtin_bswap64(v);
}

static inline uint32_t word_at(const uint8_t *words, int64_t i) {
    uint16_t w;
    memcpy(&w, words + 2 * i, 2);
    return w;
}

static void start_lane(Lane *s, const Chunk *c) {
    s->state = word_at(c->words, 0) << 16 | word_at(c->words, 1);
    s->other = word_at(c->words, 2) << 16 | word_at(c->words, 3);
    s->bad = c->n_words < 4 || s->state < STATE_LOW || s->other < STATE_LOW || s->state >= 1u << 31 ||
             s->other >= 1u << 31;
    s->p = 4;
    s->bp = 0;
    s->x = c->x0;
    s->y = c->y0;
}

/* Value i of the lane's chunk: its context from the ring of classes, its symbol and next state,
   its raw bits. `row` is the plane width when a chunk holds a whole row, else 0 (no upper
   neighbour), as the encoder had it. */
static inline __attribute__((always_inline)) void step(Lane *s, const Chunk *c, const Model *m, uint8_t *ring,
                                                       int64_t i, int64_t row) {
    const int64_t mask = m->ring_size - 1;
    uint32_t left = s->x > 0 ? ring[(i - 1) & mask] : 0;
    uint32_t up = s->y > 0 && row > 0 ? ring[(i - row) & mask] : 0;
    uint32_t ctx = left * CLASSES + up;
    s->bad |= !m->used[ctx];
    uint32_t e = m->table[ctx << PROB_BITS | (s->state & PROB_MASK)];
    uint32_t x = ((e >> 8) & 0xFFF) * (s->state >> PROB_BITS) + (e >> 20);
    uint32_t need = x < STATE_LOW; /* arithmetic, not a select: gcc made the select a branch */
    uint32_t word = word_at(c->words, s->p);
    x = x << (need << 4) | (word & (0u - need));
    s->p += need;
    s->state = s->other;
    s->other = x;
    uint64_t info = m->symbol[e & 0xFF];
    uint32_t r = (info >> 32) & 63;
    uint64_t bits = load_be64(c->raw + (s->bp >> 3)) << (s->bp & 7);
    uint64_t v = (info & 0xFFFFFFFFu) | ((bits >> 1) >> (63 - r));
    s->bp += r;
    s->bad |= s->bp > c->raw_bits;
    s->bp = s->bp > c->raw_bits ? c->raw_bits : s->bp;
    ring[i & mask] = (uint8_t)(info >> 40);
    v = (v >> m->is_signed) ^ (0 - (v & (uint64_t)m->is_signed));
    if (m->value_bytes == 1)
        ((uint8_t *)c->out)[i] = (uint8_t)v;
    else
        ((uint16_t *)c->out)[i] = (uint16_t)v;
    if (++s->x == m->width) {
        s->x = 0;
        if (++s->y == m->height) s->y = 0;
    }
}

static int finished(const Lane *s, const Chunk *c) {
    return !s->bad && s->p == c->n_words && s->bp == c->raw_bits && s->state == STATE_LOW &&
           s->other == STATE_LOW;
}

/* Decodes `count` (1..LANES) chunks, all of their shared length in lock-step, then each one's
   remaining values alone; returns how many of them failed their checks. */
static int decode_group(const Chunk *c, int count, const Model *m) {
    Lane lanes[LANES];
    int64_t common = c[0].n, row[LANES];
    for (int l = 0; l < count; l++) {
        start_lane(&lanes[l], &c[l]);
        row[l] = m->width <= c[l].n ? m->width : 0;
        if (c[l].n < common) common = c[l].n;
    }
    for (int64_t i = 0; i < common; i++)
        for (int l = 0; l < count; l++) step(&lanes[l], &c[l], m, m->rings + l * m->ring_size, i, row[l]);
    int failed = 0;
    for (int l = 0; l < count; l++) {
        for (int64_t i = common; i < c[l].n; i++) step(&lanes[l], &c[l], m, m->rings + l * m->ring_size, i, row[l]);
        failed += !finished(&lanes[l], &c[l]);
    }
    return failed;
}

/* The AVX-512 decoder: lane l of a group's vectors is chunk l of the group, and each step decodes one
   value of every chunk. Gathers fetch the table entries, and every few steps the renormalisation
   words and the raw bits (by offsets from the model's base: every chunk lies in one copy of the
   stream), which wait in registers until they are taken; a symbol's class, raw bit count and base
   value are computed, not looked up; the classes go to a ring of rows (LANES bytes per position,
   so the upper neighbours of all lanes are one load). A lane past its chunk's end keeps its state
   (`live`), so a group may hold a shorter last chunk.

   A group's steps form a chain through the table gather: a value's context needs its left
   neighbour's class, which comes from the entry the step before gathered, and the table (several
   hundred KB) lives in L2. So two groups are stepped in turns: one's gathers are in flight while
   the other's wait. Values are staged in a tile of TILE_STEPS x LANES per group and go out to their
   chunks when it fills (bytes by a transpose in registers). */
typedef struct {
    __m512i state, other, x, y, bp, bad, left, n, raw_limit;
    __m512i words, raw; /* byte offsets from the model's base */
    __m512i pending;    /* the next two renormalisation words, the next one low */
    __m512i window;     /* unread raw bits, MSB first, from the last refill */
    int64_t refill_every, refill_in; /* steps a refilled window covers, and until the next refill */
    const Chunk *c;
    uint8_t *rings, *tile;
    int64_t row, longest;
    __mmask16 has_rows;
    int count;
} Group;

/* Where step t of a tile of bytes goes: the 16 steps of a block of 16 share one 64-byte row, a block
   per 128-bit lane, so that flush_bytes transposes four 16 x 16 blocks at once. */
static inline int64_t tile_row(int64_t t) { return ((t & 15) * 4 + (t >> 4)) * LANES; }

/* A tile of bytes (tile_row's order) out to the group's chunks, steps first .. first + steps - 1:
   four rounds of unpacks transpose each 16 x 16 block in its 128-bit lane, which leaves chunk
   bit-reverse(j) in register j, its 64 values in order. */
__attribute__((target("avx512f,avx512bw"))) static void flush_bytes(const Chunk *c, int count, const uint8_t *tile,
                                                                     int64_t first, int64_t steps) {
    __m512i r[16], t[16];
    for (int k = 0; k < 16; k++) r[k] = _mm512_loadu_si512(tile + 64 * k);
#define INTERLEAVE(from, to, bits)                                                   \
    for (int i = 0; i < 8; i++) {                                                    \
        to[i] = _mm512_unpacklo_epi##bits(from[2 * i], from[2 * i + 1]);             \
        to[i + 8] = _mm512_unpackhi_epi##bits(from[2 * i], from[2 * i + 1]);         \
    }
    INTERLEAVE(r, t, 8)
    INTERLEAVE(t, r, 16)
    INTERLEAVE(r, t, 32)
    INTERLEAVE(t, r, 64)
#undef INTERLEAVE
    for (int j = 0; j < 16; j++) {
        int l = (j & 1) << 3 | (j & 2) << 1 | (j & 4) >> 1 | (j & 8) >> 3;
        int64_t end = l < count ? (c[l].n - first < steps ? c[l].n - first : steps) : 0;
        uint8_t *out = (uint8_t *)c[l < count ? l : 0].out + first;
        if (end == TILE_STEPS)
            _mm512_storeu_si512(out, r[j]);
        else if (end > 0)
            _mm512_mask_storeu_epi8(out, (__mmask64)((1ull << end) - 1), r[j]);
    }
}

__attribute__((target("avx512f,avx512bw"))) static void flush_words(const Chunk *c, int count, const uint8_t *tile,
                                                                     int64_t first, int64_t steps) {
    for (int l = 0; l < count; l++) {
        int64_t end = c[l].n - first < steps ? c[l].n - first : steps;
        for (int64_t j = 0; j < end; j++) ((uint16_t *)c[l].out)[first + j] = ((const uint16_t *)tile)[j * LANES + l];
    }
}

__attribute__((target("avx512f,avx512bw"))) static void start_group(Group *g, const Chunk *c, int count,
                                                                     const Model *m, uint8_t *rings, uint8_t *tile) {
    uint32_t st[LANES], ot[LANES], x[LANES], y[LANES], len[LANES], bad[LANES], wp[LANES], rp[LANES], lim[LANES];
    g->longest = 0;
    for (int l = 0; l < LANES; l++) { /* a lane with no chunk starts in the final states, reads nothing */
        st[l] = l < count ? word_at(c[l].words, 0) << 16 | word_at(c[l].words, 1) : STATE_LOW;
        ot[l] = l < count ? word_at(c[l].words, 2) << 16 | word_at(c[l].words, 3) : STATE_LOW;
        bad[l] = l < count && (c[l].n_words < 4 || st[l] < STATE_LOW || ot[l] < STATE_LOW || st[l] >= 1u << 31 ||
                               ot[l] >= 1u << 31);
        wp[l] = l < count ? (uint32_t)(c[l].words + 8 - m->base) : 0;
        rp[l] = l < count ? (uint32_t)(c[l].raw - m->base) : 0;
        x[l] = l < count ? (uint32_t)c[l].x0 : 0;
        y[l] = l < count ? (uint32_t)c[l].y0 : 0;
        len[l] = l < count ? (uint32_t)c[l].n : 0;
        lim[l] = l < count ? (uint32_t)c[l].raw_bits : 0;
        if (l < count && c[l].n > g->longest) g->longest = c[l].n;
    }
    g->state = _mm512_loadu_si512(st);
    g->other = _mm512_loadu_si512(ot);
    g->x = _mm512_loadu_si512(x);
    g->y = _mm512_loadu_si512(y);
    g->bad = _mm512_loadu_si512(bad);
    g->bp = _mm512_setzero_si512();
    g->left = _mm512_setzero_si512();
    g->words = _mm512_loadu_si512(wp);
    g->raw = _mm512_loadu_si512(rp);
    g->n = _mm512_loadu_si512(len);
    g->raw_limit = _mm512_loadu_si512(lim);
    g->pending = g->window = _mm512_setzero_si512();
    /* a refill leaves at least 25 bits, and a value takes at most bits - 3 (bits <= 16) */
    g->refill_every = m->bits > 3 ? 25 / (m->bits - 3) : 25;
    g->refill_in = 0;
    g->c = c;
    g->count = count;
    g->rings = rings;
    g->tile = tile;
    /* a chunk shorter than a row has no upper neighbours (as the encoder had it) */
    g->row = m->width <= g->longest ? m->width : 0;
    g->has_rows = g->row ? _mm512_cmpge_epi32_mask(g->n, _mm512_set1_epi32((int)m->width)) : 0;
    memset(rings, 0, (size_t)(LANES * m->ring_size));
}

/* How many lanes failed their end checks: every word and raw bit used, the initial states back. */
__attribute__((target("avx512f,avx512bw"))) static int finished_group(const Group *g, const Model *m) {
    uint32_t st[LANES], ot[LANES], bp[LANES], bad[LANES], wp[LANES];
    _mm512_storeu_si512(st, g->state);
    _mm512_storeu_si512(ot, g->other);
    _mm512_storeu_si512(bp, g->bp);
    _mm512_storeu_si512(bad, g->bad);
    _mm512_storeu_si512(wp, g->words);
    int failed = 0;
    for (int l = 0; l < g->count; l++) {
        const Chunk *c = &g->c[l];
        failed += bad[l] || wp[l] != (uint64_t)(c->words + 2 * c->n_words - m->base) || bp[l] != c->raw_bits ||
                  st[l] != STATE_LOW || ot[l] != STATE_LOW;
    }
    return failed;
}

/* Step i of every chunk of the group. */
__attribute__((target("avx512f,avx512bw"), always_inline)) static inline void step_group(Group *g, const Model *m,
                                                                                       int64_t i) {
    const __m512i one = _mm512_set1_epi32(1), low = _mm512_set1_epi32(STATE_LOW);
    const __m512i width = _mm512_set1_epi32((int)m->width), height = _mm512_set1_epi32((int)m->height);
    const __m512i swap = _mm512_set_epi8(12, 13, 14, 15, 8, 9, 10, 11, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9,
                                         10, 11, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11, 4, 5, 6, 7, 0,
                                         1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11, 4, 5, 6, 7, 0, 1, 2, 3);
    const int64_t mask = m->ring_size - 1;
    __mmask16 live = _mm512_cmplt_epi32_mask(_mm512_set1_epi32((int)i), g->n);
    __m512i up = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(g->rings + ((i - g->row) & mask) * LANES)));
    up = _mm512_maskz_mov_epi32(g->has_rows & _mm512_cmpgt_epi32_mask(g->y, _mm512_setzero_si512()), up);
    __m512i left = _mm512_maskz_mov_epi32(_mm512_cmpgt_epi32_mask(g->x, _mm512_setzero_si512()), g->left);
    __m512i ctx = _mm512_add_epi32(_mm512_add_epi32(_mm512_slli_epi32(left, 3), left), up);
    __m512i slot = _mm512_or_si512(_mm512_slli_epi32(ctx, PROB_BITS),
                                   _mm512_and_si512(g->state, _mm512_set1_epi32(PROB_MASK)));
    /* the next two renormalisation words of every live lane, needed or not, every other step (a
       step takes at most one): their address does not wait for the table entry, so this gather is
       off the chain, and at half the rate it leaves the core's gather slots to the table */
    if ((i & 1) == 0)
        g->pending = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), live, g->words, (const void *)m->base, 1);
    __m512i e = _mm512_i32gather_epi32(slot, (const void *)m->table, 4);
    __m512i freq = _mm512_and_si512(_mm512_srli_epi32(e, 8), _mm512_set1_epi32(0xFFF));
    g->bad = _mm512_mask_mov_epi32(g->bad, live & _mm512_cmpeq_epi32_mask(freq, _mm512_setzero_si512()), one);
    __m512i next = _mm512_add_epi32(_mm512_mullo_epi32(freq, _mm512_srli_epi32(g->state, PROB_BITS)),
                                    _mm512_srli_epi32(e, 20));
    __mmask16 need = _mm512_cmplt_epu32_mask(next, low) & live;
    next = _mm512_mask_or_epi32(next, need, _mm512_slli_epi32(next, 16),
                                _mm512_and_si512(g->pending, _mm512_set1_epi32(0xFFFF)));
    g->words = _mm512_mask_add_epi32(g->words, need, g->words, _mm512_set1_epi32(2));
    g->pending = _mm512_mask_srli_epi32(g->pending, need, g->pending, 16);
    g->state = _mm512_mask_mov_epi32(g->state, live, g->other);
    g->other = _mm512_mask_mov_epi32(g->other, live, next);
    /* the symbol (length << 2 | top) as ctxrans.symbol_tables has it */
    __m512i sym = _mm512_and_si512(e, _mm512_set1_epi32(0xFF));
    __m512i length = _mm512_srli_epi32(sym, 2), top = _mm512_and_si512(sym, _mm512_set1_epi32(3));
    __m512i mm = _mm512_max_epi32(_mm512_sub_epi32(length, one), _mm512_setzero_si512());
    __m512i r = _mm512_sub_epi32(mm, _mm512_min_epi32(mm, _mm512_set1_epi32(2)));
    __m512i base = _mm512_maskz_or_epi32(_mm512_cmpgt_epi32_mask(length, _mm512_setzero_si512()),
                                         _mm512_sllv_epi32(one, mm), _mm512_sllv_epi32(top, r));
    __m512i cls = m->bits > 8 ? _mm512_srli_epi32(_mm512_add_epi32(length, one), 1) : length;
    cls = _mm512_min_epi32(cls, _mm512_set1_epi32(CLASSES - 1));
    /* raw bits: a refill gathers 32 bits (MSB first) from the byte holding the lane's bit position,
       shifted past the bits before it (at most 7: 25 remain); each step takes the window's top r.
       At 8 bits r is at most 5, so one gather serves 5 steps: gathers, not the table's latency
       alone, bounded the loop */
    if (g->refill_in-- == 0) {
        g->refill_in = g->refill_every - 1;
        __m512i at = _mm512_add_epi32(g->raw, _mm512_srli_epi32(g->bp, 3));
        g->window = _mm512_shuffle_epi8(_mm512_i32gather_epi32(at, (const void *)m->base, 1), swap);
        g->window = _mm512_sllv_epi32(g->window, _mm512_and_si512(g->bp, _mm512_set1_epi32(7)));
    }
    __m512i raw = _mm512_srlv_epi32(_mm512_srli_epi32(g->window, 1), _mm512_sub_epi32(_mm512_set1_epi32(31), r));
    g->window = _mm512_sllv_epi32(g->window, r);
    __m512i value = _mm512_or_si512(base, raw);
    __m512i bp = _mm512_add_epi32(g->bp, r);
    g->bad = _mm512_mask_mov_epi32(g->bad, live & _mm512_cmpgt_epu32_mask(bp, g->raw_limit), one);
    g->bp = _mm512_mask_mov_epi32(g->bp, live, _mm512_min_epu32(bp, g->raw_limit));
    if (m->is_signed)
        value = _mm512_xor_si512(_mm512_srli_epi32(value, 1),
                                 _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_and_si512(value, one)));
    int64_t t = i % TILE_STEPS;
    if (m->value_bytes == 1)
        _mm_storeu_si128((__m128i *)(g->tile + tile_row(t)), _mm512_cvtepi32_epi8(value));
    else
        _mm256_storeu_si256((__m256i *)(g->tile + 2 * t * LANES), _mm512_cvtepi32_epi16(value));
    _mm_storeu_si128((__m128i *)(g->rings + (i & mask) * LANES), _mm512_cvtepi32_epi8(cls));
    g->left = cls;
    __m512i xn = _mm512_add_epi32(g->x, one);
    __mmask16 wrap = _mm512_cmpeq_epi32_mask(xn, width);
    g->x = _mm512_mask_mov_epi32(g->x, live, _mm512_maskz_mov_epi32(~wrap, xn));
    __m512i yn = _mm512_mask_add_epi32(g->y, wrap, g->y, one);
    yn = _mm512_maskz_mov_epi32(~_mm512_cmpeq_epi32_mask(yn, height), yn);
    g->y = _mm512_mask_mov_epi32(g->y, live, yn);
    if (t == TILE_STEPS - 1 || i == g->longest - 1) {
        if (m->value_bytes == 1)
            flush_bytes(g->c, g->count, g->tile, i - t, t + 1);
        else
            flush_words(g->c, g->count, g->tile, i - t, t + 1);
    }
}

/* Decodes `count` (1 .. 2 x LANES) chunks: up to LANES in group a, the rest in group b, both
   stepped in turns as long as both have values; returns how many chunks failed their checks. */
__attribute__((target("avx512f,avx512bw"))) static int decode_groups_avx512(const Chunk *c, int count,
                                                                             const Model *m) {
    uint8_t tile_a[TILE_STEPS * LANES * 2] = {0}, tile_b[TILE_STEPS * LANES * 2] = {0}; /* a last tile is read whole */
    Group a, b;
    start_group(&a, c, count < LANES ? count : LANES, m, m->rings, tile_a);
    if (count <= LANES) {
        for (int64_t i = 0; i < a.longest; i++) step_group(&a, m, i);
        return finished_group(&a, m);
    }
    start_group(&b, c + LANES, count - LANES, m, m->rings + LANES * m->ring_size, tile_b);
    int64_t common = a.longest < b.longest ? a.longest : b.longest, i;
    for (i = 0; i < common; i++) {
        step_group(&a, m, i);
        step_group(&b, m, i);
    }
    for (int64_t j = i; j < a.longest; j++) step_group(&a, m, j);
    for (int64_t j = i; j < b.longest; j++) step_group(&b, m, j);
    return finished_group(&a, m) + finished_group(&b, m);
}

/* The decoder's table from the frequencies (contexts x symbols, each used row summing to
   2^PROB_BITS, as ans.read_table checked): per slot of each context, its symbol | freq << 8 |
   (slot - the symbol's start) << 20 (ans.decoder_table, which numba runs where this is not built).
   Unused rows are zeroed: the decoders take a zero frequency for an unused context. A symbol's
   slots are written 16 at a time, so the last may run up to 15 slots on: into slots written
   after it, or past the table, which the caller pads by 16 slots (ctxrans.TABLE_PAD). */
typedef uint32_t Slots __attribute__((vector_size(64)));

__attribute__((target_clones("avx512f", "avx2", "default"))) void actzip_ctxrans_table(const int64_t *freq, int64_t contexts, int64_t symbols, uint32_t *table) {
    const Slots ramp = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
    for (int64_t r = 0; r < contexts; r++) {
        uint32_t *row = table + (r << PROB_BITS), start = 0;
        for (int64_t sym = 0; sym < symbols; sym++) {
            uint32_t f = (uint32_t)freq[r * symbols + sym];
            Slots entries = ((uint32_t)sym | f << 8) | ramp << 20;
            for (uint32_t o = 0; o < f; o += 16, entries += 16u << 20) memcpy(row + start + o, &entries, sizeof entries);
            start += f;
        }
        if (start == 0) memset(row, 0, sizeof(uint32_t) << PROB_BITS);
    }
}

static int64_t read_varint(const uint8_t *buf, int64_t *pos, int64_t end) {
    uint64_t value = 0;
    for (int shift = 0; shift < 63 && *pos < end; shift += 7) {
        uint8_t byte = buf[(*pos)++];
        value |= (uint64_t)(byte & 0x7F) << shift;
        if (!(byte & 0x80)) return value > (uint64_t)INT64_MAX / 4 ? -1 : (int64_t)value;
    }
    return -1;
}

/* The Chunk of each of `count` chunks of a stream (buf, len bytes): their sizes (varints from
   pos, as base.join_chunks writes them, adding up to the rest of the stream), then in each
   payload its word and raw bit counts, checked against its size; its buffers point into buf.
   Returns 0, or -1 for sizes or sections that do not add up. */
int actzip_ctxrans_chunks(const uint8_t *buf, int64_t pos, int64_t len, int64_t count, int64_t chunk, int64_t total,
                          int64_t width, int64_t height, uint8_t *out, int64_t value_bytes, Chunk *chunks) {
    int64_t start = pos, sum = 0;
    for (int64_t i = 0; i < count; i++) { /* first the sizes, so that the payloads' start is known */
        int64_t size = read_varint(buf, &start, len);
        if (size < 0 || size > len) return -1;
        sum += size;
    }
    if (sum != len - start) return -1;
    for (int64_t i = 0; i < count; i++) {
        int64_t end = start + read_varint(buf, &pos, len), at = start;
        int64_t n_words = read_varint(buf, &at, end), raw_bits = n_words < 0 ? -1 : read_varint(buf, &at, end);
        if (raw_bits < 0 || n_words > end || end - at != 2 * n_words + (raw_bits + 7) / 8) return -1;
        int64_t first = i * chunk;
        chunks[i] = (Chunk){buf + at, buf + at + 2 * n_words, out + first * value_bytes, n_words, raw_bits,
                            total - first < chunk ? total - first : chunk, first % (width * height) % width,
                            first % (width * height) / width};
        start = end;
    }
    return 0;
}

/* Decodes `count` chunks, LANES at a time, with AVX-512 (isa 2) or portable C (any other);
   returns the number that failed (0: all decoded). */
int actzip_ctxrans_decode(const Chunk *chunks, int64_t count, const Model *m, int isa) {
    int failed = 0, step = isa == 2 ? 2 * LANES : LANES;
    for (int64_t g = 0; g < count; g += step) {
        int in_step = count - g < step ? (int)(count - g) : step;
        if (isa == 2) {
            failed += decode_groups_avx512(chunks + g, in_step, m);
        } else {
            memset(m->rings, 0, (size_t)(LANES * m->ring_size));
            failed += decode_group(chunks + g, in_step, m);
        }
    }
    return failed;
}

/* Whether this CPU runs the AVX-512 decoder (it needs AVX512BW for its byte shuffles). */
int actzip_codec_best_isa(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")) return 2;
    if (__builtin_cpu_supports("avx2")) return 1;
    return 0;
}

/* The encoder, in two passes over a run of chunks (ctxrans.py's _first_pass and _code, which
   remain the reference and the fallback). First: each value's context and symbol, the counts of
   (context, symbol) added to `counts`, the raw bits written out. Then, once the frequencies are
   known: each chunk's symbols rANS-coded last to first with two alternating states. */
typedef struct {
    const void *values;          /* the chunk's n values, 1 or 2 bytes each */
    uint8_t *contexts, *symbols; /* n each: the first pass's output, the second's input */
    uint8_t *raw;                /* its raw bits, MSB first; room for all of them and 4 bytes */
    uint16_t *words;             /* room for n + 4 words, filled from the end */
    int64_t n, x0, y0;
    int64_t raw_bits, first_word; /* outputs: raw bits written, index of the first word */
} EncodeChunk;

typedef struct {
    const uint8_t *symbol_of, *class_of, *raw_of; /* per zigzag value */
    const uint64_t *enc; /* (contexts * symbols, 5): reciprocal, shift, bias, M - freq, threshold */
    int64_t *counts;     /* (contexts, symbols), added to */
    int64_t width, height, value_bytes, is_signed, symbols;
} EncodeModel;

static inline __attribute__((always_inline)) uint32_t zigzag_at(const void *values, int64_t i, int bytes,
                                                                 int is_signed) {
    int32_t v = bytes == 1 ? (is_signed ? ((const int8_t *)values)[i] : ((const uint8_t *)values)[i])
                           : (is_signed ? ((const int16_t *)values)[i] : ((const uint16_t *)values)[i]);
    return is_signed ? ((uint32_t)v << 1) ^ (uint32_t)(v >> 31) : (uint32_t)v;
}

/* Raw bits go out once every two values (two values' raw bits, at most 26, fit above the 31 held
   back), halving the chain through the held-bit count. Inlined for each value type (the caller
   passes constants), with the model's fields in locals: the byte stores could alias them. (Split
   histograms, against a run of one symbol waiting on its own increments, measured slower.) */
static inline __attribute__((always_inline)) void first_pass(EncodeChunk *c, const EncodeModel *m,
                                                             int bytes, int is_signed) {
    const uint8_t *restrict symbol_of = m->symbol_of, *restrict class_of = m->class_of, *restrict raw_of = m->raw_of;
    uint8_t *restrict contexts = c->contexts, *restrict symbols = c->symbols, *restrict raw = c->raw;
    const void *values = c->values;
    const int64_t n = c->n, width = m->width, height = m->height, nsym = m->symbols;
    const int64_t row = width <= n ? width : 0;
    int64_t *restrict counts = m->counts;
    int64_t x = c->x0, y = c->y0, out = 0;
    uint64_t acc = 0, held = 0; /* `held` raw bits wait in the low end of acc */
    uint32_t previous = 0;       /* the class of value i - 1 */
    for (int64_t i = 0; i < n; i++) {
        uint32_t u = zigzag_at(values, i, bytes, is_signed);
        uint32_t left = x > 0 && i > 0 ? previous : 0;
        uint32_t up = y > 0 && row > 0 && i >= row ? class_of[zigzag_at(values, i - row, bytes, is_signed)] : 0;
        uint32_t ctx = left * CLASSES + up, sym = symbol_of[u], r = raw_of[u];
        contexts[i] = (uint8_t)ctx;
        symbols[i] = (uint8_t)sym;
        counts[ctx * nsym + sym]++;
        previous = class_of[u];
        acc = acc << r | (u & ((1u << r) - 1));
        held += r;
        if (i & 1) {
            /* a whole word of raw bits goes out, most significant byte first; stored every time and
               kept only when due (zeros and non-zeros come at random: a branch would mispredict) */
            uint64_t full = held >= 32;
            held -= 32 * full;
            uint32_t w = __builtin_bswap32((uint32_t)(acc >> held));
            memcpy(raw + out, &w, 4);
            out += 4 * (int64_t)full;
        }
        if (++x == width) {
            x = 0;
            if (++y == height) y = 0;
        }
    }
    if (held >= 32) { /* an odd count left up to 44 bits */
        held -= 32;
        uint32_t w = __builtin_bswap32((uint32_t)(acc >> held));
        memcpy(raw + out, &w, 4);
        out += 4;
    }
    uint32_t tail = __builtin_bswap32(held ? (uint32_t)(acc << (32 - held)) : 0);
    memcpy(raw + out, &tail, 4);
    c->raw_bits = 8 * out + (int64_t)held;
}

static void first_pass_any(EncodeChunk *c, const EncodeModel *m) {
    if (m->value_bytes == 1)
        m->is_signed ? first_pass(c, m, 1, 1) : first_pass(c, m, 1, 0);
    else
        m->is_signed ? first_pass(c, m, 2, 1) : first_pass(c, m, 2, 0);
}

/* The encoder table with each row packed into one word: reciprocal (32 bits) | shift << 32 | bias
   << 37 | frequency << 50 (M - frequency and the renormalisation threshold, frequency << 20,
   follow from it). Five words a row made a table of L2 size; this one stays in L1. */
static void pack_encoder_table(const EncodeModel *m, uint64_t *packed) {
    for (int64_t j = 0; j < CLASSES * CLASSES * m->symbols; j++) {
        const uint64_t *e = m->enc + 5 * j;
        uint64_t freq = (1u << PROB_BITS) - e[3];
        packed[j] = e[0] | e[1] << 32 | e[2] << 37 | freq << 50;
    }
}

/* Value i of chunk c onto the state x (`other` the state of value i + 1, they alternate): the
   renormalisation word is always stored and kept only if due (no branch), o the next free word. */
static inline __attribute__((always_inline)) void encode_value(const uint64_t *table, int64_t symbols,
                                                               EncodeChunk *c, int64_t i, uint64_t *x,
                                                               uint64_t *other, int64_t *o) {
    uint64_t e = table[(int64_t)c->contexts[i] * symbols + c->symbols[i]], freq = e >> 50;
    uint64_t emit = *x >= freq << (31 - PROB_BITS), y = *x;
    c->words[*o - 1] = (uint16_t)y;
    *o -= (int64_t)emit;
    y >>= 16 * emit;
    uint64_t q = ((y * (e & 0xFFFFFFFFu)) >> 32) >> ((e >> 32) & 31);
    uint64_t next = y + ((e >> 37) & 0x1FFF) + q * ((1u << PROB_BITS) - freq);
    *x = *other;
    *other = next;
}

static void finish_chunk(EncodeChunk *c, uint64_t x, uint64_t other, int64_t o) {
    /* `other` holds value 0's state, `x` value 1's: the decoder reads them in that order */
    c->words[o - 1] = (uint16_t)x;
    c->words[o - 2] = (uint16_t)(x >> 16);
    c->words[o - 3] = (uint16_t)other;
    c->words[o - 4] = (uint16_t)(other >> 16);
    c->first_word = o - 4;
}

/* Chunks a and b (b may be NULL) rANS-coded last value to first, in turns: one chunk's state
   chain waits on a multiply at every value, two chains keep the core busy. */
static void code_pair(EncodeChunk *a, EncodeChunk *b, const uint64_t *table, int64_t symbols) {
    if (b && b->n > a->n) {
        EncodeChunk *t = a;
        a = b, b = t;
    }
    uint64_t xa = STATE_LOW, ya = STATE_LOW, xb = STATE_LOW, yb = STATE_LOW;
    int64_t oa = a->n + 4, ob = b ? b->n + 4 : 0, shared = b ? b->n : 0;
    for (int64_t i = a->n - 1; i >= shared; i--) encode_value(table, symbols, a, i, &xa, &ya, &oa);
    for (int64_t i = shared - 1; i >= 0; i--) {
        encode_value(table, symbols, a, i, &xa, &ya, &oa);
        encode_value(table, symbols, b, i, &xb, &yb, &ob);
    }
    finish_chunk(a, xa, ya, oa);
    if (b) finish_chunk(b, xb, yb, ob);
}

void actzip_ctxrans_first_pass(EncodeChunk *chunks, int64_t count, const EncodeModel *m) {
    for (int64_t i = 0; i < count; i++) first_pass_any(&chunks[i], m);
}

/* Returns 0, or -1 without the memory for the packed table. */
int actzip_ctxrans_code(EncodeChunk *chunks, int64_t count, const EncodeModel *m) {
    uint64_t *table = malloc(sizeof(uint64_t) * CLASSES * CLASSES * (size_t)m->symbols);
    if (!table) return -1;
    pack_encoder_table(m, table);
    for (int64_t i = 0; i < count; i += 2)
        code_pair(&chunks[i], i + 1 < count ? &chunks[i + 1] : NULL, table, m->symbols);
    free(table);
    return 0;
}

static int64_t put_varint(uint8_t *out, uint64_t v) {
    int64_t n = 0;
    for (; v >= 0x80; v >>= 7) out[n++] = (uint8_t)(v | 0x80);
    out[n++] = (uint8_t)v;
    return n;
}

/* Each coded chunk's payload one after the other into out (base.join_chunks's payloads: word
   count, raw bit count, the words little-endian, the raw bytes), its length into sizes; returns
   the total. out holds 20 + 2 * (n + 4) + the raw bytes of every chunk. */
int64_t actzip_ctxrans_payloads(const EncodeChunk *chunks, int64_t count, uint8_t *out, int64_t *sizes) {
    int64_t at = 0;
    for (int64_t i = 0; i < count; i++) {
        const EncodeChunk *c = &chunks[i];
        int64_t start = at, n_words = c->n + 4 - c->first_word, raw_bytes = (c->raw_bits + 7) / 8;
        at += put_varint(out + at, (uint64_t)n_words);
        at += put_varint(out + at, (uint64_t)c->raw_bits);
        memcpy(out + at, c->words + c->first_word, 2 * (size_t)n_words); /* x86: already little-endian */
        at += 2 * n_words;
        memcpy(out + at, c->raw, (size_t)raw_bytes);
        at += raw_bytes;
        sizes[i] = at - start;
    }
    return at;
}

int actzip_ctxrans_lanes(void) { return LANES; }

/* An importable module with no Python functions: Python reaches the decoder through ctypes. */
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "kernels", NULL, -1, NULL};
PyMODINIT_FUNC PyInit_kernels(void) { return PyModule_Create(&module); }
