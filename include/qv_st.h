/* qv_st.h - strict safetensors header parsing (DESIGN §6). FUSE-free. */
#ifndef QV_ST_H
#define QV_ST_H

#include <stddef.h>
#include <stdint.h>

#define QV_ST_MAX_HEADER 100000000ULL /* the official reader's limit */
#define QV_ST_MAX_DIMS 16

enum qv_dtype {
	QV_DT_BOOL, QV_DT_U8, QV_DT_I8, QV_DT_F8_E5M2, QV_DT_F8_E4M3, QV_DT_F8_E8M0,
	QV_DT_I16, QV_DT_U16, QV_DT_F16, QV_DT_BF16, QV_DT_I32, QV_DT_U32, QV_DT_F32,
	QV_DT_F64, QV_DT_I64, QV_DT_U64, QV_DT_C64, QV_DT_F8_E4M3FNUZ, QV_DT_F8_E5M2FNUZ,
	QV_DT_COUNT
};

struct qv_tensor {
	char *name;
	enum qv_dtype dtype;
	uint32_t ndim;
	uint64_t shape[QV_ST_MAX_DIMS];
	uint64_t begin, end; /* relative to the start of the data section */
};

struct qv_meta {
	char *key, *val;
};

/* One parsed file; tensors are sorted in data order (by begin offset). */
struct qv_st {
	uint64_t hdr_len;   /* N: JSON length after the 8-byte prefix */
	uint64_t data_size; /* file size - 8 - N */
	struct qv_tensor *t;
	size_t nt;
	struct qv_meta *meta; /* __metadata__ in source order; NULL when absent */
	size_t nmeta;
};

/* Name of a dtype as written in headers. */
const char *qv_dtype_name(enum qv_dtype dt);
/* Bytes per element of a dtype. */
unsigned qv_dtype_size(enum qv_dtype dt);

/* Parse header bytes hdr[0..len) of a file of file_size bytes; 0 or -EINVAL with a reason in err. */
int qv_st_parse(const char *hdr, size_t len, uint64_t file_size, struct qv_st *out,
		char *err, size_t errlen);

/* Read and parse the header of an open safetensors file; 0 or -errno with a reason in err. */
int qv_st_read_fd(int fd, uint64_t file_size, struct qv_st *out, char *err, size_t errlen);

/* Free everything a parse allocated; safe on a zeroed struct. */
void qv_st_free(struct qv_st *st);

#endif
