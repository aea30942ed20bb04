/* qv_view.h - building a view: the virtual files of one naming/slicing plan over the scanned
 * source. FUSE-free. */
#ifndef QV_VIEW_H
#define QV_VIEW_H

#include <stddef.h>
#include <stdint.h>

#include "qv_gen.h"
#include "qv_hdr.h"
#include "qv_plan.h"
#include "qv_st.h"
#include "qv_tree.h"
#include "qv_vfile.h"

/* The view keys of one virtual safetensors file, kept until its folder's index is made. */
struct qv_fkeys {
	const char *file;
	const char *src; /* the source file whose index entries it takes (NULL: file itself) */
	const struct qv_node *node; /* its node, whose permissions its index must not exceed */
	char **keys;
	size_t n;
	uint64_t total; /* bytes of its tensors */
};

/* Which tensors of a source a virtual file holds: all, or (-o ep_shared) those every rank
 * sees alike, or the rank's expert slices. Which is which is the plan's expert rule. */
enum qv_part { QV_PART_ALL, QV_PART_DENSE, QV_PART_EXPERTS };

/* Build the virtual file of part of safetensors source file si of generation g under plan p
 * into vf (zeroed), its keys into fk (file left to the caller); 0 or -errno with one line in
 * err. Every extent lies inside a source's data section. */
int qv_view_file(const struct qv_gen *g, const struct qv_plan *p, uint32_t si, enum qv_part part,
		 struct qv_vfile *vf, struct qv_fkeys *fk, char *err, size_t errlen);

/* -o ep_shared: build, outside any folder, one node per file of generation g whose bytes are
 * the same in every rank folder (pass-through files, the dense part of each safetensors file,
 * under plan p), listed later by each of the nlink rank folders; their inodes into g->shared.
 * 0 or -errno with one line in err. */
int qv_view_shared(struct qv_tree *t, struct qv_gen *g, const struct qv_plan *p,
		   struct qv_node *top, uint32_t nlink, char *err, size_t errlen);

/* Record in vf every source computed tensor c's operations read (for staleness checks and
 * permissions); 0 or -ENOMEM. */
int qv_view_comp_srcs(struct qv_vfile *vf, const struct qv_comp *c);

/* Free the keys of fk. */
void qv_fkeys_fini(struct qv_fkeys *fk);

/* Build into tree t the view of scan folder sdir of generation g under folder node dn with plan
 * p (recursively); 0 or -errno with one line in err naming the file or tensor and the reason.
 * The rank files of a sharded save are left out: qv_view_dcp shows them consolidated. */
int qv_view_build(struct qv_tree *t, struct qv_gen *g, const struct qv_plan *p, uint32_t sdir,
		  struct qv_node *dn, char *err, size_t errlen);

/* The __metadata__ entries that say which slice a rank's shard holds (buf backs them);
 * their count, 0 without slicing. */
size_t qv_view_ep_meta(uint64_t n_experts, const struct qv_plan *p, struct qv_meta *x,
		       char buf[6][24]);

/* A key that occurs twice among keys, or NULL: two tensors may not share a view key. */
const char *qv_view_dup_key(char **keys, size_t n);

/* Make node n a generated index of entries w (view keys must be unique across files) over
 * source index text src; 0 or -errno with the reason in why. */
int qv_view_index(struct qv_node *n, const char *src, size_t len, struct qv_wentry *w, size_t nw,
		  uint64_t total, char *why, size_t wl);

/* Give file node n the permissions of the sources it reads: the most restrictive of them (see
 * qv_tree_perm_and); a file that reads none keeps those it was made with. */
void qv_view_perm_of_sources(struct qv_node *n);

/* Narrow n's permissions to those of node of (an index to those of the files it names). */
void qv_view_perm_and_node(struct qv_node *n, const struct qv_node *of);

/* Make node n pass scan node si's file through byte for byte; 0 or -ENOMEM. */
int qv_view_passthrough(struct qv_gen *g, uint32_t si, struct qv_node *n);

/* Check that each of plans p[0..np) (one naming, slices of their own) can cut every expert
 * tensor of the source, without building anything; 0 or -EINVAL naming the tensor. */
int qv_view_validate(struct qv_gen *g, const struct qv_plan *p, size_t np, char *err,
		     size_t errlen);

#endif
