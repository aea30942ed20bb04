/* loop.c - the FUSE request loop, shared by the daemon and the null filesystem `make bench`
 * measures it against, so that both run the very same worker setup. */
#include <errno.h>
#include <limits.h>
#include <signal.h>

#include "qv_loop.h"

int qv_loop_run(struct fuse_session *se, const struct fuse_cmdline_opts *o)
{
	struct fuse_loop_config *lcfg;
	int ret;

	if (o->singlethread) {
		ret = fuse_session_loop(se);
	} else {
		lcfg = fuse_loop_cfg_create();
		if (!lcfg)
			return -ENOMEM;
		fuse_loop_cfg_set_clone_fd(lcfg, o->clone_fd);
		/* keep idle workers (and their rings) alive instead of recreating them;
		 * UINT_MAX means the user gave no max_idle_threads */
		fuse_loop_cfg_set_idle_threads(lcfg, o->max_idle_threads == UINT_MAX ?
							     16 : o->max_idle_threads);
		fuse_loop_cfg_set_max_threads(lcfg, o->max_threads);
		ret = fuse_session_loop_mt(se, lcfg);
		fuse_loop_cfg_destroy(lcfg);
	}
	/* the loop returns the signal that ended it: SIGTERM/SIGINT are a clean shutdown */
	if (ret == 0 || ret == SIGTERM || ret == SIGINT)
		return 0;
	return ret < 0 ? ret : -EINTR;
}
