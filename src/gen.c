/* gen.c - one generation of the source: scan, strict parse of every header, naming detection
 * and the plans of the view. A rescan (SIGHUP) loads a new one beside the old. */
#include "qv_gen.h"
#include "qv_perm.h"
#include "qv_cfg.h"
#include "qv_dcpcheck.h"
#include "qv_hdr.h"
#include "qv_plan.h"
#include "qv_quant.h"
#include "qv_util.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Open and strictly parse every *.safetensors source; the fd stays open for reads. */
static int parse_sources(struct qv_gen *m, char *err, size_t errlen)
{
	char why[QV_ERRLEN];

	for (size_t i = 0; i < m->scan.nn; i++) {
		const struct qv_snode *c = &m->scan.n[i];
		struct qv_source *s;
		struct stat st;
		int rc, fd;

		if (S_ISDIR(c->st.st_mode))
			continue;
		s = &m->src[m->nsrc];
		m->src_of[i] = (uint32_t)m->nsrc++;
		*s = (struct qv_source){ .rel = c->rel, .path = c->path, .dev = c->st.st_dev,
					 .ino = c->st.st_ino, .size = c->st.st_size,
					 .mtime = c->st.st_mtim, .uid = c->st.st_uid,
					 .gid = c->st.st_gid, .mode = c->vmode };
		atomic_init(&s->fd, -1);
		if (!qv_ends_with(c->name, ".safetensors"))
			continue;
		fd = qv_scan_open(c, &st, why, sizeof(why)); /* the scanned file, or an error */
		if (fd < 0)
			return qv_err(err, errlen, fd, "%s: %s", c->rel, why);
		atomic_store(&s->fd, fd);
		s->pinned = true;
		s->dev = st.st_dev, s->ino = st.st_ino, s->size = st.st_size, s->mtime = st.st_mtim;
		/* the file opened may have been chmod'ed since the scan: no more than both allow */
		s->uid = st.st_uid, s->gid = st.st_gid;
		s->mode = qv_perm_and(st.st_uid, st.st_gid, st.st_mode, c->st.st_uid, c->st.st_gid,
				      c->vmode);
		m->st_of[i] = calloc(1, sizeof(struct qv_st));
		if (!m->st_of[i])
			return qv_err(err, errlen, -ENOMEM, "%s: out of memory", c->rel);
		rc = qv_st_read_fd(fd, (uint64_t)st.st_size, m->st_of[i], why, sizeof(why));
		if (rc)
			return qv_err(err, errlen, rc, "%s: %s", c->rel, why);
	}
	return 0;
}

/* Naming, the {P} prefix and the expert count, from all keys of the checkpoint (DESIGN §1). */
/* Does the scan hold a safetensors file (a header was parsed)? */
static bool has_safetensors(const struct qv_gen *m)
{
	for (size_t i = 0; i < m->scan.nn; i++)
		if (m->st_of[i])
			return true;
	return false;
}

static void detect(struct qv_gen *m)
{
	for (size_t i = 0; i < m->scan.nn; i++) {
		const struct qv_st *st = m->st_of[i];

		for (size_t k = 0; st && k < st->nt; k++) {
			const char *key = st->t[k].name;

			m->model_prefix |= qv_starts_with(key, "model.");
			if (qv_plan_key_is_native(key))
				m->src_naming = QV_NAMING_NATIVE;
		}
	}
	for (size_t i = 0; i < m->scan.nn && !m->n_experts; i++) {
		const struct qv_st *st = m->st_of[i];

		for (size_t k = 0; st && k < st->nt && !m->n_experts; k++)
			if (st->t[k].ndim && qv_plan_expert_in(m->src_naming, st->t[k].name))
				m->n_experts = st->t[k].shape[0];
	}
}

/* The naming of the view: the user's, else (a sharded save shown consolidated in its own)
 * the other one than the source's. The adapter's rules (renames, dropped *_scale_inv) are
 * Qwen3-VL-MoE's: on another model they would drop its FP8 scales and rename nothing, so such
 * a source is shown as it is named (logged once at load). */
static enum qv_naming view_naming(const struct qv_gen *m, const struct qv_gen_opts *o)
{
	enum qv_naming v = o->view_set ? o->view : m->sharded ? m->src_naming : !m->src_naming;

