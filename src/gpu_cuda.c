/* gpu_cuda.c - the CUDA runtime, loaded with dlopen at run time: a machine without libcudart
 * (or without a GPU) still runs the binary, and a request for a device fails with one clear
 * line instead of at load time. Needs no CUDA headers to build: the few types and constants
 * used are declared below as the runtime's stable C ABI has them, so the binary that a GPU
 * machine builds without the CUDA toolkit still stages. */
#include "qv_gpu.h"
#include "qv_util.h"

#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* From cuda_runtime_api.h / driver_types.h; these values have not changed since CUDA 4. */
typedef int cudaError_t;
typedef struct qv_cuda_stream *cudaStream_t;
typedef struct qv_cuda_event *cudaEvent_t;
typedef struct {
	char reserved[64];
} cudaIpcMemHandle_t;
enum cudaMemcpyKind { cudaMemcpyHostToDevice = 1, cudaMemcpyDeviceToHost = 2 };
enum { cudaSuccess = 0, cudaHostAllocDefault = 0, cudaStreamNonBlocking = 1,
       cudaEventDisableTiming = 2 };
_Static_assert(sizeof(cudaIpcMemHandle_t) == QV_GPU_IPC_BYTES, "IPC handle size");

/* The runtime entry points we use, resolved by name. */
struct cuda {
	void *lib;
	int device;
	char last[256];
	cudaError_t (*GetDeviceCount)(int *);
	cudaError_t (*SetDevice)(int);
	cudaError_t (*HostAlloc)(void **, size_t, unsigned);
	cudaError_t (*FreeHost)(void *);
	cudaError_t (*Malloc)(void **, size_t);
	cudaError_t (*Free)(void *);
	cudaError_t (*StreamCreateWithFlags)(cudaStream_t *, unsigned);
	cudaError_t (*StreamDestroy)(cudaStream_t);
	cudaError_t (*EventCreateWithFlags)(cudaEvent_t *, unsigned);
	cudaError_t (*EventDestroy)(cudaEvent_t);
	cudaError_t (*EventRecord)(cudaEvent_t, cudaStream_t);
	cudaError_t (*EventSynchronize)(cudaEvent_t);
	cudaError_t (*MemcpyAsync)(void *, const void *, size_t, enum cudaMemcpyKind, cudaStream_t);
	cudaError_t (*Memcpy)(void *, const void *, size_t, enum cudaMemcpyKind);
	cudaError_t (*IpcGetMemHandle)(cudaIpcMemHandle_t *, void *);
	const char *(*GetErrorString)(cudaError_t);
};

const char *qv_gpu_build(void)
{
	return "cuda runtime (dlopen)";
}

/* 0, or -EIO with the runtime's words kept for err(). */
static int check(struct cuda *c, cudaError_t e, const char *what)
{
	if (e == cudaSuccess)
		return 0;
	snprintf(c->last, sizeof(c->last), "%s: %s", what, c->GetErrorString(e));
	return -EIO;
}

static int host_alloc(void *x, size_t n, void **p)
{
	struct cuda *c = x;

	return check(c, c->HostAlloc(p, n, cudaHostAllocDefault), "cudaHostAlloc");
}

static void host_free(void *x, void *p)
{
	((struct cuda *)x)->FreeHost(p);
}

static int dev_alloc(void *x, size_t n, void **d)
{
	struct cuda *c = x;

	return check(c, c->Malloc(d, n), "cudaMalloc");
}

static void dev_free(void *x, void *d)
{
	((struct cuda *)x)->Free(d);
}

static int stream_new(void *x, void **s)
{
	struct cuda *c = x;

	return check(c, c->StreamCreateWithFlags((cudaStream_t *)s, cudaStreamNonBlocking),
		     "cudaStreamCreate");
}

static void stream_free(void *x, void *s)
{
	((struct cuda *)x)->StreamDestroy(s);
}

static int event_new(void *x, void **e)
{
	struct cuda *c = x;

	return check(c, c->EventCreateWithFlags((cudaEvent_t *)e, cudaEventDisableTiming),
		     "cudaEventCreate");
}

static void event_free(void *x, void *e)
{
	((struct cuda *)x)->EventDestroy(e);
}

static int copy_async(void *x, void *dst, const void *src, size_t n, void *s)
{
	struct cuda *c = x;

	return check(c, c->MemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, s), "cudaMemcpyAsync");
}

static int event_record(void *x, void *e, void *s)
{
	struct cuda *c = x;

	return check(c, c->EventRecord(e, s), "cudaEventRecord");
}

