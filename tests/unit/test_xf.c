/* test_xf.c - the computing kernels against references written here another way: E4M3 decoded
 * by its definition (ldexp), BF16 rounding by comparing the two neighbours in double, the
 * block scale looked up per element; the vector path and the scalar path give the same bits
 * on sizes that are not multiples of 8 or of the block. */
#include "unit.h"

#include "qv_xf.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* E4M3 (e4m3fn) by definition: sign, 4 exponent bits (bias 7), 3 mantissa bits. */
static double e4m3_ref(uint8_t b)
{
	int e = (b >> 3) & 15, m = b & 7;
	double v;

	if (e == 15 && m == 7)
		return NAN;
	v = e ? ldexp(1.0 + m / 8.0, e - 7) : ldexp(m / 8.0, -6);
	return b & 0x80 ? -v : v;
}

/* f to BF16 by choosing the nearer of the two BF16 values around it (ties: even mantissa). */
static uint16_t bf16_ref(float f)
{
	uint32_t u, lo, hi;
	float a, b;
	double da, db;

	if (isnan(f)) /* the canonical quiet NaN */
		return 0x7fc0;
	memcpy(&u, &f, 4);
	lo = u & 0xffff0000u; /* toward zero */
	hi = lo + 0x10000u;   /* away from zero (may become inf: that is right) */
	if (lo == u)
		return (uint16_t)(lo >> 16);
	memcpy(&a, &lo, 4);
	memcpy(&b, &hi, 4);
	da = fabs((double)f - a);
	db = isinf(b) ? fabs((double)f - copysign(0x1p128, f)) : fabs((double)f - b);
	if (da != db)
		return (uint16_t)((da < db ? lo : hi) >> 16);
	return (uint16_t)((((lo >> 16) & 1) ? hi : lo) >> 16);
}

static uint32_t rnd(uint64_t *s)
{
	*s = *s * 6364136223846793005ull + 1442695040888963407ull;
	return (uint32_t)(*s >> 33);
}

TEST(xf_e4m3_every_byte)
{
	for (int b = 0; b < 256; b++) {
		double want = e4m3_ref((uint8_t)b);
		float got = qv_xf_e4m3((uint8_t)b);

		if (isnan(want))
			CHECK_MSG(isnan(got), "byte 0x%02x: %g, want NaN", b, got);
		else
			CHECK_MSG(got == want && !signbit(got) == !signbit(want),
				  "byte 0x%02x: %g, want %g", b, got, want);
	}
	CHECK(qv_xf_e4m3(0x7e) == 448.0f); /* the largest */
	CHECK(qv_xf_e4m3(0x01) == 0x1p-9f); /* the smallest subnormal */
}

TEST(xf_bf16_rounds_to_nearest_even)
{
	uint64_t s = 7;
	static const float special[] = { 0.0f, -0.0f, 1.0f, 0x1.01p0f, 0x1.03p0f, 0x1.018p0f, 0x1.00fffep0f,
					 INFINITY, -INFINITY, 3.4028235e38f, 0x1p-149f,
					 -0x1.7fp-130f };

	for (size_t i = 0; i < sizeof(special) / sizeof(*special); i++)
		CHECK_MSG(qv_xf_bf16(special[i]) == bf16_ref(special[i]), "%a: %04x, want %04x",
			  special[i], qv_xf_bf16(special[i]), bf16_ref(special[i]));
	CHECK_EQ_U64(qv_xf_bf16(NAN), 0x7fc0);
	CHECK_EQ_U64(qv_xf_bf16(0x1.01p0f), 0x3f80);  /* a tie, down to the even one */
	CHECK_EQ_U64(qv_xf_bf16(0x1.03p0f), 0x3f82);  /* a tie, up to the even one */
	CHECK_EQ_U64(qv_xf_bf16(0x1.018p0f), 0x3f81); /* past the half: up */
	for (int i = 0; i < 200000; i++) {
		uint32_t u = rnd(&s) << 1 ^ rnd(&s);
		float f;

		memcpy(&f, &u, 4);
		if (qv_xf_bf16(f) != bf16_ref(f)) {
			CHECK_MSG(0, "%a (0x%08x): %04x, want %04x", f, u, qv_xf_bf16(f), bf16_ref(f));
			break;
		}
	}
}

/* A rows x cols FP8 matrix with a different scale per block, dequantized by both paths,
 * plain and transposed, into a wider destination; every element against the reference. The
 * scales: ns of them from scales, by block in turn, or with ns 0 distinct ones of binary
 * exponent in [emin, emax]. */