	if (v == QV_NAMING_NATIVE && m->src_naming == QV_NAMING_HF && !m->qwen_experts &&
	    !m->quant.ng)
		v = QV_NAMING_HF;
	return v;
}

/* The source's fused expert layout as the user stated it (ASIS: not stated), and in *opt
 * (unless NULL) the option that states it: source_layout=, or, in the native view, whose own
 * layout is fixed (the Hub's, Automodel's), expert_layout=. */
static enum qv_layout stated_layout(const struct qv_gen *m, const struct qv_gen_opts *o,
				    const char **opt)
{
	bool native = view_naming(m, o) == QV_NAMING_NATIVE;

	if (opt)
		*opt = native && !o->source_layout ? "expert_layout" : "source_layout";
	if (o->source_layout)
		return o->source_layout;
	return native ? o->expert_layout : QV_LAYOUT_ASIS;
}

/* Plan options for folder or view number i: ranks (and shards) not fixed by the user are
 * enumerated, one folder each. */
static void plan_opts(const struct qv_gen *m, const struct qv_gen_opts *o, size_t i,
		      struct qv_plan_opts *po)
{
	enum qv_layout stated = stated_layout(m, o, NULL);
	uint32_t nshards = o->shard_size > 1 && !o->shard_rank_set ? o->shard_size : 1;

	*po = (struct qv_plan_opts){ .src = m->src_naming, .view = view_naming(m, o),
				     .model_prefix = m->model_prefix, .exclude = o->exclude,
				     .ep_size = o->ep_size, .shard_size = o->shard_size,
				     .generic_experts = m->generic ? m->n_experts : 0,
				     .hidden = m->hidden, .inter = m->inter,
				     .src_layout = stated ? stated : m->writer };
	bool native = po->view == QV_NAMING_NATIVE;

	/* Automodel's layout is the Hub's; an HF view keeps the source's unless told */
	po->view_layout = native ? QV_LAYOUT_HUB : o->expert_layout;
	/* Automodel trains BF16 from fused experts: its view computes both (DESIGN §14) */
	po->dequant = (native || o->dequant) && m->quant.fp8;
	po->stack = (native || o->expert_layout == QV_LAYOUT_HUB) && m->quant.ng;
	po->ep_rank = o->ep_rank_set ? o->ep_rank : (uint32_t)(i / nshards);
	po->shard_rank = nshards > 1 ? (uint32_t)(i % nshards) : o->shard_rank;
}

/* Any model but Qwen3-VL-MoE: stacked expert tensors are the ones named ".mlp.experts.X"
 * whose dim 0 is the expert count the config states (GPT-OSS: model.layers.N.mlp.experts.
 * gate_up_proj). Sets n_experts and generic when one is found. */
static void generic_experts(struct qv_gen *m)
{
	uint64_t e = m->cfg.experts.v;

	for (size_t i = 0; e && m->sharded && i < m->dcp.nt && !m->generic; i++)
		m->generic = m->dcp.t[i].ndim >= 2 && m->dcp.t[i].shape[0] == e &&
			     qv_plan_generic_name(m->dcp.t[i].name);
	for (size_t i = 0; e && !m->sharded && i < m->scan.nn && !m->generic; i++)
		for (size_t k = 0; m->st_of[i] && k < m->st_of[i]->nt && !m->generic; k++)
			m->generic = m->st_of[i]->t[k].ndim >= 2 && m->st_of[i]->t[k].shape[0] == e &&
				     qv_plan_generic_name(m->st_of[i]->t[k].name);
	if (m->generic)
		m->n_experts = e;
}

/* Per-expert keys (...mlp.experts.J...) are whole experts, one tensor each: slicing would pick
 * files' keys, not cut tensors. The first such key, or NULL. */
static const char *per_expert_key(const struct qv_gen *m)
{
	for (size_t i = 0; m->sharded && i < m->dcp.nt; i++)
		if (strstr(m->dcp.t[i].name, ".mlp.experts.") && !qv_plan_generic_name(m->dcp.t[i].name))
			return m->dcp.t[i].name;
	for (size_t i = 0; !m->sharded && i < m->scan.nn; i++)
		for (size_t k = 0; m->st_of[i] && k < m->st_of[i]->nt; k++)
			if (strstr(m->st_of[i]->t[k].name, ".mlp.experts.") &&
			    !qv_plan_generic_name(m->st_of[i]->t[k].name))
				return m->st_of[i]->t[k].name;
	return NULL;
}

