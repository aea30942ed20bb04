/*
 * mkckpt.c - qvlmoefs-mkckpt: write a synthetic Qwen3-VL-MoE safetensors checkpoint with the
 * real key schema and shapes (mkckpt_qwen.c), deterministic tensor bytes and the writer quirks
 * the filesystem must survive (mkckpt_write.c), or the same tensors as a NeMo Automodel
 * per-rank save with --sharded-save (mkckpt_sharded.c). This file is the command line.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mkckpt.h"

#define DIM_MAX UINT32_MAX	/* products of two dimensions (q_proj rows) then fit in 64 bits */

/* Command-line options that map straight onto a field: name -> offset. */
struct field_opt {
	const char *opt;
	size_t off;
};

#define DIM(o, f) { o, offsetof(struct model, f) }
static const struct field_opt dim_opts[] = {
	DIM("layers", layers), DIM("hidden", hidden), DIM("experts", experts),
	DIM("moe-inter", moe_inter), DIM("vocab", vocab), DIM("heads", heads),
	DIM("kv-heads", kv_heads), DIM("head-dim", head_dim), DIM("vision-depth", vdepth),
	DIM("vision-hidden", vhidden), DIM("vision-inter", vinter), DIM("shards", shards),
};

#define FLAG(o, f) { o, offsetof(struct opts, f) }
static const struct field_opt flag_opts[] = {
	FLAG("no-prefix", no_prefix), FLAG("sparse", sparse), FLAG("unpadded", unpadded),
	FLAG("shuffle-keys", shuffle), FLAG("no-metadata", no_metadata),
	FLAG("scale-inv", scale_inv), FLAG("extra-state", extra_state), FLAG("no-index", no_index),
	FLAG("dense-split", dense_split), FLAG("empty-chunks", empty_chunks),
	FLAG("linear-experts", linear),
};

/* Print the one-line error and hand err back, so callers can "return fail(...)". */
int fail(const char *what, int err)
{
	fprintf(stderr, PROG ": %s: %s\n", what, strerror(-err));
	return err;
}

/* Report a usage error and exit: bad options leave nothing to clean up. */
void __attribute__((noreturn)) usage_error(const char *what, const char *why)
{
	fprintf(stderr, PROG ": %s: %s (see --help)\n", what, why);
	exit(1);
}

/* Create OUTDIR (one level, 0755) if missing and open it for the *at() calls. */
static int open_outdir(const char *path)
{
	int fd;

	if (mkdir(path, 0755) && errno != EEXIST)
		return -errno;
	fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	return fd < 0 ? -errno : fd;
}

static void usage(void)
{
	printf("usage: " PROG " [options] OUTDIR\n"
	       "Write a synthetic Qwen3-VL-MoE safetensors checkpoint (real key schema,\n"
	       "deterministic pseudo-random BF16 bytes) into OUTDIR.\n\n"
	       "    --preset tiny|30b-a3b|235b-a22b   dimensions (default tiny)\n"
	       "    --layers N --hidden H --experts E --moe-inter I --vocab V --heads N\n"
	       "    --kv-heads N --head-dim D --vision-depth N --vision-hidden N\n"
	       "    --vision-inter N --shards N       override one dimension of the preset\n"
	       "    --seed S                          tensor bytes seed (default 1)\n"
	       "    --naming hf|native                expert key names (default hf)\n"
	       "    --no-prefix                       drop the leading \"model.\" from keys\n"
	       "    --sparse                          data as holes: headers only on disk\n"
	       "    --unpadded                        header not padded to 8 bytes\n"
	       "    --shuffle-keys                    header keys shuffled, __metadata__ mid-object\n"
	       "    --no-metadata                     no __metadata__ in headers\n"
	       "    --data-order writer|name|reverse  tensor data order (default writer)\n"
	       "    --scale-inv                       add per-layer F32 *_scale_inv tensors\n"
	       "    --fp8 per-expert|fused            an FP8 release: F8_E4M3 linear weights with\n"
	       "                                      F32 128x128 block scales (*_scale_inv),\n"
	       "                                      experts one weight each or fused\n"
	       "    --linear-experts                  fused experts as transformers 5 saves them:\n"
	       "                                      [E, 2I, H] / [E, H, I] (not the Hub's)\n"
	       "    --extra-state                     add per-layer U8 _extra_state tensors\n"
	       "    --no-index                        no model.safetensors.index.json\n"
	       "    --sharded-save W                  a NeMo Automodel save by W ranks instead:\n"
	       "                                      shard-R-model-00001-of-00001.safetensors\n"
	       "                                      chunks, config files in .hf_metadata/\n"
	       "    --save-shard-size K               W/K expert-parallel groups x K: experts\n"
	       "                                      also cut on dim 1 (default 1)\n"
	       "    --dense-split                     cut dense tensors on dim 0 over all ranks\n"
	       "    --dense-dim D                     the dim --dense-split cuts (0 or 1, default 0)\n"
	       "    --empty-chunks                    --dense-split as FSDP2 does (ceil(n/W) per\n"
	       "                                      rank), empty trailing chunks written\n"
	       "    --sharded-drop-rank R             leave rank R's file out\n"
	       "    --arch qwen3vl|llama|moe|gptoss   model schema (default qwen3vl): Llama-style\n"
	       "                                      dense, per-expert MoE (experts.J.*), GPT-OSS\n"
	       "                                      stacked experts, all under model.layers.N\n"
	       "    -h, --help                        this text\n");
}

