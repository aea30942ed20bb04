/* qv_gpu.h - the device operations GPU staging needs, behind a table so one staging engine
 * runs on the CUDA runtime (gpu_cuda.c, loaded with dlopen at run time) or on a stand-in in
 * the unit tests. FUSE-free. Every int-returning op gives 0 or -errno; err() says why. */
#ifndef QV_GPU_H
#define QV_GPU_H

#include <stddef.h>

#define QV_GPU_IPC_BYTES 64 /* CUDA_IPC_HANDLE_SIZE */

struct qv_gpu_ops {
	void *ctx;
	int (*host_alloc)(void *ctx, size_t n, void **p); /* pinned host memory */
	void (*host_free)(void *ctx, void *p);
	int (*dev_alloc)(void *ctx, size_t n, void **d);
	void (*dev_free)(void *ctx, void *d);
	int (*stream_new)(void *ctx, void **s);
	void (*stream_free)(void *ctx, void *s);
	int (*event_new)(void *ctx, void **e);
	void (*event_free)(void *ctx, void *e);
	/* host -> device on stream s, returns at once */
	int (*copy_async)(void *ctx, void *dst, const void *src, size_t n, void *s);
	int (*event_record)(void *ctx, void *e, void *s);
	int (*event_wait)(void *ctx, void *e); /* the host waits for e */
	int (*copy_to_host)(void *ctx, void *dst, const void *src, size_t n); /* synchronous */
	int (*copy_to_dev)(void *ctx, void *dst, const void *src, size_t n);  /* synchronous */
	int (*ipc_handle)(void *ctx, void *d, unsigned char out[QV_GPU_IPC_BYTES]);
	const char *(*err)(void *ctx); /* text of the last failure */
	void (*close)(void *ctx);
};

/* What this binary was built with: "cuda runtime (dlopen)" or "not built". */
const char *qv_gpu_build(void);

/* Load the CUDA runtime and select device for the calling thread (the current device is per
 * thread: make every later call from this one); 0, -ENOSYS (not built, or no runtime library),
 * -ENODEV (no such device) or -errno, with one line in err. Never waits for a device. */
int qv_gpu_open(int device, struct qv_gpu_ops *ops, char *err, size_t errlen);

/* qv_gpu_open's type, so staging can be handed a stand-in device. */
typedef int qv_gpu_open_fn(int device, struct qv_gpu_ops *ops, char *err, size_t errlen);

#endif
