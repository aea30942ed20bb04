/* qv_inspect.h - seeing inside a view without writing code: the hidden .qvlmoefs/ folder of
 * every view root (stats, view.json, headers/, tensors/) and the user.qvlmoefs.* xattrs.
 * FUSE-free. */
#ifndef QV_INSPECT_H
#define QV_INSPECT_H

#include "qv_gen.h"
#include "qv_mount.h"
#include "qv_plan.h"
#include "qv_util.h"

#ifndef QV_VERSION
#define QV_VERSION "0.1.0"
/* `qvlmoefs inspect ...` (argv[0] = "inspect"): the exit status. */
int qv_inspect_main(int argc, char **argv);

#endif

/* Make dir's .qvlmoefs/ folder, filled on first use; 0 or -errno (err). */
int qv_inspect_folder(struct qv_mount *m, struct qv_gen *g, const struct qv_plan *p,
		      struct qv_node *dir, char *err, size_t errlen);

/* Fill .qvlmoefs/ folder h: stats and view.json, and for a view (a plan) headers/<file>.json
 * and tensors/<key> for every virtual safetensors file of its parent. Caller holds m->lock. */
int qv_inspect_fill(struct qv_mount *m, struct qv_node *h, char *err, size_t errlen);

/* The value of xattr name of node n into out; 0, -ENODATA or -ENOMEM. */
int qv_inspect_xattr(struct qv_mount *m, const struct qv_node *n, const char *name,
		     struct qv_buf *out);

/* The names of n's xattrs, each NUL-terminated, into out; 0 or -ENOMEM. */
int qv_inspect_xattr_names(const struct qv_node *n, struct qv_buf *out);

/* `qvlmoefs inspect ...` (argv[0] = "inspect"): the exit status. */
int qv_inspect_main(int argc, char **argv);

#endif
