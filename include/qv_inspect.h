/* qv_inspect.h - seeing inside a view without writing code: the hidden .qvlmoefs/ folder of
 * every view root (stats, view.json, headers/, tensors/) and the per-file user.qvlmoefs.*
 * xattrs. It builds into the tree it is handed, from the view already there. FUSE-free. */
#ifndef QV_INSPECT_H
#define QV_INSPECT_H

#include "qv_gen.h"
#include "qv_io.h"
#include "qv_plan.h"
#include "qv_tree.h"
#include "qv_util.h"

#define QV_HIDDEN ".qvlmoefs"

/* Files of .qvlmoefs/ whose bytes are made when opened (node->dyn). */
enum { QV_DYN_STATS = 1, QV_DYN_GPU = 2 };

/* A tensor of a view, as .qvlmoefs/tensors/<key> and `inspect --keys` describe it; one
 * allocation with its strings (the tree frees it with its node). */
struct qv_tinfo {
	char *file;		   /* its virtual safetensors file, relative to the view root */
	char *dtype;		   /* e.g. "BF16" */
	char *shape;		   /* e.g. "[16,2048,1536]" */
	const struct qv_vfile *in; /* the virtual file, for the source of its extents */
};

/* Make dir's .qvlmoefs/ folder in tree t, filled on first use; 0 or -errno (err). */
int qv_inspect_folder(struct qv_tree *t, struct qv_gen *g, const struct qv_plan *p,
		      struct qv_node *dir, char *err, size_t errlen);

/* Fill .qvlmoefs/ folder h of tree t: stats, view.json (generation options o, the reading
 * backend io) and gpu.json when gpu (a GPU stage runs), and for a view (a plan)
 * headers/<file>.json and tensors/<key> for every virtual safetensors file of its parent. The
 * caller serializes growth of t. */
int qv_inspect_fill(struct qv_tree *t, const struct qv_gen_opts *o, enum qv_io_backend io,
		    bool gpu, struct qv_node *h, char *err, size_t errlen);

/* The value of a per-file xattr name of node n into out; 0, -ENODATA or -ENOMEM. */
int qv_inspect_xattr(const struct qv_node *n, const char *name, struct qv_buf *out);

/* The names of n's per-file xattrs, each NUL-terminated, into out; 0 or -ENOMEM. */
int qv_inspect_xattr_names(const struct qv_node *n, struct qv_buf *out);

#endif