/* Decimal in [min, max] for option --opt, nothing around it; anything else is a usage error. */
static uint64_t parse_u64(const char *opt, const char *s, uint64_t min, uint64_t max)
{
	char what[32];
	char *end;
	unsigned long long v;

	errno = 0;
	v = strtoull(s, &end, 10);
	if (!*s || *s == '-' || *s == ' ' || *end || errno || v < min || v > max) {
		snprintf(what, sizeof(what), "--%s", opt);
		usage_error(what, "number out of range or malformed");
	}
	return v;
}

/* Index of arg in the NULL-terminated choices, or a usage error naming opt. */
static int parse_choice(const char *opt, const char *arg, const char *const *choices)
{
	for (int i = 0; choices[i]; i++)
		if (!strcmp(arg, choices[i]))
			return i;
	usage_error(opt, "unknown value");
}

enum { OPT_PRESET = 0x100, OPT_SEED, OPT_NAMING, OPT_ORDER, OPT_SAVE, OPT_SAVE_SHARD, OPT_DROP,
       OPT_ARCH, OPT_DENSE_DIM, OPT_FP8,
       OPT_FLAG = 0x200, OPT_DIM = 0x300 };
#define MAX_RANKS 99999		/* rank file names have five digits */

static const struct option fixed_opts[] = {
	{ "preset", required_argument, NULL, OPT_PRESET },
	{ "seed", required_argument, NULL, OPT_SEED },
	{ "naming", required_argument, NULL, OPT_NAMING },
	{ "data-order", required_argument, NULL, OPT_ORDER },
	{ "sharded-save", required_argument, NULL, OPT_SAVE },
	{ "save-shard-size", required_argument, NULL, OPT_SAVE_SHARD },
	{ "sharded-drop-rank", required_argument, NULL, OPT_DROP },
	{ "arch", required_argument, NULL, OPT_ARCH },
	{ "dense-dim", required_argument, NULL, OPT_DENSE_DIM },
	{ "fp8", required_argument, NULL, OPT_FP8 },
	{ "help", no_argument, NULL, 'h' },
};