int qv_gen_each_tensor(const struct qv_gen *m,
		       int (*fn)(void *arg, const struct qv_tensor *t, uint32_t si), void *arg)
{
	int rc = 0;

	for (size_t i = 0; !rc && m->sharded && i < m->dcp.nt; i++) {
		const struct qv_dtensor *x = &m->dcp.t[i];
		struct qv_tensor t = { .name = x->name, .dtype = x->dtype, .ndim = x->ndim };

		memcpy(t.shape, x->shape, sizeof(t.shape));
		rc = fn(arg, &t, 0);
	}
	for (uint32_t i = 0; !rc && i < m->scan.nn; i++) {
		const struct qv_st *st = m->sharded && qv_dcp_is_rank_file(m->scan.n[i].name) ?
						 NULL : m->st_of[i];

		for (size_t k = 0; !rc && st && k < st->nt; k++)
			rc = fn(arg, &st->t[k], i);
	}
	return rc;
}

/* What the layout pass gathers and checks (DESIGN §14). */
struct lay {
	const struct qv_gen *m;
	struct qv_plan_opts po; /* H, I; src_layout and view_layout as the plans will have them */
	const char *opt;	/* the option that states the source's layout (stated_layout) */
	bool hub, lin;
	const struct qv_tensor *gate_up, *down; /* a 3-dimensional one of each, for H and I */
	char *err;
	size_t errlen;
};

/* "FILE: " of scan node si in a message, "" for a consolidated tensor (si 0). */
static const char *lay_rel(const struct lay *l, uint32_t si, const char **sep)
{
	*sep = si ? ": " : "";
	return si ? l->m->scan.n[si].rel : "";
}

static const char *const lay_name[] = { "as stored", "hub", "linear" };

static int lay_pick(void *arg, const struct qv_tensor *t, uint32_t si)
{
	struct lay *l = arg;

	(void)si;
	if (t->ndim != 3 || !qv_plan_key_is_expert(t->name))
		return 0;
	if (qv_ends_with(t->name, "down_proj") || qv_ends_with(t->name, "down_projs"))
		l->down = l->down ? l->down : t;
	else
		l->gate_up = l->gate_up ? l->gate_up : t;
	return 0;
}

static int lay_told(void *arg, const struct qv_tensor *t, uint32_t si)
{
	struct lay *l = arg;
	enum qv_layout told = qv_plan_layout_told(&l->po, t);
	const char *sep, *rel = lay_rel(l, si, &sep);

	l->hub |= told == QV_LAYOUT_HUB;
	l->lin |= told == QV_LAYOUT_LINEAR;
	if (told && l->po.src_layout && told != l->po.src_layout)
		return qv_err(l->err, l->errlen, -EINVAL,
			      "%s%s\"%s\" is in the %s layout by its shape [%llu, %llu, %llu] "
			      "(H %llu, I %llu), not %s=%s", rel, sep, t->name, lay_name[told],
			      (unsigned long long)t->shape[0], (unsigned long long)t->shape[1],
			      (unsigned long long)t->shape[2], (unsigned long long)l->po.hidden,
			      (unsigned long long)l->po.inter, l->opt, lay_name[l->po.src_layout]);
	return 0;
}

static int lay_check(void *arg, const struct qv_tensor *t, uint32_t si)
{
	struct lay *l = arg;
	const char *sep, *rel = lay_rel(l, si, &sep);
	bool hub, lin;

	qv_plan_layout_fits(&l->po, t, &hub, &lin);
	if (hub && lin && !l->po.src_layout && l->po.view_layout)
		return qv_err(l->err, l->errlen, -EINVAL,
			      "%s%s\"%s\" [%llu, %llu, %llu] fits both expert layouts (H %llu, I "
			      "%llu) and no other expert tensor tells which it is: state it with "
			      "-o %s=hub|linear", rel, sep, t->name, (unsigned long long)t->shape[0],
			      (unsigned long long)t->shape[1], (unsigned long long)t->shape[2],
			      (unsigned long long)l->po.hidden, (unsigned long long)l->po.inter,
			      l->opt);
	return 0;
}

