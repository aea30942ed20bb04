/* gen.c - one generation of the source: scan, strict parse of every header, naming detection
 * and the plans of the view. A rescan (SIGHUP) loads a new one beside the old. */
#include "qv_gen.h"
#include "qv_plan.h"
#include "qv_util.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
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
					 .gid = c->st.st_gid, .mode = c->st.st_mode };
		atomic_init(&s->fd, -1);
		if (!qv_ends_with(c->name, ".safetensors"))
			continue;
		fd = qv_scan_open(c, &st, why, sizeof(why)); /* the scanned file, or an error */
		if (fd < 0)
			return qv_err(err, errlen, fd, "%s: %s", c->rel, why);
		atomic_store(&s->fd, fd);
		s->pinned = true;
		s->dev = st.st_dev, s->ino = st.st_ino, s->size = st.st_size, s->mtime = st.st_mtim;
		s->uid = st.st_uid, s->gid = st.st_gid, s->mode = st.st_mode;
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

/* Plan options for folder or view number i: ranks (and shards) not fixed by the user are
 * enumerated, one folder each. */
static void plan_opts(const struct qv_gen *m, const struct qv_mount_opts *o, size_t i,
		      struct qv_plan_opts *po)
{
	uint32_t nshards = o->shard_size > 1 && !o->shard_rank_set ? o->shard_size : 1;

	*po = (struct qv_plan_opts){ .src = m->src_naming,
				     /* a sharded save is shown consolidated, in its own naming */
				     .view = o->view_set ? o->view :
					     m->sharded ? m->src_naming : !m->src_naming,
				     .model_prefix = m->model_prefix, .exclude = o->exclude,
				     .ep_size = o->ep_size, .shard_size = o->shard_size };
	po->ep_rank = o->ep_rank_set ? o->ep_rank : (uint32_t)(i / nshards);
	po->shard_rank = nshards > 1 ? (uint32_t)(i % nshards) : o->shard_rank;
}

/* num_experts of .hf_metadata/config.json (top level or text_config), or 0. */
/* The expert count a config states, at its top level or in text_config, under any of the
 * names writers use: transformers 5 writes Qwen3-VL-MoE's as num_local_experts. 0: none. */
static uint64_t config_experts(const struct qv_gen *m)
{
	static const char *const names[] = { "num_experts", "num_local_experts", "n_routed_experts" };
	uint32_t node = qv_scan_find(&m->scan, ".hf_metadata/config.json");
	struct qv_buf b = { 0 };
	cJSON *j = NULL, *e = NULL, *where[2];
	uint64_t n;

	if (node && !S_ISDIR(m->scan.n[node].st.st_mode) &&
	    qv_scan_read(&m->scan.n[node], 16u << 20, &b, NULL, 0) == 0 && b.p)
		j = cJSON_ParseWithLength(b.p, b.len);
	where[0] = j;
	where[1] = cJSON_GetObjectItemCaseSensitive(j, "text_config");
	for (size_t w = 0; w < 2 && !e; w++)
		for (size_t k = 0; k < sizeof(names) / sizeof(names[0]) && !e; k++)
			e = cJSON_GetObjectItemCaseSensitive(where[w], names[k]);
	n = cJSON_IsNumber(e) && e->valuedouble > 0 ? (uint64_t)e->valuedouble : 0;
	cJSON_Delete(j);
	qv_buf_free(&b);
	return n;
}

/* Chunks alone cannot show that the last ranks' files are missing (the tensor just looks
 * smaller): the expert count config.json states must match the assembled expert tensors. */
static int check_experts(const struct qv_gen *m, char *err, size_t errlen)
{
	uint64_t want = config_experts(m);

	for (size_t i = 0; want && i < m->dcp.nt; i++) {
		const struct qv_dtensor *x = &m->dcp.t[i];

		if (qv_plan_key_is_expert(x->name) && x->ndim && x->shape[0] != want)
			return qv_err(err, errlen, -EINVAL,
				      "tensor \"%s\": chunks cover experts [0, %llu) of the %llu that "
				      ".hf_metadata/config.json names: a rank file may be missing",
				      x->name, (unsigned long long)x->shape[0],
				      (unsigned long long)want);
	}
	return 0;
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

bool qv_gen_multi(const struct qv_mount_opts *o)
{
	return o->ep_size && (!o->ep_rank_set || (o->shard_size > 1 && !o->shard_rank_set));
}

int qv_gen_load(struct qv_gen *m, const char *src, const struct qv_mount_opts *o, char *err,
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
	if (qv_dcp_detect(&m->scan, m->st_of)) {
		rc = qv_dcp_build(&m->scan, m->st_of, m->src_of, o->max_file ? o->max_file : 5000000000ULL,
				  &m->dcp, err, errlen);
		if (rc)
			return rc;
		m->sharded = true;
		rc = check_experts(m, err, errlen);
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
	}
	if (o->ep_size && !m->n_experts)
		return qv_err(err, errlen, -EINVAL, "%s: ep_size given but no expert tensors found",
			      src);
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
	memset(m, 0, sizeof(*m));
}
