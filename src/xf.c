/* xf.c - FP8 block dequantization and 16-bit transposition for computed views. The vector path
 * (AVX2, chosen at run time) and the scalar one give the same bits: the tests hold them to it.
 *
 * E4M3 to F32 without a table: the 7 magnitude bits placed at F32 bit 20, plus 120 in the
 * exponent field (bias 127 against 7), are the value; the 8 subnormals (exponent 0) are their
 * mantissa times 2^-9, converted from the integer. No F32 subnormal is ever an operand: the
 * CPU's slow path for those would cost more than the whole conversion. */
#include "qv_xf.h"

#include <math.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define XF_X86 1
#endif

#define E4M3_NAN 0x7f /* magnitude bits of the only NaN of e4m3fn */
#define BF16_NAN 0x7fc0 /* the canonical quiet NaN (c10::BFloat16's; see qv_xf.h) */

static bool force_scalar;

float qv_xf_e4m3(uint8_t b)
{
	uint32_t mag = b & 0x7f, bits = (mag << 20) + (120u << 23);
	float f;

	if (mag == E4M3_NAN)
		return NAN;
	if (mag < 8)
		f = (float)mag * 0x1p-9f;
	else
		memcpy(&f, &bits, sizeof(f));
	return b & 0x80 ? -f : f;
}

uint16_t qv_xf_bf16(float f)
{
	uint32_t u;

	if (isnan(f))
		return BF16_NAN;
	memcpy(&u, &f, sizeof(u));
	u += 0x7fff + ((u >> 16) & 1); /* to nearest, ties to even */
	return (uint16_t)(u >> 16);
}

bool qv_xf_force_scalar(bool on)
{
	bool old = force_scalar;

	force_scalar = on;
	return old;
}

/* Element (r, c) of m, dequantized. */
static uint16_t deq1(const struct qv_xf_fp8 *m, size_t r, size_t c)
{
	float s = m->scale[(r / m->block) * m->scale_stride + c / m->block];

	return qv_xf_bf16(qv_xf_e4m3(m->src[r * m->src_stride + c]) * s);
}

/* Rows [r0, r1) x columns [c0, c1) of m, one element at a time (edges, and no AVX2). */
static void deq_scalar(const struct qv_xf_fp8 *m, size_t r0, size_t r1, size_t c0, size_t c1,
		       bool t, uint16_t *dst, size_t ds)
{
	for (size_t r = r0; r < r1; r++)
		for (size_t c = c0; c < c1; c++)
			dst[t ? c * ds + r : r * ds + c] = deq1(m, r, c);
}

static void tr_scalar(const uint16_t *src, size_t r0, size_t r1, size_t c0, size_t c1, size_t ss,
		      uint16_t *dst, size_t ds)
{
	for (size_t r = r0; r < r1; r++)
		for (size_t c = c0; c < c1; c++)
			dst[c * ds + r] = src[r * ss + c];
}

#ifdef XF_X86
#define AVX2 __attribute__((target("avx2")))
/* the helpers below are one kernel: a call per 8 values would cost more than they do */
#define AVX2_INLINE __attribute__((target("avx2"), always_inline)) inline

/* 8 FP8 values (one per 32-bit lane of b) as 8 BF16 values, scaled by s, one per lane. */
AVX2_INLINE static __m256i deq_u32(__m256i b, __m256 s)
{
	__m256i mag = _mm256_and_si256(b, _mm256_set1_epi32(0x7f));
	__m256i sign = _mm256_slli_epi32(_mm256_and_si256(b, _mm256_set1_epi32(0x80)), 24);
	__m256 f = _mm256_castsi256_ps(_mm256_add_epi32(_mm256_slli_epi32(mag, 20),
							_mm256_set1_epi32(120 << 23)));
	__m256 sub = _mm256_mul_ps(_mm256_cvtepi32_ps(mag), _mm256_set1_ps(0x1p-9f));
	__m256i nan_in = _mm256_cmpeq_epi32(mag, _mm256_set1_epi32(E4M3_NAN));
	__m256i u, r;

	f = _mm256_blendv_ps(f, sub, _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(8),
									     mag)));
	f = _mm256_mul_ps(_mm256_or_ps(f, _mm256_castsi256_ps(sign)), s);
	u = _mm256_castps_si256(f);
	r = _mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7fff),
						 _mm256_and_si256(_mm256_srli_epi32(u, 16),
								  _mm256_set1_epi32(1))));
	r = _mm256_srli_epi32(r, 16);
	/* a NaN in (or made by the scale: inf times 0) is BF16_NAN, as the scalar path says */
	nan_in = _mm256_or_si256(nan_in, _mm256_castps_si256(_mm256_cmp_ps(f, f, _CMP_UNORD_Q)));
	return _mm256_blendv_epi8(r, _mm256_set1_epi32(BF16_NAN), nan_in);
}