static int event_wait(void *x, void *e)
{
	struct cuda *c = x;

	return check(c, c->EventSynchronize(e), "cudaEventSynchronize");
}

static int copy_to_host(void *x, void *dst, const void *src, size_t n)
{
	struct cuda *c = x;

	return check(c, c->Memcpy(dst, src, n, cudaMemcpyDeviceToHost), "cudaMemcpy");
}

static int copy_to_dev(void *x, void *dst, const void *src, size_t n)
{
	struct cuda *c = x;

	return check(c, c->Memcpy(dst, src, n, cudaMemcpyHostToDevice), "cudaMemcpy");
}

static int ipc_handle(void *x, void *d, unsigned char out[QV_GPU_IPC_BYTES])
{
	struct cuda *c = x;
	cudaIpcMemHandle_t h;
	int rc = check(c, c->IpcGetMemHandle(&h, d), "cudaIpcGetMemHandle");

	if (!rc)
		memcpy(out, h.reserved, QV_GPU_IPC_BYTES);
	return rc;
}

static const char *last_err(void *x)
{
	return ((struct cuda *)x)->last;
}

static void cuda_close(void *x)
{
	struct cuda *c = x;

	dlclose(c->lib);
	free(c);
}

/* Resolve every entry point; the runtime exports them under these plain names. */
static int resolve(struct cuda *c)
{
	static const char *const names[] = {
		"cudaGetDeviceCount", "cudaSetDevice",	 "cudaHostAlloc",
		"cudaFreeHost",	      "cudaMalloc",	 "cudaFree",
		"cudaStreamCreateWithFlags", "cudaStreamDestroy", "cudaEventCreateWithFlags",
		"cudaEventDestroy",   "cudaEventRecord", "cudaEventSynchronize",
		"cudaMemcpyAsync",    "cudaMemcpy",	 "cudaIpcGetMemHandle",
		"cudaGetErrorString",
	};
	void **slots[] = {
		(void **)&c->GetDeviceCount, (void **)&c->SetDevice, (void **)&c->HostAlloc,
		(void **)&c->FreeHost, (void **)&c->Malloc, (void **)&c->Free,
		(void **)&c->StreamCreateWithFlags, (void **)&c->StreamDestroy,
		(void **)&c->EventCreateWithFlags, (void **)&c->EventDestroy,
		(void **)&c->EventRecord, (void **)&c->EventSynchronize, (void **)&c->MemcpyAsync,
		(void **)&c->Memcpy, (void **)&c->IpcGetMemHandle, (void **)&c->GetErrorString,
	};

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		*slots[i] = dlsym(c->lib, names[i]);
		if (!*slots[i])
			return -ENOSYS;
	}
	return 0;
}

int qv_gpu_open(int device, struct qv_gpu_ops *ops, char *err, size_t errlen)
{
	static const char *const libs[] = { "libcudart.so", "libcudart.so.13", "libcudart.so.12",
					    "libcudart.so.11.0" };
	struct cuda *c = calloc(1, sizeof(*c));
	int count = 0, rc;
	cudaError_t e;

	if (!c)
		return qv_err(err, errlen, -ENOMEM, "out of memory");
	for (size_t i = 0; i < sizeof(libs) / sizeof(libs[0]) && !c->lib; i++)
		c->lib = dlopen(libs[i], RTLD_NOW | RTLD_LOCAL);
	if (!c->lib) {
		free(c);
		return qv_err(err, errlen, -ENOSYS, "no CUDA runtime: %s", dlerror());
	}
	rc = resolve(c);
	if (rc) {
		cuda_close(c);
		return qv_err(err, errlen, rc, "the CUDA runtime lacks an entry point we need");
	}
	e = c->GetDeviceCount(&count);
	if (e != cudaSuccess || device < 0 || device >= count) {
		rc = qv_err(err, errlen, -ENODEV, "no CUDA device %d (%s)", device,
			    e != cudaSuccess ? c->GetErrorString(e) : count ? "fewer devices" :
									     "no devices");
		cuda_close(c);
		return rc;
	}
	rc = check(c, c->SetDevice(device), "cudaSetDevice");
	if (rc) {
		qv_err(err, errlen, rc, "%s", c->last);
		cuda_close(c);
		return rc;
	}
	c->device = device;
	*ops = (struct qv_gpu_ops){ c,		host_alloc,   host_free,    dev_alloc,
				    dev_free,	stream_new,   stream_free,  event_new,
				    event_free, copy_async,   event_record, event_wait,
				    copy_to_host, copy_to_dev, ipc_handle,  last_err,
				    cuda_close };
	return 0;
}