/* Options to struct opts; the preset applies first, whatever the order on the command line. */
static void parse_args(int argc, char **argv, struct opts *o)
{
	static const char *const namings[] = { "hf", "native", NULL };
	static const char *const orders[] = { "writer", "name", "reverse", NULL };
	static const char *const archs[] = { "qwen3vl", "llama", "moe", "gptoss", NULL };
	static const char *const fp8s[] = { "none", "per-expert", "fused", NULL };
	struct option lo[ARRAY_SIZE(fixed_opts) + ARRAY_SIZE(flag_opts) + ARRAY_SIZE(dim_opts) + 1];
	struct option *l = lo;
	uint64_t dims[ARRAY_SIZE(dim_opts)];
	int have[ARRAY_SIZE(dim_opts)] = { 0 }, preset = 0, c;

	for (size_t i = 0; i < ARRAY_SIZE(fixed_opts); i++)
		*l++ = fixed_opts[i];
	for (size_t i = 0; i < ARRAY_SIZE(flag_opts); i++)
		*l++ = (struct option){ flag_opts[i].opt, no_argument, NULL, OPT_FLAG + (int)i };
	for (size_t i = 0; i < ARRAY_SIZE(dim_opts); i++)
		*l++ = (struct option){ dim_opts[i].opt, required_argument, NULL, OPT_DIM + (int)i };
	*l = (struct option){ 0 };
	o->seed = 1;
	o->save_shard = 1;
	o->drop_rank = NO_RANK;
	opterr = 0;	/* one error line, ours */
	while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
		if (c >= OPT_DIM) {
			dims[c - OPT_DIM] = parse_u64(dim_opts[c - OPT_DIM].opt, optarg, 1, DIM_MAX);
			have[c - OPT_DIM] = 1;
		} else if (c >= OPT_FLAG) {
			*(int *)((char *)o + flag_opts[c - OPT_FLAG].off) = 1;
		} else if (c == OPT_PRESET) {
			preset = parse_choice("--preset", optarg, preset_names);
		} else if (c == OPT_SEED) {
			o->seed = parse_u64("seed", optarg, 0, UINT64_MAX);
		} else if (c == OPT_NAMING) {
			o->native = parse_choice("--naming", optarg, namings);
		} else if (c == OPT_ORDER) {
			o->order = (enum data_order)parse_choice("--data-order", optarg, orders);
		} else if (c == OPT_SAVE) {
			o->save_ranks = parse_u64("sharded-save", optarg, 1, MAX_RANKS);
		} else if (c == OPT_SAVE_SHARD) {
			o->save_shard = parse_u64("save-shard-size", optarg, 1, MAX_RANKS);
		} else if (c == OPT_DROP) {
			o->drop_rank = parse_u64("sharded-drop-rank", optarg, 0, MAX_RANKS - 1);
		} else if (c == OPT_ARCH) {
			o->arch = (enum arch)parse_choice("--arch", optarg, archs);
		} else if (c == OPT_FP8) {
			o->fp8 = parse_choice("--fp8", optarg, fp8s);
		} else if (c == OPT_DENSE_DIM) {
			o->dense_dim = parse_u64("dense-dim", optarg, 0, 1);
		} else if (c == 'h') {
			usage();
			exit(0);
		} else {
			usage_error(argv[optind - 1], "unknown option or missing value");
		}
	}
	if (optind + 1 != argc)
		usage_error(optind < argc ? argv[argc - 1] : "OUTDIR", "expected one OUTDIR");
	o->outdir = argv[optind];
	o->m = presets[preset];
	for (size_t i = 0; i < ARRAY_SIZE(dim_opts); i++)
		if (have[i])
			*(uint64_t *)((char *)&o->m + dim_opts[i].off) = dims[i];
	check_model(&o->m);
	check_sharded(o);
}

int main(int argc, char **argv)
{
	struct opts o = { 0 };
	struct tlist tl = { 0 };
	uint64_t total = 0;
	int dirfd, err;

	parse_args(argc, argv, &o);
	err = build_tensors(&tl, &o);
	for (size_t i = 0; !err && i < tl.n; i++)
		if (__builtin_add_overflow(total, tl.v[i].nbytes, &total))
			err = -EOVERFLOW;
	if (!err && o.m.shards > tl.n)
		usage_error("--shards", "more shards than tensors");
	if (err)
		goto out_fail;
	assign_shards(&tl, o.m.shards, total);
	dirfd = open_outdir(o.outdir);
	if (dirfd < 0) {
		err = dirfd;
		goto out_fail;
	}
	if (o.save_ranks)
		err = write_sharded_save(dirfd, &tl, &o);
	else
		err = write_checkpoint(dirfd, &tl, total, &o);
	close(dirfd);
	if (err)
		goto out_free;
	printf("wrote %s: %zu tensors, %" PRIu64 " bytes in %" PRIu64 " %s\n", o.outdir, tl.n,
	       total, o.save_ranks ? o.save_ranks - (o.drop_rank != NO_RANK) : o.m.shards,
	       o.save_ranks ? "rank files" : "shards");
	free(tl.v);
	return 0;

out_fail:
	fail(o.outdir, err);
out_free:
	free(tl.v);
	return 1;
}