/* The constants of the 16-lane conversion, made once per scale block rather than per vector.
 * A normal E4M3 value is 2^(e-7) (1 + m/8), so its product with the block's scale s is
 * 2^(e-7) times one of 8 products (1 + m/8) s; scaling by a power of two commutes with both
 * roundings (to F32, then to BF16) while every result stays normal, so the BF16 result is the
 * rounded product for m with e - 7 added to its exponent: a table lookup (pshufb, 16-bit
 * entries) and an add. fast says every result of the block stays normal: s positive and finite,
 * each product's exponent field in [8, 245] (e - 7 spans [-6, 8]; one more each way covers a
 * rounding carry). */
struct k16 {
	__m256i m7f, m80, m78, m7, zero, nan, x0202, x0100, tab;
	__m256 s;
	bool fast;
};

AVX2_INLINE static void k16_init(struct k16 *k, float sc)
{
	uint16_t t[8];

	k->m7f = _mm256_set1_epi16(0x7f);
	k->m80 = _mm256_set1_epi16(0x80);
	k->m78 = _mm256_set1_epi16(0x78);
	k->m7 = _mm256_set1_epi16(7);
	k->zero = _mm256_setzero_si256();
	k->nan = _mm256_set1_epi16(E4M3_NAN);
	k->x0202 = _mm256_set1_epi16(0x0202);
	k->x0100 = _mm256_set1_epi16(0x0100);
	k->s = _mm256_set1_ps(sc);
	k->fast = sc > 0 && isfinite(sc);
	for (int m = 0; m < 8; m++) {
		uint16_t v = qv_xf_bf16((1.0f + (float)m / 8.0f) * sc), e = (v >> 7) & 0xff;

		k->fast = k->fast && e >= 8 && e <= 245;
		t[m] = (uint16_t)(v - (7u << 7)); /* e - 7 is added as e << 7 */
	}
	/* entry m's bytes at 2m, 2m + 1: a lane holding m looks up (2m + 1) << 8 | 2m */
	k->tab = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)t));
}

/* 16 FP8 bytes (the 16 of x) as 16 BF16 values scaled by k->s, in order, on 16-bit lanes: the
 * product table (k16) gives the rest of the value for the mantissa, the exponent and the sign
 * are added in place. A vector holding a zero, a subnormal or a NaN (rare in weights), or a
 * block whose results could leave the normal range, takes the 8-lane path, which handles
 * everything. */
AVX2_INLINE static __m256i deq16(__m128i x, const struct k16 *k)
{
	__m256i b = _mm256_cvtepu8_epi16(x);
	__m256i ex = _mm256_and_si256(b, k->m78);
	__m256i odd = _mm256_or_si256(_mm256_cmpeq_epi16(ex, k->zero),
				      _mm256_cmpeq_epi16(_mm256_and_si256(b, k->m7f), k->nan));
	__m256i a, hi, idx;

	if (!k->fast || !_mm256_testz_si256(odd, odd)) {
		a = deq_u32(_mm256_cvtepu8_epi32(x), k->s);
		hi = deq_u32(_mm256_cvtepu8_epi32(_mm_srli_si128(x, 8)), k->s);
		/* packus works per 128-bit lane: a0-3 b0-3 a4-7 b4-7, put back in order */
		return _mm256_permute4x64_epi64(_mm256_packus_epi32(a, hi), 0xd8);
	}
	idx = _mm256_add_epi16(_mm256_mullo_epi16(_mm256_and_si256(b, k->m7), k->x0202), k->x0100);
	a = _mm256_add_epi16(_mm256_shuffle_epi8(k->tab, idx), _mm256_slli_epi16(ex, 4));
	return _mm256_or_si256(a, _mm256_slli_epi16(_mm256_and_si256(b, k->m80), 8));
}