/* H and I (the config's, else a layer's two expert tensors': [E, H, 2I] with [E, I, H], or
 * [E, 2I, H] with [E, H, I]), the writer's layout, and the checks: a stated layout the shapes
 * contradict, and a shape that cannot tell where the view needs to know, are refused. */
static int layouts(struct qv_gen *m, const struct qv_gen_opts *o, char *err, size_t errlen)
{
	struct lay l = { .m = m, .err = err, .errlen = errlen };
	struct qv_plan_opts po;
	enum qv_layout stated = stated_layout(m, o, &l.opt);
	int rc;

	m->hidden = m->cfg.hidden.v;
	m->inter = m->cfg.moe_inter.v;
	if (!m->hidden || !m->inter) {
		qv_gen_each_tensor(m, lay_pick, &l);
		if (l.gate_up && l.down) {
			const uint64_t *g = l.gate_up->shape, *d = l.down->shape;
			bool hub = g[1] == d[2] && g[2] == 2 * d[1], lin = g[2] == d[1] && g[1] == 2 * d[2];

			if (hub != lin)
				m->hidden = hub ? g[1] : g[2], m->inter = hub ? d[1] : d[2];
		}
	}
	if (o->source_layout && o->expert_layout && o->expert_layout != o->source_layout &&
	    view_naming(m, o) == QV_NAMING_NATIVE)
		return qv_err(err, errlen, -EINVAL, "expert_layout=%s and source_layout=%s: in the "
			      "native view both state the source's layout, and they disagree",
			      lay_name[o->expert_layout], lay_name[stated]);
	l.po = (struct qv_plan_opts){ .hidden = m->hidden, .inter = m->inter,
				      .src_layout = stated };
	rc = qv_gen_each_tensor(m, lay_told, &l);
	if (rc)
		return rc;
	m->writer = l.hub && !l.lin ? QV_LAYOUT_HUB : l.lin && !l.hub ? QV_LAYOUT_LINEAR :
									 QV_LAYOUT_ASIS;
	plan_opts(m, o, 0, &po);
	l.po = po;
	return qv_gen_each_tensor(m, lay_check, &l);
}

/* What the views of plan options po need of the quantized weights and per-expert keys: a
 * form no view computes, experts that cannot be stacked, FP8 experts stacked but not
 * dequantized, are refused here, naming what was found. */
static int quant_check(const struct qv_gen *m, const struct qv_gen_opts *o,
		       const struct qv_plan_opts *po, char *err, size_t errlen)
{
	const struct qv_quant *q = &m->quant;
	bool native = po->view == QV_NAMING_NATIVE, fp8_groups = false;

	for (size_t i = 0; i < q->ng; i++)
		fp8_groups |= q->g[i].fp8;
	if ((native || o->dequant) && q->problem[0])
		return qv_err(err, errlen, -EINVAL, "%s (the %s view needs it computed)",
			      q->problem, native ? "native" : "dequant=bf16");
	if (po->stack && q->stack_problem[0])
		return qv_err(err, errlen, -EINVAL, "%s", q->stack_problem);
	if (!native && o->expert_layout == QV_LAYOUT_LINEAR && q->ng)
		return qv_err(err, errlen, -EINVAL, "expert_layout=linear: per-expert weights are "
			      "stacked into the Hub's layout only (expert_layout=hub)");
	if (po->stack && fp8_groups && !po->dequant)
		return qv_err(err, errlen, -EINVAL, "expert_layout=hub: the per-expert weights are "
			      "FP8; stacking them needs dequant=bf16 too");
	if (o->dequant && !q->fp8)
		qv_log("dequant=bf16: no FP8 weight with block scales here: nothing to dequantize");
	return 0;
}

/* Every file an index names is in its folder: a checkpoint missing a shard is refused here,
 * by name, before anything else is concluded from the tensors it lacks (no experts, say).
 * The view checks the keys too, when it builds the index (view.c). 0 or -EINVAL/-ENOMEM. */
