/* stress.c - many threads read views with read(), pread() at random offsets and mmap, and
 * check every byte against reference copies (made from views that tests/check_view.py
 * verified against the source). Prints one summary line; exits 1 on any mismatch, error or a
 * single operation stalling longer than 5 s.
 *
 *   stress SECONDS THREADS VIEWDIR:REFDIR...
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_FILES 4096
#define STALL_LIMIT 5.0

struct file {
	char *view;
	const unsigned char *ref; /* the reference copy, mapped */
	size_t size;
};

struct shared {
	struct file f[MAX_FILES];
	int n;
	double deadline;
	atomic_uint_least64_t ops, bytes, mismatches, errors;
	_Atomic double max_stall;
};

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t rnd(uint64_t *s)
{
	*s ^= *s << 13, *s ^= *s >> 7, *s ^= *s << 17;
	return *s;
}

static int add_pair(struct shared *sh, const char *view, const char *ref)
{
	DIR *d = opendir(ref);
	struct dirent *e;

	if (!d)
		return fprintf(stderr, "stress: %s: %s\n", ref, strerror(errno)), -1;
	while ((e = readdir(d)) && sh->n < MAX_FILES) {
		char rp[4096], vp[4096];
		struct stat st;
		int fd;
		void *p;

		snprintf(rp, sizeof(rp), "%s/%s", ref, e->d_name);
		if (stat(rp, &st) || !S_ISREG(st.st_mode) || st.st_size == 0)
			continue;
		snprintf(vp, sizeof(vp), "%s/%s", view, e->d_name);
		fd = open(rp, O_RDONLY);
		p = fd < 0 ? MAP_FAILED : mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
		if (fd >= 0)
			close(fd);
		if (p == MAP_FAILED)
			return fprintf(stderr, "stress: %s: cannot map\n", rp), -1;
		sh->f[sh->n++] = (struct file){ strdup(vp), p, (size_t)st.st_size };
	}
	closedir(d);
	return 0;
}

static void note(struct shared *sh, const struct file *f, const char *how, size_t off,
		 const unsigned char *got, size_t len)
{
	if (memcmp(got, f->ref + off, len) == 0) {
		atomic_fetch_add(&sh->bytes, len);
		return;
	}
	atomic_fetch_add(&sh->mismatches, 1);
	fprintf(stderr, "stress: MISMATCH %s %s at %zu len %zu\n", f->view, how, off, len);
}

/* One operation on file f: whole read(), pread() of a random range, or a mapped range. */
static void one_op(struct shared *sh, const struct file *f, uint64_t *seed, unsigned char *buf,
		   size_t cap)
{
	int kind = (int)(rnd(seed) % 4), fd = open(f->view, O_RDONLY);
	size_t off = rnd(seed) % f->size, len = 1 + rnd(seed) % cap;
	ssize_t r;

	if (len > f->size - off)
		len = f->size - off;
	if (fd < 0) {
		atomic_fetch_add(&sh->errors, 1);
		fprintf(stderr, "stress: open %s: %s\n", f->view, strerror(errno));
		return;
	}
	if (kind == 0) {
		size_t pos = 0;

		while ((r = read(fd, buf, cap)) > 0) {
			note(sh, f, "read", pos, buf, (size_t)r);
			pos += (size_t)r;
		}
		if (r < 0 || pos != f->size) {
			atomic_fetch_add(&sh->errors, 1);
			fprintf(stderr, "stress: read %s: %zu of %zu bytes\n", f->view, pos, f->size);
		}
	} else if (kind == 1) {
		r = pread(fd, buf, len, (off_t)off);
		if (r != (ssize_t)len) {
			atomic_fetch_add(&sh->errors, 1);
			fprintf(stderr, "stress: pread %s at %zu: %zd of %zu\n", f->view, off, r, len);
		} else {
			note(sh, f, "pread", off, buf, len);
		}
	} else {
		int flags = kind == 2 ? MAP_PRIVATE : MAP_SHARED;
		unsigned char *p = mmap(NULL, f->size, PROT_READ, flags, fd, 0);

		if (p == MAP_FAILED) {
			atomic_fetch_add(&sh->errors, 1);
			fprintf(stderr, "stress: mmap %s: %s\n", f->view, strerror(errno));
		} else {
			note(sh, f, kind == 2 ? "mmap-private" : "mmap-shared", off, p + off, len);
			munmap(p, f->size);
		}
	}
	close(fd);
}

static void *worker(void *arg)
{
	struct shared *sh = arg;
	uint64_t seed = (uint64_t)(uintptr_t)&seed ^ (uint64_t)(now() * 1e9);
	size_t cap = 2u << 20;
	unsigned char *buf = malloc(cap);

	while (now() < sh->deadline) {
		double t0 = now(), dt, old;

		one_op(sh, &sh->f[rnd(&seed) % (uint64_t)sh->n], &seed, buf, cap);
		dt = now() - t0;
		old = atomic_load(&sh->max_stall);
		while (dt > old && !atomic_compare_exchange_weak(&sh->max_stall, &old, dt))
			;
		atomic_fetch_add(&sh->ops, 1);
	}
	free(buf);
	return NULL;
}

int main(int argc, char **argv)
{
	static struct shared sh;
	pthread_t th[256];
	int threads;

	if (argc < 4) {
		fprintf(stderr, "usage: stress SECONDS THREADS VIEWDIR:REFDIR...\n");
		return 2;
	}
	threads = atoi(argv[2]);
	if (threads < 1 || threads > 256)
		threads = 8;
	for (int i = 3; i < argc; i++) {
		char *colon = strchr(argv[i], ':');

		if (!colon)
			return 2;
		*colon = '\0';
		if (add_pair(&sh, argv[i], colon + 1))
			return 1;
	}
	if (sh.n == 0)
		return fprintf(stderr, "stress: no files\n"), 1;
	sh.deadline = now() + atof(argv[1]);
	for (int i = 0; i < threads; i++)
		pthread_create(&th[i], NULL, worker, &sh);
	for (int i = 0; i < threads; i++)
		pthread_join(th[i], NULL);
	printf("stress: %d threads, %d files, %llu ops, %llu bytes verified, %llu mismatches, "
	       "%llu errors, longest operation %.3f s\n",
	       threads, sh.n, (unsigned long long)sh.ops, (unsigned long long)sh.bytes,
	       (unsigned long long)sh.mismatches, (unsigned long long)sh.errors,
	       atomic_load(&sh.max_stall));
	return sh.mismatches || sh.errors || atomic_load(&sh.max_stall) > STALL_LIMIT;
}