/* 8 rows of 8 FP8 bytes (row i at p + i * stride) transposed: out[k] holds columns 2k and
 * 2k + 1, 8 bytes each. Bytes are moved before they are widened: 4 times fewer to move. */
AVX2_INLINE static void tr_bytes8x8(const uint8_t *p, size_t stride, __m128i out[4])
{
	__m128i r[8], t[4], u[4];

#pragma GCC unroll 8
	for (int i = 0; i < 8; i++)
		r[i] = _mm_loadl_epi64((const __m128i *)(p + i * stride));
#pragma GCC unroll 4
	for (int i = 0; i < 4; i++)
		t[i] = _mm_unpacklo_epi8(r[2 * i], r[2 * i + 1]);
	u[0] = _mm_unpacklo_epi16(t[0], t[1]);
	u[1] = _mm_unpackhi_epi16(t[0], t[1]);
	u[2] = _mm_unpacklo_epi16(t[2], t[3]);
	u[3] = _mm_unpackhi_epi16(t[2], t[3]);
	out[0] = _mm_unpacklo_epi32(u[0], u[2]);
	out[1] = _mm_unpackhi_epi32(u[0], u[2]);
	out[2] = _mm_unpacklo_epi32(u[1], u[3]);
	out[3] = _mm_unpackhi_epi32(u[1], u[3]);
}

/* Transpose 8 rows of 8 16-bit values in a[] in place: a[k] becomes column k. */
AVX2_INLINE static void tr8x8(__m128i a[8])
{
	__m128i t[8], u[8];

	for (int i = 0; i < 8; i += 2) {
		t[i] = _mm_unpacklo_epi16(a[i], a[i + 1]);
		t[i + 1] = _mm_unpackhi_epi16(a[i], a[i + 1]);
	}
	for (int i = 0; i < 8; i += 4) {
		u[i] = _mm_unpacklo_epi32(t[i], t[i + 2]);
		u[i + 1] = _mm_unpackhi_epi32(t[i], t[i + 2]);
		u[i + 2] = _mm_unpacklo_epi32(t[i + 1], t[i + 3]);
		u[i + 3] = _mm_unpackhi_epi32(t[i + 1], t[i + 3]);
	}
	for (int k = 0; k < 4; k++) {
		a[2 * k] = _mm_unpacklo_epi64(u[k], u[k + 4]);
		a[2 * k + 1] = _mm_unpackhi_epi64(u[k], u[k + 4]);
	}
}

/* Transposed tile (r0, c0) of m: 8 rows of 8 values, scaled by k's scale. */
AVX2_INLINE static void deq_tile8_t(const struct qv_xf_fp8 *m, size_t r0, size_t c0,
				    const struct k16 *k, uint16_t *dst, size_t ds)
{
	__m128i x[4];

	tr_bytes8x8(m->src + r0 * m->src_stride + c0, m->src_stride, x);
#pragma GCC unroll 4
	for (int j = 0; j < 4; j++) { /* columns 2j and 2j + 1 become rows of dst */
		__m256i v = deq16(x[j], k);

		_mm_storeu_si128((__m128i *)(dst + (c0 + 2 * j) * ds + r0), _mm256_castsi256_si128(v));
		_mm_storeu_si128((__m128i *)(dst + (c0 + 2 * j + 1) * ds + r0),
				 _mm256_extracti128_si256(v, 1));
	}
}

