/* qvbench.c - the measuring half of `make bench`: timed reads of files the way loaders read
 * them. Each subcommand prints "BYTES SECONDS" (or a figure named below) on one line.
 *
 *   qvbench read BS FILE...        sequential read() of each file in BS-byte requests
 *   qvbench mmap THREADS FILE...   map each file MAP_PRIVATE, touch every page from THREADS
 *   qvbench mmapcopy FILE...       map each file MAP_PRIVATE and copy every byte out of the map
 *                                  from one thread, 64 MiB at a time (as safe_open does)
 *   qvbench extents LIST           pread() every "PATH OFFSET LENGTH" line of LIST in 1 MiB
 *                                  requests (a loader reading only its slices of the sources)
 *   qvbench evict FILE...          drop the files' pages from the page cache (no root needed)
 *   qvbench ready MNT NAME CMD...  run CMD (a daemon in the foreground), print the ms until
 *                                  MNT lists NAME and NAME reads through, then the CMD's pid
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int die(const char *what, const char *file)
{
	fprintf(stderr, "qvbench: %s: %s: %s\n", what, file, strerror(errno));
	return 1;
}

/* Map file MAP_PRIVATE read-only into *p (NULL for an empty file), its size in *size; 0, or 1
 * after saying why. */
static int map_file(const char *file, char **p, size_t *size)
{
	int fd = open(file, O_RDONLY);
	struct stat st;

	if (fd < 0 || fstat(fd, &st))
		return die("open", file);
	*size = (size_t)st.st_size;
	*p = NULL;
	if (*size)
		*p = mmap(NULL, *size, PROT_READ, MAP_PRIVATE, fd, 0);
	close(fd); /* the mapping keeps the file */
	return *p == MAP_FAILED ? die("mmap", file) : 0;
}

static int cmd_read(size_t bs, char **files, int n)
{
	char *buf = aligned_alloc(4096, bs);
	uint64_t total = 0;
	double t0 = now();

	for (int i = 0; i < n; i++) {
		int fd = open(files[i], O_RDONLY);
		ssize_t r;

		if (fd < 0)
			return die("open", files[i]);
		while ((r = read(fd, buf, bs)) > 0)
			total += (uint64_t)r;
		if (r < 0)
			return die("read", files[i]);
		close(fd);
	}
	printf("%llu %.6f\n", (unsigned long long)total, now() - t0);
	free(buf);
	return 0;
}

struct toucher {
	const volatile char *p;
	size_t from, to;
	unsigned long sum;
};

static void *touch(void *arg)
{
	struct toucher *t = arg;

	for (size_t off = t->from; off < t->to; off += 4096)
		t->sum += (unsigned char)t->p[off];
	return NULL;
}

static int cmd_mmap(int threads, char **files, int n)
{
	uint64_t total = 0;
	double t0 = now();

	for (int i = 0; i < n; i++) {
		pthread_t th[64];
		struct toucher tc[64];
		size_t size;
		char *p;

		if (map_file(files[i], &p, &size))
			return 1;
		if (!p)
			continue;
		/* contiguous quarters, as threads materializing different tensors would */
		for (int k = 0; k < threads; k++) {
			size_t pages = (size + 4095) / 4096;
			tc[k] = (struct toucher){ p, pages * (size_t)k / (size_t)threads * 4096,
						  pages * (size_t)(k + 1) / (size_t)threads * 4096, 0 };
			if (tc[k].to > size)
				tc[k].to = size;
			pthread_create(&th[k], NULL, touch, &tc[k]);
		}
		for (int k = 0; k < threads; k++)
			pthread_join(th[k], NULL);
		munmap(p, size);
		total += (uint64_t)size;
	}
	printf("%llu %.6f\n", (unsigned long long)total, now() - t0);
	return 0;
}

static int cmd_mmapcopy(char **files, int n)
{
	const size_t chunk = 64u << 20;
	static volatile unsigned long sink;
	char *dst = malloc(chunk);
	uint64_t total = 0;
	double t0 = now();

	if (!dst)
		return die("malloc", "64 MiB");
	memset(dst, 1, chunk); /* the destination's pages exist before the clock matters */
	t0 = now();
	for (int i = 0; i < n; i++) {
		size_t size;
		char *p;

		if (map_file(files[i], &p, &size))
			return 1;
		if (!p)
			continue;
		for (size_t off = 0; off < size; off += chunk) {
			size_t len = size - off < chunk ? size - off : chunk;

			memcpy(dst, p + off, len);
			sink += (unsigned char)dst[len - 1]; /* the copy is used: not elided */
		}
		munmap(p, size);
		total += (uint64_t)size;
	}
	printf("%llu %.6f\n", (unsigned long long)total, now() - t0);
	free(dst);
	return 0;
}

