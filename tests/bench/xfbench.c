/* xfbench.c - make bench row 9: the dequantize-and-transpose kernel alone, one thread, on one
 * expert's gate_proj of Qwen3-VL-30B-A3B (FP8 [768, 2048], 128x128 blocks) into its half of
 * the Hub's [2048, 1536] BF16 slab, against memcpy of the same output bytes in the same run
 * (the memory-bandwidth reference), and the scalar path. The FP8 values are what block
 * quantization makes of normal weights: Gaussian, the block's largest near 448 (sigma 448/4.5),
 * so subnormals are rare (about 1e-4), as in released checkpoints. Prints medians of REPS timings:
 * `xfbench [REPS]`; one line per case: "name seconds GB/s-of-BF16 ratio-to-memcpy". */
#include "qv_xf.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define ROWS 768  /* moe_intermediate_size */
#define COLS 2048 /* hidden_size */
#define BLK 128
#define ROUNDS 64 /* experts a timing covers */

static double now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t); /* the thread's own time: other load does not count */
	return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* The E4M3 byte nearest to v (|v| <= 448). */
static uint8_t to_e4m3(double v)
{
	int lo = 0, hi = 126; /* positive codes, increasing in value; 127 is NaN */
	double a = fabs(v);

	while (lo < hi) {
		int mid = (lo + hi + 1) / 2;

		if (qv_xf_e4m3((uint8_t)mid) <= a)
			lo = mid;
		else
			hi = mid - 1;
	}
	if (lo < 126 && qv_xf_e4m3((uint8_t)(lo + 1)) - a < a - qv_xf_e4m3((uint8_t)lo))
		lo++;
	return (uint8_t)(lo | (v < 0 ? 0x80 : 0));
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

/* Median seconds of reps runs of ROUNDS experts by kind (0 memcpy, 1 vector, 2 scalar, 3 the
 * vector path without the transposition). */
static double timed(int kind, int reps, const struct qv_xf_fp8 *m, uint16_t *dst, uint16_t *ref)
{
	double t[64];

	qv_xf_force_scalar(kind == 2);
	(void)ref;
	for (int r = 0; r < reps; r++) {
		double t0 = now();

		for (int k = 0; k < ROUNDS; k++) {
			if (kind == 0)
				memcpy(dst, ref, (size_t)ROWS * COLS * 2);
			else if (kind == 3)
				qv_xf_dequant(m, false, dst, COLS);
			else
				qv_xf_dequant(m, true, dst, 2 * ROWS);
		}
		t[r] = now() - t0;
	}
	qv_xf_force_scalar(false);
	qsort(t, (size_t)reps, sizeof(*t), cmp);
	return t[reps / 2];
}

int main(int argc, char **argv)
{
	int reps = argc > 1 ? atoi(argv[1]) : 7;
	uint8_t *src = malloc((size_t)ROWS * COLS);
	float *sc = malloc((ROWS / BLK) * (COLS / BLK) * sizeof(*sc));
	/* line-aligned, as the mount's block buffers are (src/comp.c) */
	uint16_t *dst = aligned_alloc(64, (size_t)COLS * 2 * ROWS * 2);
	uint16_t *ref = malloc((size_t)ROWS * COLS * 2);
	double bytes = (double)ROWS * COLS * 2 * ROUNDS, base;
	const char *name[] = { "memcpy of the output", "dequant+transpose", "dequant+transpose scalar",
			       "dequant, no transpose" };

	if (reps < 1 || reps > 64 || !src || !sc || !dst || !ref) {
		fprintf(stderr, "xfbench: REPS 1..64, or out of memory\n");
		return 1;
	}
	srand(1);
	for (size_t i = 0; i < (size_t)ROWS * COLS; i++) { /* Box-Muller */
		double u = (rand() + 1.0) / (RAND_MAX + 2.0), v = rand() / (RAND_MAX + 1.0);
		double g = sqrt(-2 * log(u)) * cos(2 * M_PI * v) * 448 / 4.5;

		src[i] = to_e4m3(g > 448 ? 448 : g < -448 ? -448 : g);
	}
	for (int i = 0; i < (ROWS / BLK) * (COLS / BLK); i++)
		sc[i] = 1.0f / (float)(i + 3);
	memset(ref, 1, (size_t)ROWS * COLS * 2);
	struct qv_xf_fp8 m = { src, ROWS, COLS, COLS, sc, COLS / BLK, BLK };

	base = timed(0, reps, &m, dst, ref);
	for (int k = 0; k < 4; k++) {
		double s = k ? timed(k, reps, &m, dst, ref) : base;

		printf("%s\t%.4f\t%.2f\t%.3f\n", name[k], s, bytes / s / 1e9, base / s);
	}
	printf("vector path: %s\n", qv_xf_vector() ? "AVX2" : "none (scalar only)");
	free(src), free(sc), free(dst), free(ref);
	return 0;
}