static int shards_present(const struct qv_gen *m, const char *src, char *err, size_t errlen)
{
	int rc = 0;

	for (uint32_t i = 0; i < m->scan.nn && !rc; i++) {
		const struct qv_snode *c = &m->scan.n[i];
		const char *dir = m->scan.n[c->parent].rel;
		struct qv_buf text = { 0 };
		char **files = NULL, why[QV_ERRLEN] = "";
		size_t nfiles = 0;

		if (S_ISDIR(c->st.st_mode) || !qv_ends_with(c->name, ".safetensors.index.json") ||
		    (m->sharded && c->parent == 0))
			continue;
		/* an unreadable or malformed index is the view's to refuse, with its reason */
		if (qv_scan_read(c, 64u << 20, &text, why, sizeof(why)) == 0 &&
		    qv_hdr_index_files(text.p, text.len, &files, &nfiles, why, sizeof(why)) == 0)
			for (size_t f = 0; f < nfiles && !rc; f++) {
				char *rel;

				if (asprintf(&rel, "%s%s%s", dir, dir[0] ? "/" : "", files[f]) < 0)
					rc = qv_err(err, errlen, -ENOMEM, "out of memory");
				else if (!qv_scan_find(&m->scan, rel))
					rc = qv_err(err, errlen, -EINVAL, "%s: %s names %s, which is not "
						    "in the folder (a missing shard?)", src, c->rel,
						    files[f]);
				free(rel);
			}
		for (size_t f = 0; f < nfiles; f++)
			free(files[f]);
		free(files);
		qv_buf_free(&text);
	}
	return rc;
}

/* Tests only (-o scan_pause_ms via QVLMOEFS_TEST_FAULTS): a file swapped now lands between
 * the scan and the opens that follow it, deterministically. */
