/* xfcheck.c - the FP8 kernel as a command, for tests that compare it with the real tools:
 * `xfcheck ROWS COLS BLOCK T|N vector|scalar FP8 SCALES OUT` dequantizes the ROWS x COLS FP8
 * bytes of file FP8 with the F32 block scales of file SCALES into BF16 file OUT, transposed
 * (T) or not (N), on the path named. Exit 0, or 1 with a one-line reason. */
#include "qv_xf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The whole of file path, which must be exactly len bytes, or NULL. */
static void *slurp(const char *path, size_t len)
{
	FILE *f = fopen(path, "rb");
	char *p = malloc(len ? len : 1);
	size_t got = f && p ? fread(p, 1, len, f) : 0;
	int extra = f ? fgetc(f) : EOF;

	if (f)
		fclose(f);
	if (got != len || extra != EOF) {
		free(p);
		return NULL;
	}
	return p;
}

int main(int argc, char **argv)
{
	size_t rows, cols, block, br, bc;
	uint8_t *src;
	float *sc;
	uint16_t *dst;
	FILE *out;
	bool t;

	if (argc != 9) {
		fprintf(stderr, "usage: xfcheck ROWS COLS BLOCK T|N vector|scalar FP8 SCALES OUT\n");
		return 1;
	}
	rows = strtoul(argv[1], NULL, 10), cols = strtoul(argv[2], NULL, 10);
	block = strtoul(argv[3], NULL, 10), t = argv[4][0] == 'T';
	if (!rows || !cols || !block) {
		fprintf(stderr, "xfcheck: ROWS, COLS and BLOCK must be positive\n");
		return 1;
	}
	br = (rows + block - 1) / block, bc = (cols + block - 1) / block;
	src = slurp(argv[6], rows * cols);
	sc = slurp(argv[7], br * bc * sizeof(float));
	dst = malloc(rows * cols * sizeof(*dst));
	if (!src || !sc || !dst) {
		fprintf(stderr, "xfcheck: %s or %s is not of the size the shape says\n", argv[6], argv[7]);
		return 1;
	}
	qv_xf_force_scalar(!strcmp(argv[5], "scalar"));
	qv_xf_dequant(&(struct qv_xf_fp8){ src, rows, cols, cols, sc, bc, (unsigned)block }, t, dst,
		      t ? rows : cols);
	out = fopen(argv[8], "wb");
	if (!out || fwrite(dst, sizeof(*dst), rows * cols, out) != rows * cols || fclose(out)) {
		fprintf(stderr, "xfcheck: cannot write %s\n", argv[8]);
		return 1;
	}
	free(src), free(sc), free(dst);
	return 0;
}