/* Row r of m, columns [c0, c1) (a multiple of 8 apart), scaled by k's scale, stored plain:
 * 16 values a conversion, the last 8 alone. */
AVX2_INLINE static void deq_row(const struct qv_xf_fp8 *m, size_t r, size_t c0, size_t c1,
				const struct k16 *k, uint16_t *dst, size_t ds)
{
	const uint8_t *p = m->src + r * m->src_stride;
	size_t c = c0;

	for (; c + 16 <= c1; c += 16)
		_mm256_storeu_si256((__m256i *)(dst + r * ds + c),
				    deq16(_mm_loadu_si128((const __m128i *)(p + c)), k));
	if (c < c1)
		_mm_storeu_si128((__m128i *)(dst + r * ds + c),
				 _mm256_castsi256_si128(deq16(_mm_loadl_epi64((const __m128i *)(p + c)),
							      k)));
}

/* Transposed tile (r0, c0) of m, 16 rows of 8 values: each source column becomes 16 values,
 * one conversion and one 32-byte store. The 16 rows share k's scale: blocks are multiples of
 * 16 where this is used. (32-row tiles, writing whole destination lines, were slower: 3.2
 * against 3.9 GB/s.) */
AVX2_INLINE static void deq_tile16_t(const struct qv_xf_fp8 *m, size_t r0, size_t c0,
				     const struct k16 *k, uint16_t *dst, size_t ds)
{
	const uint8_t *p = m->src + r0 * m->src_stride + c0;
	__m128i top[4], bot[4];

	tr_bytes8x8(p, m->src_stride, top);
	tr_bytes8x8(p + 8 * m->src_stride, m->src_stride, bot);
#pragma GCC unroll 4
	for (int j = 0; j < 4; j++) { /* top[j], bot[j]: columns 2j and 2j + 1, 8 rows each */
		_mm256_storeu_si256((__m256i *)(dst + (c0 + 2 * j) * ds + r0),
				    deq16(_mm_unpacklo_epi64(top[j], bot[j]), k));
		_mm256_storeu_si256((__m256i *)(dst + (c0 + 2 * j + 1) * ds + r0),
				    deq16(_mm_unpackhi_epi64(top[j], bot[j]), k));
	}
}

/* The whole-tile part of m (rows and columns rounded down to 8), one scale block at a time:
 * its constants are made once (a tile-by-tile scale lookup costs two divisions, more than the
 * conversion). Transposed, a block's tiles go in patches of TR_ROWS x TR_COLS: the patch's
 * source lines stay in L1 while they are used, and each destination line (32 values) is
 * written whole, by one 32-row tile. Blocks are multiples of 8 here. */
#define TR_ROWS 32
#define TR_COLS 64
AVX2 static void deq_avx2(const struct qv_xf_fp8 *m, size_t rows8, size_t cols8, bool t,
			  uint16_t *dst, size_t ds)
{
	size_t b = m->block;

	for (size_t br = 0; br < rows8; br += b) {
		size_t re = br + b < rows8 ? br + b : rows8;

		for (size_t bc = 0; bc < cols8; bc += b) {
			size_t ce = bc + b < cols8 ? bc + b : cols8;
			struct k16 k;

			k16_init(&k, m->scale[(br / b) * m->scale_stride + bc / b]);
			if (!t) {
				for (size_t r = br; r < re; r++)
					deq_row(m, r, bc, ce, &k, dst, ds);
				continue;
			}
			for (size_t rb = br; rb < re; rb += TR_ROWS) {
				size_t pe = rb + TR_ROWS < re ? rb + TR_ROWS : re;

				for (size_t c0 = bc; c0 < ce; c0 += 8) {
					size_t r0 = rb;

					for (; b % 16 == 0 && r0 + 16 <= pe; r0 += 16)
						deq_tile16_t(m, r0, c0, &k, dst, ds);
					for (; r0 < pe; r0 += 8)
						deq_tile8_t(m, r0, c0, &k, dst, ds);
				}
			}
		}
	}
}

