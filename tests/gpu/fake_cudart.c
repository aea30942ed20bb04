/* fake_cudart.c - a stand-in libcudart.so for tests on machines without a GPU: the entry points
 * gpu_cuda.c resolves, with device memory in host memory, and the two CUDA rules that matter
 * to a daemon: a process forked after the runtime was initialised cannot use it (every call
 * then fails with cudaErrorInitializationError), and the current device is per thread (a
 * thread that never called cudaSetDevice works on device 0).
 *
 * Built by the tests (cc -shared -fPIC) and found through LD_LIBRARY_PATH. Environment:
 * FAKE_CUDA_DEVICES (default 1) devices; FAKE_CUDA_COPY_MS (default 0) how long each
 * asynchronous copy takes, copies on one stream running one after another;
 * FAKE_CUDA_LOG a file that gets one line per call: "pid tid function current_device".
 * Device memory is a shared memory file (memfd) per allocation, so that an IPC handle (the
 * owner's pid and descriptor) can be opened by another process through /proc, as CUDA's
 * cudaIpcOpenMemHandle maps another process's allocation. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

typedef int cudaError_t;
enum { OK = 0, INVALID_VALUE = 1, NO_MEMORY = 2, INIT_ERROR = 3, INVALID_DEVICE = 101 };

struct stream {
	double busy_until; /* when the last copy queued on it completes */
};

struct event {
	double at;
};

static pid_t owner;		     /* the process that initialised the runtime */
static __thread int current = -1;    /* cudaSetDevice of this thread; -1: never called (0) */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int env_int(const char *name, int dflt)
{
	const char *v = getenv(name);

	return v && *v ? atoi(v) : dflt;
}

