/* qv_hdr.h - bytes the view synthesizes: virtual safetensors headers and index files. FUSE-free. */
#ifndef QV_HDR_H
#define QV_HDR_H

#include <stddef.h>
#include <stdint.h>

#include "qv_st.h"
#include "qv_util.h"

/* One tensor of a virtual file, in data order. */
struct qv_vtensor {
	const char *name;
	enum qv_dtype dtype;
	uint32_t ndim;
	uint64_t shape[QV_ST_MAX_DIMS];
	uint64_t size; /* bytes */
};

/* Build a whole safetensors header (8-byte length + compact JSON padded with spaces so that
 * 8 + N is a multiple of 8): __metadata__ first (meta but the keys extra sets, which replace
 * them, then "format":"pt" when meta lacks it, then extra), tensors in the given order with
 * contiguous offsets. The result is checked with qv_st_parse: 0, -ENOMEM, or -EINVAL when
 * offsets overflow or the strict parser rejects it, with a reason in err. */
int qv_hdr_build(const struct qv_meta *meta, size_t nmeta, const struct qv_meta *extra,
		 size_t nextra, const struct qv_vtensor *t, size_t nt, struct qv_buf *out,
		 char *err, size_t errlen);

/* Lengthen a header qv_hdr_build made by add spaces (a multiple of 8 keeps its data 8-byte
 * aligned), its length prefix rewritten; 0 or -ENOMEM. */
int qv_hdr_pad(struct qv_buf *hdr, size_t add);

/* One weight_map entry. */
struct qv_wentry {
	const char *key, *file;
};

/* Build an index from the source index text (its metadata entries are kept, total_size
 * replaced) and the view's entries (sorted here by key). 0, -ENOMEM, or -EINVAL with a reason. */
int qv_hdr_index(const char *src_json, size_t len, struct qv_wentry *w, size_t nw,
		 uint64_t total_size, struct qv_buf *out, char *err, size_t errlen);

/* Names of the files a source index's weight_map refers to (malloc'd array of malloc'd strings,
 * unique, sorted); 0, -ENOMEM or -EINVAL with a reason. */
int qv_hdr_index_files(const char *src_json, size_t len, char ***files, size_t *nfiles, char *err,
		       size_t errlen);

/* Call fn(arg, key, file) for each weight_map entry of a source index, in the index's order,
 * until one returns non-zero, which is returned; else 0, or -EINVAL with a reason in err for
 * text that is no index. */
int qv_hdr_index_each(const char *src_json, size_t len,
		      int (*fn)(void *arg, const char *key, const char *file), void *arg, char *err,
		      size_t errlen);

#endif
