/* qv_stage.h - GPU staging: a view's tensors read with io_uring into a bounded ring of pinned
 * buffers and copied to device memory asynchronously, reads and copies overlapped. FUSE-free;
 * the device is reached through struct qv_gpu_ops. */
#ifndef QV_STAGE_H
#define QV_STAGE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "qv_gpu.h"
#include "qv_io.h"
#include "qv_mount.h"
#include "qv_st.h"
#include "qv_util.h"

enum qv_stage_state { QV_STAGE_PENDING, QV_STAGE_READY, QV_STAGE_FAILED };

struct qv_stage_tensor {
	char *name; /* view key */
	char *file; /* virtual file, relative to the staged folder */
	enum qv_dtype dtype;
	uint32_t ndim;
	uint64_t shape[QV_ST_MAX_DIMS];
	uint64_t size;
	const struct qv_vfile *vf;
	uint64_t voff;	  /* where the tensor's bytes start in the virtual file */
	uint64_t dev_off; /* where they go in the device allocation */
	atomic_int state;
};

struct qv_stage {
	struct qv_stage_tensor *t;
	size_t nt;
	uint64_t bytes;	    /* tensor bytes */
	uint64_t dev_bytes; /* one allocation; tensors start 256-byte aligned */
	void *dev;
	unsigned char ipc[QV_GPU_IPC_BYTES];
	bool has_ipc;
	int device;
	atomic_uint_least64_t done; /* bytes copied so far, for progress */
};

struct qv_stage_cfg {
	unsigned slots;	   /* pinned buffers (default 4) */
	size_t slot_bytes; /* each (default 16 MiB): host memory stays slots * slot_bytes */
	unsigned streams;  /* copy streams (default 2) */
};

/* One copy: bytes [off, off+len) of tensor `tensor`; len <= slot_bytes. */
struct qv_piece {
	size_t tensor;
	uint64_t off, len;
};

/* Pick the tensors of every virtual safetensors file below folder dir (after qv_mount_ready):
 * the expert tensors, or all with all; 0 or -errno with a reason in err. */
int qv_stage_select(struct qv_mount *m, struct qv_node *dir, bool all, struct qv_stage *st,
		    char *err, size_t errlen);

/* Advance *p to the next piece of at most slot_bytes (start with a zeroed *p and first=true);
 * 1 when *p holds a piece, 0 at the end. Pieces follow tensor order and never span tensors. */
int qv_stage_next(const struct qv_stage *st, size_t slot_bytes, struct qv_piece *p, bool first);

/* Allocate device memory and stage every tensor; 0 or -errno with a reason in err (tensors
 * not copied are marked failed). */
int qv_stage_run(struct qv_stage *st, const struct qv_gpu_ops *ops, const struct qv_stage_cfg *cfg,
		 struct qv_io *io, char *err, size_t errlen);

/* Copy back `samples` ranges (all bytes when samples is 0) and compare them with the view's
 * bytes; 0 or -EIO naming the first difference; *bytes = bytes compared. */
int qv_stage_verify(const struct qv_stage *st, const struct qv_gpu_ops *ops, struct qv_io *io,
		    unsigned samples, uint64_t *bytes, char *err, size_t errlen);

/* The status file: device, IPC handle and, per tensor, name, file, dtype, shape, state,
 * offset and size, as JSON. 0 or -ENOMEM. */
int qv_stage_json(const struct qv_stage *st, struct qv_buf *out);

/* Free the selection and the device memory (ops may be NULL when nothing was allocated). */
void qv_stage_free(struct qv_stage *st, const struct qv_gpu_ops *ops);

#endif