/* Log the call; INIT_ERROR in a process forked after another one initialised the runtime. */
static cudaError_t enter(const char *fn)
{
	const char *log = getenv("FAKE_CUDA_LOG");
	cudaError_t rc = OK;

	pthread_mutex_lock(&mu);
	if (!owner)
		owner = getpid();
	else if (owner != getpid())
		rc = INIT_ERROR;
	pthread_mutex_unlock(&mu);
	if (log) {
		char line[160];
		int fd = open(log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
		int n = snprintf(line, sizeof(line), "%d %ld %s %d%s\n", (int)getpid(),
				 (long)syscall(SYS_gettid), fn, current < 0 ? 0 : current,
				 rc ? " forked-after-init" : "");

		if (fd >= 0) {
			if (write(fd, line, (size_t)n) != n)
				n = 0;
			close(fd);
		}
	}
	return rc;
}

#define ENTER()                                     \
	do {                                        \
		cudaError_t e_ = enter(__func__);   \
		if (e_)                             \
			return e_;                  \
	} while (0)

cudaError_t cudaGetDeviceCount(int *n)
{
	ENTER();
	*n = env_int("FAKE_CUDA_DEVICES", 1);
	return OK;
}

cudaError_t cudaSetDevice(int d)
{
	ENTER();
	if (d < 0 || d >= env_int("FAKE_CUDA_DEVICES", 1))
		return INVALID_DEVICE;
	current = d;
	return OK;
}

cudaError_t cudaHostAlloc(void **p, size_t n, unsigned flags)
{
	(void)flags;
	ENTER();
	*p = malloc(n ? n : 1);
	return *p ? OK : NO_MEMORY;
}

cudaError_t cudaFreeHost(void *p)
{
	ENTER();
	free(p);
	return OK;
}

/* One allocation: its memory file and where it is mapped here. */
struct alloc {
	struct alloc *next;
	void *p;
	size_t n;
	int fd; /* -1: opened from another process's handle */
};

static struct alloc *allocs;

/* A fake IPC handle: whose allocation, by descriptor. */
struct ipc {
	char magic[8];
	int pid, fd;
	size_t n;
};

static cudaError_t map_alloc(void **p, size_t n, int fd, int own)
{
	struct alloc *a = calloc(1, sizeof(*a));
	void *m = a ? mmap(NULL, n ? n : 1, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) : MAP_FAILED;

	if (m == MAP_FAILED) {
		free(a);
		return NO_MEMORY;
	}
	*a = (struct alloc){ .p = m, .n = n ? n : 1, .fd = own ? fd : -1 };
	pthread_mutex_lock(&mu);
	a->next = allocs;
	allocs = a;
	pthread_mutex_unlock(&mu);
	*p = m;
	return OK;
}

/* Unlink and return the allocation mapped at p, or NULL. */
static struct alloc *take_alloc(void *p)
{
	struct alloc **pp, *a = NULL;

	pthread_mutex_lock(&mu);
	for (pp = &allocs; *pp; pp = &(*pp)->next)
		if ((*pp)->p == p) {
			a = *pp;
			*pp = a->next;
			break;
		}
	pthread_mutex_unlock(&mu);
	return a;
}

cudaError_t cudaMalloc(void **p, size_t n)
{
	int fd;
	cudaError_t rc;

	ENTER();
	fd = memfd_create("fake-cuda", MFD_CLOEXEC);
	if (fd < 0 || ftruncate(fd, (off_t)(n ? n : 1))) {
		if (fd >= 0)
			close(fd);
		return NO_MEMORY;
	}
	rc = map_alloc(p, n, fd, 1);
	if (rc)
		close(fd);
	return rc;
}

/* Unmap and forget the allocation at p (its memfd closed if it owns one). */
static cudaError_t drop_alloc(void *p)
{
	struct alloc *a = take_alloc(p);

	if (!a)
		return INVALID_VALUE;
	munmap(a->p, a->n);
	if (a->fd >= 0)
		close(a->fd);
	free(a);
	return OK;
}

cudaError_t cudaFree(void *p)
{
	ENTER();
	return drop_alloc(p);
}

cudaError_t cudaStreamCreateWithFlags(void **s, unsigned flags)
{
	(void)flags;
	ENTER();
	*s = calloc(1, sizeof(struct stream));
	return *s ? OK : NO_MEMORY;
}

cudaError_t cudaStreamDestroy(void *s)
{
	ENTER();
	free(s);
	return OK;
}

cudaError_t cudaEventCreateWithFlags(void **e, unsigned flags)
{
	(void)flags;
	ENTER();
	*e = calloc(1, sizeof(struct event));
	return *e ? OK : NO_MEMORY;
}

cudaError_t cudaEventDestroy(void *e)
{
	ENTER();
	free(e);
	return OK;
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n, int kind, void *sv)
{
	struct stream *s = sv;
	double t = now();

	(void)kind;
	ENTER();
	memcpy(dst, src, n);
	s->busy_until = (s->busy_until > t ? s->busy_until : t) + env_int("FAKE_CUDA_COPY_MS", 0) / 1e3;
	return OK;
}

cudaError_t cudaEventRecord(void *e, void *s)
{
	ENTER();
	((struct event *)e)->at = s ? ((struct stream *)s)->busy_until : now();
	return OK;
}

cudaError_t cudaEventSynchronize(void *ev)
{
	struct event *e = ev;
	double left;

	ENTER();
	left = e->at - now();
	if (left > 0) {
		struct timespec ts = { (time_t)left, (long)((left - (double)(time_t)left) * 1e9) };

		nanosleep(&ts, NULL);
	}
	return OK;
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t n, int kind)
{
	(void)kind;
	ENTER();
	memcpy(dst, src, n);
	return OK;
}

cudaError_t cudaIpcGetMemHandle(void *handle, void *d)
{
	struct ipc h = { "qvfake", (int)getpid(), -1, 0 };

	ENTER();
	pthread_mutex_lock(&mu);
	for (struct alloc *a = allocs; a; a = a->next)
		if (a->p == d && a->fd >= 0)
			h.fd = a->fd, h.n = a->n;
	pthread_mutex_unlock(&mu);
	if (h.fd < 0)
		return INVALID_VALUE;
	memset(handle, 0, 64);
	memcpy(handle, &h, sizeof(h));
	return OK;
}

/* cudaIpcMemHandle_t: passed by value, as the real runtime takes it (on x86-64, in memory on
 * the stack: a caller that passes a pointer instead is read as garbage here, as there). */
struct handle64 {
	char reserved[64];
};

/* Another process's allocation, mapped here through its descriptor in /proc. */
cudaError_t cudaIpcOpenMemHandle(void **p, struct handle64 handle, unsigned flags)
{
	struct ipc h;
	char path[64];
	int fd;
	cudaError_t rc;

	(void)flags;
	ENTER();
	memcpy(&h, handle.reserved, sizeof(h));
	if (memcmp(h.magic, "qvfake", 7))
		return INVALID_VALUE;
	snprintf(path, sizeof(path), "/proc/%d/fd/%d", h.pid, h.fd);
	fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return INVALID_VALUE;
	rc = map_alloc(p, h.n, fd, 0);
	close(fd);
	return rc;
}

cudaError_t cudaIpcCloseMemHandle(void *p)
{
	ENTER();
	return drop_alloc(p); /* a mapped handle owns no memfd: its fd is -1 */
}

const char *cudaGetErrorString(cudaError_t e)
{
	return e == INIT_ERROR ? "initialization error" : e == INVALID_DEVICE ? "invalid device ordinal" :
	       e == NO_MEMORY ? "out of memory" : e ? "error" : "no error";
}
