/* gpu_stub.c - GPU staging for builds without CUDA headers: every request fails at once. */
#include "qv_gpu.h"
#include "qv_util.h"

#include <errno.h>

const char *qv_gpu_build(void)
{
	return "not built";
}

int qv_gpu_open(int device, struct qv_gpu_ops *ops, char *err, size_t errlen)
{
	(void)device, (void)ops;
	return qv_err(err, errlen, -ENOSYS,
		      "GPU staging is not built in (no CUDA runtime headers at build time)");
}
