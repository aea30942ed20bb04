/* qv_xf.h - the computing kernels of computed views: FP8 (E4M3) block dequantization to BF16
 * and BF16 transposition, one expert's matrix at a time. Pure functions over memory (AVX2
 * where the CPU has it, the same results from a scalar path): no I/O, no safetensors.
 *
 * Dequantization is NeMo Automodel's dequantize_from_fp8: each FP8 value, as F32, times its
 * block's scale (F32), rounded to BF16 to nearest even. Any NaN becomes 0x7FC0; torch itself
 * makes 0xFFFF or 0x7FC0 of a NaN depending on where its vectorized loop ends, so only NaN-ness
 * can be compared with it (released checkpoints hold no NaN).
 * Blocks are block x block elements; edge blocks may be partial. Not wired into any view yet:
 * issue 23 builds the computed views on these. */
#ifndef QV_XF_H
#define QV_XF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The F32 value of the FP8 E4M3 (e4m3fn: no infinities, 0x7F/0xFF are NaN) byte b. */
float qv_xf_e4m3(uint8_t b);

/* f rounded to BF16, to nearest even; any NaN is 0x7FC0. */
uint16_t qv_xf_bf16(float f);

/* One matrix of rows x cols FP8 values: element (r, c) at src[r * src_stride + c]; its scales
 * at scale[(r / block) * scale_stride + c / block]. */
struct qv_xf_fp8 {
	const uint8_t *src;
	size_t rows, cols, src_stride;
	const float *scale;
	size_t scale_stride;
	unsigned block;
};

/* Dequantize m into BF16: element (r, c) to dst[r * dst_stride + c], or, transposed, to
 * dst[c * dst_stride + r]. */
void qv_xf_dequant(const struct qv_xf_fp8 *m, bool transpose, uint16_t *dst, size_t dst_stride);

/* Transpose a rows x cols matrix of 16-bit values: src[r * src_stride + c] to
 * dst[c * dst_stride + r] (a transformers-5 [out, in] expert slab to the Hub's [in, out]). */
void qv_xf_transpose16(const uint16_t *src, size_t rows, size_t cols, size_t src_stride,
		       uint16_t *dst, size_t dst_stride);

/* Use the scalar path only (tests compare it with the vector one); returns the old setting. */
bool qv_xf_force_scalar(bool on);

/* Whether the vector (AVX2) path is in use. */
bool qv_xf_vector(void);

#endif
