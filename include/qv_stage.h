/* qv_stage.h - GPU staging: a view's tensors read with io_uring into a bounded ring of pinned
 * buffers and copied to device memory asynchronously, reads and copies overlapped. FUSE-free;
 * the device is reached through struct qv_gpu_ops. */
#ifndef QV_STAGE_H
#define QV_STAGE_H

#include <pthread.h>
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
	const atomic_bool *cancel; /* when set (checked between pieces), the run stops: -ECANCELED */
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

/* Whether open(device) succeeds, asked in a short-lived child process, so that this process
 * never initialises CUDA: a daemon forks after this check, and CUDA cannot be used in a child
 * forked after it was initialised. 0 or the child's -errno with its reason in err. */
int qv_stage_probe(int device, qv_gpu_open_fn *open, char *err, size_t errlen);

/* -o gpu=N: the mount's view staged in the background by one thread that opens the device
 * itself (after the daemon forked, selecting it for itself), makes every device call, keeps
 * the allocation while mounted (other processes map it by IPC handle) and frees it at stop. */
struct qv_stage_bg {
	struct qv_mount *m;
	int device;
	qv_gpu_open_fn *open; /* qv_gpu_open, or a stand-in device in tests */
	struct qv_stage_cfg cfg;
	struct qv_gpu_ops ops;
	bool opened;
	struct qv_stage st;
	atomic_bool selected; /* st holds the selection: gpu.json may read it */
	atomic_bool cancel;
	bool started, stop;
	pthread_t thread;
	pthread_mutex_t mu;
	pthread_cond_t cv;
};

/* Prepare b (zeroed here) for device; gpu.json works from now on; nothing is opened. */
void qv_stage_bg_init(struct qv_stage_bg *b, int device, qv_gpu_open_fn *open);

/* Start the staging thread over m's root view; 0 or -errno. Call after any fork. */
int qv_stage_bg_start(struct qv_stage_bg *b, struct qv_mount *m);

/* The mount's .qvlmoefs/gpu.json (struct qv_mount_opts.gpu_json, arg the stager). */
int qv_stage_bg_json(void *arg, struct qv_buf *out);

/* Stop staging between pieces, free the device memory and close the device (in the staging
 * thread), and wait for that thread; returns promptly. A no-op when not started. */
void qv_stage_bg_stop(struct qv_stage_bg *b);

#endif