static void check_dequant_scaled(size_t rows, size_t cols, unsigned block, uint64_t seed,
				 bool normal, const float *scales, size_t ns, int emin, int emax)
{
	size_t br = (rows + block - 1) / block, bc = (cols + block - 1) / block;
	size_t ss = cols + 3, ds = (rows > cols ? rows : cols) + 5;
	uint8_t *src = malloc(rows * ss);
	float *sc = malloc(br * bc * sizeof(*sc));
	uint16_t *dst = malloc(ds * ds * sizeof(*dst));
	size_t bad = 0;

	if (!CHECK(src && sc && dst))
		goto out;
	for (size_t i = 0; i < rows * ss; i++) { /* normal: no subnormal, no NaN (the 16-lane path) */
		src[i] = (uint8_t)rnd(&seed);
		while (normal && ((src[i] & 0x7f) < 8 || (src[i] & 0x7f) == 0x7f))
			src[i] = (uint8_t)rnd(&seed);
	}
	for (size_t i = 0; i < br * bc; i++) /* distinct per block: a wrong block shows */
		sc[i] = ns ? scales[i % ns] :
			     ldexpf(1.0f + (float)(i % 7) / 7.0f + (float)(rnd(&seed) % 97) / 970.0f,
				    emin + (int)(rnd(&seed) % (unsigned)(emax - emin + 1)));
	for (int path = 0; path < 2; path++) {
		bool old = qv_xf_force_scalar(path == 1);

		for (int t = 0; t < 2; t++) {
			struct qv_xf_fp8 m = { src, rows, cols, ss, sc, bc, block };

			memset(dst, 0xab, ds * ds * sizeof(*dst));
			qv_xf_dequant(&m, t, dst, ds);
			for (size_t r = 0; r < rows; r++)
				for (size_t c = 0; c < cols; c++) {
					float v = (float)e4m3_ref(src[r * ss + c]) *
						  sc[(r / block) * bc + c / block];
					uint16_t want = bf16_ref(v), got = dst[t ? c * ds + r : r * ds + c];

					if (got != want && bad++ < 3)
						CHECK_MSG(0, "%zux%zu %s %s (%zu,%zu): %04x, want %04x",
							  rows, cols, path ? "scalar" : "vector",
							  t ? "transposed" : "plain", r, c, got, want);
				}
		}
		qv_xf_force_scalar(old);
	}
	CHECK_MSG(bad == 0, "%zux%zu block %u: %zu elements wrong", rows, cols, block, bad);
out:
	free(src);
	free(sc);
	free(dst);
}

static void check_dequant(size_t rows, size_t cols, unsigned block, uint64_t seed, bool normal)
{
	check_dequant_scaled(rows, cols, block, seed, normal, NULL, 0, -4, 4);
}

TEST(xf_dequant_blocks_edges_and_paths)
{
	static const size_t dims[][2] = { { 1, 1 }, { 7, 9 }, { 8, 8 }, { 128, 128 }, { 130, 257 },
					  { 200, 384 }, { 300, 40 } };

	for (size_t i = 0; i < sizeof(dims) / sizeof(*dims); i++) {
		check_dequant(dims[i][0], dims[i][1], 128, i + 1, false);
		check_dequant(dims[i][0], dims[i][1], 128, i + 100, true);
	}
	check_dequant(45, 70, 16, 99, true); /* small blocks: many scales in one tile row */
	check_dequant(33, 29, 12, 5, false); /* a block that is no multiple of 8: scalar only */
}

/* Scales whose products leave the normal range, or could: the vector path's product table
 * holds only where every result of a block stays normal, and hands the rest to the 8-lane
 * path. Every binary exponent of the scale from subnormal to overflowing, then the scales no
 * checkpoint should hold (zero, negative, subnormal, infinite, NaN). */
TEST(xf_dequant_any_scale)
{
	static const float odd[] = { 0.0f, -0.0f, -1.5f, -0x1.8p-120f, 0x1p-149f, 0x1.4p-128f,
				     INFINITY, -INFINITY, NAN, 0x1.fep127f };

	for (int e = -150; e <= 128; e += 1)
		check_dequant_scaled(32, 48, 16, (uint64_t)(e + 1000), e % 2 != 0, NULL, 0, e, e);
	check_dequant_scaled(64, 80, 16, 11, false, odd, sizeof(odd) / sizeof(*odd), 0, 0);
	check_dequant_scaled(64, 80, 16, 12, true, odd, sizeof(odd) / sizeof(*odd), 0, 0);
}

TEST(xf_transpose16_any_size)
{
	static const size_t dims[][2] = { { 1, 5 }, { 8, 8 }, { 17, 23 }, { 64, 40 }, { 3, 129 } };
	uint64_t seed = 3;

	for (size_t i = 0; i < sizeof(dims) / sizeof(*dims); i++) {
		size_t rows = dims[i][0], cols = dims[i][1], ss = cols + 1, ds = rows + 2;
		uint16_t *src = malloc(rows * ss * 2), *dst = malloc(cols * ds * 2);
		size_t bad = 0;

		if (!CHECK(src && dst))
			break;
		for (size_t k = 0; k < rows * ss; k++)
			src[k] = (uint16_t)rnd(&seed);
		for (int path = 0; path < 2; path++) {
			bool old = qv_xf_force_scalar(path == 1);

			qv_xf_transpose16(src, rows, cols, ss, dst, ds);
			for (size_t r = 0; r < rows; r++)
				for (size_t c = 0; c < cols; c++)
					bad += dst[c * ds + r] != src[r * ss + c];
			qv_xf_force_scalar(old);
		}
		CHECK_MSG(bad == 0, "%zux%zu: %zu elements wrong", rows, cols, bad);
		free(src);
		free(dst);
	}
}