static void test_pause(unsigned ms)
{
	struct timespec ts = { (time_t)(ms / 1000), (long)(ms % 1000) * 1000000L };

	qv_log("test: scan done, pausing %u ms", ms);
	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

bool qv_gen_multi(const struct qv_gen_opts *o)
{
	return o->ep_size && (!o->ep_rank_set || (o->shard_size > 1 && !o->shard_rank_set));
}

int qv_gen_load(struct qv_gen *m, const char *src, const struct qv_gen_opts *o, char *err,
		size_t errlen)
{
	struct qv_plan_opts po;
	int rc;

	memset(m, 0, sizeof(*m));
	rc = qv_scan_tree(src, &m->scan, err, errlen);
	if (rc)
		return rc;
	if (o->scan_pause_ms)
		test_pause(o->scan_pause_ms);
	m->src = calloc(m->scan.nn, sizeof(*m->src));
	m->src_of = malloc(m->scan.nn * sizeof(*m->src_of));
	m->st_of = calloc(m->scan.nn, sizeof(*m->st_of));
	if (!m->src || !m->src_of || !m->st_of)
		return qv_err(err, errlen, -ENOMEM, "out of memory");
	memset(m->src_of, 0xff, m->scan.nn * sizeof(*m->src_of));
	rc = parse_sources(m, err, errlen);
	if (rc)
		return rc;
	if (!o->allow_empty && !has_safetensors(m))
		return qv_err(err, errlen, -ENOENT,
			      "%s: no *.safetensors file (an empty folder, or not the checkpoint?): "
			      "pass -o allow_empty to mount it anyway", src);
	detect(m);
	m->qwen_experts = m->n_experts != 0;
	/* a sharded save keeps its config in .hf_metadata/, a checkpoint at its root */
	m->sharded = qv_dcp_detect(&m->scan, m->st_of);
	rc = shards_present(m, src, err, errlen);
	if (rc)
		return rc;
	qv_cfg_load(&m->scan, m->sharded ? ".hf_metadata/config.json" : "config.json", &m->cfg);
	if (m->sharded) {
		rc = qv_dcp_build(&m->scan, m->st_of, m->src_of, o->max_file ? o->max_file : 5000000000ULL,
				  &m->dcp, err, errlen);
		if (rc)
			return rc;
		rc = qv_dcpcheck(&m->dcp, &m->scan, &m->cfg, err, errlen);
		if (rc)
			return rc;
		/* the rank files' own tensor lists are not needed past this point (the chunks know
		 * where their bytes are): give back what can be tens of MB for a large save */
		for (size_t i = 0; i < m->scan.nn; i++)
			if (m->st_of[i] && qv_dcp_is_rank_file(m->scan.n[i].name)) {
				qv_st_free(m->st_of[i]);
				m->st_of[i]->nt = 0;
			}
		/* chunks hold a rank's experts: the count comes from the consolidated shape */
		m->n_experts = 0;
		for (size_t i = 0; i < m->dcp.nt && !m->n_experts; i++)
			if (qv_plan_key_is_expert(m->dcp.t[i].name) && m->dcp.t[i].ndim)
				m->n_experts = m->dcp.t[i].shape[0];
		m->qwen_experts = m->n_experts != 0;
	}
	if (!m->sharded) { /* the rank files of a sharded save hold chunks, not weights */
		rc = qv_quant_load(&m->quant, &m->scan, m->st_of, &m->cfg);
		if (rc)
			return qv_err(err, errlen, rc, "out of memory");
	}
	plan_opts(m, o, 0, &po);
	if (!m->n_experts && po.stack) { /* per-expert weights, stacked: E of them */
		m->n_experts = m->quant.g[0].E;
		m->qwen_experts = true;
	}
	if (!m->qwen_experts)
		generic_experts(m);
	rc = quant_check(m, o, &po, err, errlen);
	if (rc)
		return rc;
	if (o->ep_size && !m->n_experts && per_expert_key(m))
		return qv_err(err, errlen, -EINVAL,
			      "%s: ep_size given, but the experts are saved one tensor per expert "
			      "(\"%s\"): slicing cuts stacked expert tensors [experts, ...] on dim 0, "
			      "and per-expert keys have no dim to cut",
			      src, per_expert_key(m));
	if (o->ep_size && !m->n_experts)
		return qv_err(err, errlen, -EINVAL,
			      "%s: ep_size given but no expert tensors found (Qwen3-VL-MoE's "
			      "language_model.layers.N.mlp.experts.{gate_up_proj,down_proj}, or "
			      "\".mlp.experts.\" tensors whose dim 0 is %s's expert count%s)",
			      src, m->cfg.rel, m->cfg.experts.v ? "" : ", which it does not state");
	if ((o->view_set ? o->view == QV_NAMING_NATIVE : !m->sharded) &&
	    m->src_naming == QV_NAMING_HF && !m->qwen_experts && !m->quant.ng)
		qv_log("view=native%s: %s is not a Qwen3-VL-MoE checkpoint (no language_model.layers.N"
		       ".mlp.experts.{gate_up_proj,down_proj}): there is nothing to rename, the view "
		       "keeps the source's names and tensors", o->view_set ? "" : " (the default)",
		       src);
	rc = layouts(m, o, err, errlen);
	if (rc)
		return rc;
	rc = qv_plan_count(o->ep_size, !o->ep_rank_set, o->shard_size, !o->shard_rank_set,
			   &m->nplans, err, errlen);
	if (rc)
		return rc;
	m->plans = calloc(m->nplans, sizeof(*m->plans));
	if (!m->plans)
		return qv_err(err, errlen, -ENOMEM, "out of memory");
	for (size_t i = 0; i < m->nplans; i++) {
		plan_opts(m, o, i, &po);
		rc = qv_plan_init(&m->plans[i], &po, err, errlen);
		if (rc)
			return rc;
	}
	/* more ranks than experts is refused when the view is built: no warning before that */
	if (o->ep_size && o->ep_size <= m->n_experts && m->n_experts % o->ep_size)
		qv_log("%llu experts do not divide by ep_size=%u: the first %llu ranks hold one more",
		       (unsigned long long)m->n_experts, o->ep_size,
		       (unsigned long long)(m->n_experts % o->ep_size));
	return 0;
}

void qv_gen_free(struct qv_gen *m)
{
	for (size_t i = 0; i < m->nsrc; i++)
		if (atomic_load(&m->src[i].fd) >= 0)
			close(atomic_load(&m->src[i].fd));
	for (size_t i = 0; m->st_of && i < m->scan.nn; i++) {
		if (m->st_of[i])
			qv_st_free(m->st_of[i]);
		free(m->st_of[i]);
	}
	free(m->st_of);
	free(m->src_of);
	free(m->src);
	for (size_t i = 0; m->plans && i < m->nplans; i++)
		qv_plan_free(&m->plans[i]);
	free(m->plans);
	free(m->shared);
	qv_scan_free(&m->scan);
	qv_dcp_free(&m->dcp);
	qv_quant_free(&m->quant);
	memset(m, 0, sizeof(*m));
}