static int cmd_extents(const char *list)
{
	FILE *f = fopen(list, "r");
	char path[4096], open_path[4096] = "";
	unsigned long long off, len;
	const size_t bs = 1u << 20;
	char *buf = aligned_alloc(4096, bs);
	uint64_t total = 0;
	int fd = -1;
	double t0 = now();

	if (!f || !buf)
		return die("open", list);
	while (fscanf(f, "%4095s %llu %llu", path, &off, &len) == 3) {
		if (strcmp(path, open_path)) { /* one open per file, as a loader keeps it open */
			if (fd >= 0)
				close(fd);
			fd = open(path, O_RDONLY);
			if (fd < 0)
				return die("open", path);
			snprintf(open_path, sizeof(open_path), "%s", path);
		}
		while (len) {
			ssize_t r = pread(fd, buf, len < bs ? len : bs, (off_t)off);

			if (r <= 0)
				return die("pread", path);
			off += (unsigned long long)r;
			len -= (unsigned long long)r;
			total += (uint64_t)r;
		}
	}
	if (fd >= 0)
		close(fd);
	fclose(f);
	free(buf);
	printf("%llu %.6f\n", (unsigned long long)total, now() - t0);
	return 0;
}

static int cmd_evict(char **files, int n)
{
	for (int i = 0; i < n; i++) {
		int fd = open(files[i], O_RDONLY);

		if (fd < 0)
			return die("open", files[i]);
		posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
		close(fd);
	}
	return 0;
}

/* Ready = the root lists name and name reads to its end. */
static int ready(const char *mnt, const char *name)
{
	char path[4096], buf[65536];
	DIR *d = opendir(mnt);
	struct dirent *e;
	int found = 0, fd;

	if (!d)
		return 0;
	while ((e = readdir(d)))
		found |= strcmp(e->d_name, name) == 0;
	closedir(d);
	if (!found)
		return 0;
	snprintf(path, sizeof(path), "%s/%s", mnt, name);
	fd = open(path, O_RDONLY);
	if (fd < 0)
		return 0;
	while (read(fd, buf, sizeof(buf)) > 0)
		;
	close(fd);
	return 1;
}

static int cmd_ready(const char *mnt, const char *name, char **cmd)
{
	struct stat before, st;
	double t0 = now();
	pid_t pid;

	if (stat(mnt, &before))
		return die("stat", mnt);
	pid = fork();
	if (pid == 0) {
		/* not our stdout: whoever reads our figures would wait for the daemon to exit */
		int null = open("/dev/null", O_WRONLY);

		dup2(null, STDOUT_FILENO);
		execvp(cmd[0], cmd);
		_exit(127);
	}
	for (;;) {
		/* the mount point changes device once the daemon has mounted */
		if (stat(mnt, &st) == 0 && st.st_dev != before.st_dev && ready(mnt, name))
			break;
		if (now() - t0 > 120) {
			fprintf(stderr, "qvbench: %s not ready after 120 s\n", mnt);
			return 1;
		}
		usleep(200);
	}
	printf("%.3f %d\n", (now() - t0) * 1e3, (int)pid);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc >= 4 && !strcmp(argv[1], "read"))
		return cmd_read(strtoull(argv[2], NULL, 0), argv + 3, argc - 3);
	if (argc >= 4 && !strcmp(argv[1], "mmap"))
		return cmd_mmap(atoi(argv[2]) < 1 || atoi(argv[2]) > 64 ? 4 : atoi(argv[2]),
				argv + 3, argc - 3);
	if (argc >= 3 && !strcmp(argv[1], "mmapcopy"))
		return cmd_mmapcopy(argv + 2, argc - 2);
	if (argc == 3 && !strcmp(argv[1], "extents"))
		return cmd_extents(argv[2]);
	if (argc >= 3 && !strcmp(argv[1], "evict"))
		return cmd_evict(argv + 2, argc - 2);
	if (argc >= 5 && !strcmp(argv[1], "ready"))
		return cmd_ready(argv[2], argv[3], argv + 4);
	fprintf(stderr, "usage: see the comment at the top of tests/bench/qvbench.c\n");
	return 2;
}