/* Transposed, row band by row band: 16 rows of the source are read front to back (16
 * sequential streams the prefetcher follows; 32 were slower), each 8 columns of the band
 * making a 16-value piece of 8 destination rows; the scale's constants change at each block's
 * first column. Blocks are multiples of 16 here. */
AVX2 static void deq_avx2_t(const struct qv_xf_fp8 *m, size_t rows16, size_t cols8, uint16_t *dst,
			    size_t ds)
{
	size_t b = m->block;

	for (size_t rb = 0; rb < rows16; rb += 16) {
		const float *srow = m->scale + (rb / b) * m->scale_stride;
		struct k16 k;

		k16_init(&k, srow[0]);
		for (size_t c0 = 0; c0 < cols8; c0 += 8) {
			if (c0 && c0 % b == 0)
				k16_init(&k, srow[c0 / b]);
			deq_tile16_t(m, rb, c0, &k, dst, ds);
		}
	}
}

AVX2 static void tr_avx2(const uint16_t *src, size_t rows8, size_t cols8, size_t ss,
			 uint16_t *dst, size_t ds)
{
	for (size_t rb = 0; rb < rows8; rb += TR_ROWS)
		for (size_t c0 = 0; c0 < cols8; c0 += 8)
			for (size_t r0 = rb; r0 < rows8 && r0 < rb + TR_ROWS; r0 += 8) {
			__m128i a[8];

			for (int i = 0; i < 8; i++)
				a[i] = _mm_loadu_si128((const __m128i *)(src + (r0 + i) * ss + c0));
			tr8x8(a);
			for (int i = 0; i < 8; i++)
				_mm_storeu_si128((__m128i *)(dst + (c0 + i) * ds + r0), a[i]);
		}
}

bool qv_xf_vector(void)
{
	return !force_scalar && __builtin_cpu_supports("avx2");
}
#else
bool qv_xf_vector(void)
{
	return false;
}
#endif

void qv_xf_dequant(const struct qv_xf_fp8 *m, bool transpose, uint16_t *dst, size_t dst_stride)
{
	size_t rows8 = 0, cols8 = 0;

#ifdef XF_X86
	if (qv_xf_vector() && m->block % 8 == 0) {
		rows8 = m->rows & ~(size_t)7;
		cols8 = m->cols & ~(size_t)7;
		if (transpose && m->block % 16 == 0) { /* 16-row bands, then what is left */
			size_t rows16 = m->rows & ~(size_t)15;

			deq_avx2_t(m, rows16, cols8, dst, dst_stride);
			deq_avx2(&(struct qv_xf_fp8){ .src = m->src + rows16 * m->src_stride,
						      .rows = rows8 - rows16, .cols = m->cols,
						      .src_stride = m->src_stride,
						      .scale = m->scale + rows16 / m->block *
								      m->scale_stride,
						      .scale_stride = m->scale_stride,
						      .block = m->block },
				 rows8 - rows16, cols8, true, dst + rows16, dst_stride);
		} else {
			deq_avx2(m, rows8, cols8, transpose, dst, dst_stride);
		}
	}
#endif
	/* what the tiles left: the last columns of every row, then the last rows */
	deq_scalar(m, 0, rows8, cols8, m->cols, transpose, dst, dst_stride);
	deq_scalar(m, rows8, m->rows, 0, m->cols, transpose, dst, dst_stride);
}

void qv_xf_transpose16(const uint16_t *src, size_t rows, size_t cols, size_t src_stride,
		       uint16_t *dst, size_t dst_stride)
{
	size_t rows8 = 0, cols8 = 0;

#ifdef XF_X86
	if (qv_xf_vector()) {
		rows8 = rows & ~(size_t)7;
		cols8 = cols & ~(size_t)7;
		tr_avx2(src, rows8, cols8, src_stride, dst, dst_stride);
	}
#endif
	tr_scalar(src, 0, rows8, cols8, cols, src_stride, dst, dst_stride);
	tr_scalar(src, rows8, rows, 0, cols, src_stride, dst, dst_stride);
}
