# qvlmoefs - see README.md. `make`, `make check`, `make demo`, `make install`, `make clean`.
PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
# mount(8) looks for mount.fuse.TYPE helpers in /sbin only: the system prefixes put it there,
# any other PREFIX keeps everything below itself (link the helper into /sbin to use mount -t)
ifneq ($(filter /usr /usr/local,$(PREFIX)),)
SBINDIR ?= /sbin
else
SBINDIR ?= $(PREFIX)/sbin
endif
BUILD ?= build
CC ?= cc
PKG_CONFIG ?= pkg-config
PKGS := fuse3 liburing libcjson
# pkg-config name:Debian package, for the one-line hint when a -dev package is missing
PKG_DEBS := fuse3:libfuse3-dev liburing:liburing-dev libcjson:libcjson-dev
DEBS := fuse3 libfuse3-dev liburing-dev libcjson-dev pkg-config python3 python3-pytest python3-numpy attr

WARN := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes
ifdef WERROR
WARN += -Werror
endif
ifdef SAN
SANFLAGS := -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
endif
ifdef TSAN
SANFLAGS := -fsanitize=thread -fno-omit-frame-pointer
endif
CFLAGS ?= -O2 -g
ALL_CFLAGS := -std=gnu11 -D_GNU_SOURCE -Iinclude $(WARN) $(SANFLAGS) $(CFLAGS) \
	$(shell $(PKG_CONFIG) --cflags $(PKGS) 2>/dev/null)
LIBS := $(shell $(PKG_CONFIG) --libs $(PKGS) 2>/dev/null) -lpthread -lm

CORE := util perm xf comp io st scan hdr rx plan cfg quant dcp dcpcheck vfile gen vcomp tree view view_dcp inspect mount stage
# GPU staging: the CUDA runtime loaded with dlopen, no CUDA headers or toolkit needed to build;
# GPU=gpu_stub builds a binary whose -o gpu and stage fail at once
GPU ?= gpu_cuda
CORE_OBJ := $(CORE:%=$(BUILD)/%.o)
BIN := $(BUILD)/qvlmoefs

all: $(BIN) $(BUILD)/qvlmoefs-mkckpt $(BUILD)/stress

$(BUILD):
	mkdir -p $@

# Before compiling anything: without the -dev packages, one line that says what to do instead
# of a compiler error about a missing header. Order-only, so it never forces a rebuild; the
# list is worked out only when a compile is due.
MISSING_DEBS = $(strip $(shell command -v $(PKG_CONFIG) >/dev/null 2>&1 || echo pkg-config; \
	for p in $(PKG_DEBS); do $(PKG_CONFIG) --exists $${p%%:*} 2>/dev/null || echo $${p#*:}; done))
have-pkgs:
	$(if $(MISSING_DEBS),$(error qvlmoefs: missing Debian packages $(MISSING_DEBS): run 'make deps' as root, which installs them))

$(BUILD)/%.o: src/%.c $(wildcard include/*.h) | $(BUILD) have-pkgs
	$(CC) $(ALL_CFLAGS) -c -o $@ $<

$(BIN): $(CORE_OBJ) $(BUILD)/$(GPU).o $(BUILD)/bdi.o $(BUILD)/loop.o $(BUILD)/excl.o $(BUILD)/opts.o $(BUILD)/mntpt.o $(BUILD)/stage_cli.o $(BUILD)/inspect_cli.o \
		$(BUILD)/fs.o $(BUILD)/notify.o $(BUILD)/main.o
	$(CC) $(ALL_CFLAGS) -o $@ $^ $(LIBS) -ldl

$(BUILD)/qvlmoefs-mkckpt: $(wildcard tests/mkckpt*.c tests/mkckpt*.h) | $(BUILD)
	$(CC) $(ALL_CFLAGS) -Itests -o $@ $(wildcard tests/mkckpt*.c) -lm

$(BUILD)/stress: tests/stress.c | $(BUILD)
	$(CC) $(ALL_CFLAGS) -o $@ $< -lpthread

$(BUILD)/unit: $(wildcard tests/unit/*.c) $(CORE_OBJ) $(BUILD)/gpu_stub.o $(BUILD)/excl.o $(BUILD)/opts.o $(wildcard tests/unit/*.h)
	$(CC) $(ALL_CFLAGS) -Itests/unit -o $@ $(wildcard tests/unit/*.c) $(CORE_OBJ) $(BUILD)/gpu_stub.o $(BUILD)/excl.o $(BUILD)/opts.o $(LIBS)

# Install missing Debian packages when root; otherwise say what to install.
deps:
	@tests/deps.sh $(DEBS)

# the permission tests' second user, made before the suite records /etc (tests/test-user.sh)
test-user:
	@tests/test-user.sh

check: deps test-user
	$(MAKE) all $(BUILD)/unit
	tests/run.sh

# long stress run: STRESS_THREADS readers for STRESS_SECONDS
STRESS_THREADS ?= 32
STRESS_SECONDS ?= 300
stress: deps
	$(MAKE) all
	STRESS_THREADS=$(STRESS_THREADS) STRESS_SECONDS=$(STRESS_SECONDS) BUILD=$(BUILD) \
		/usr/bin/python3 -m pytest tests/integration -k stress

# real loaders' file access (PyTorch, numpy) on CPU; needs Debian's python3-torch
check-loaders: deps
	@tests/deps.sh python3-torch python3-numpy
	$(MAKE) all
	tests/loaders/run.sh

# the real stack from PyPI (tests/real/requirements.txt) in a cached virtual environment
check-real: deps
	$(MAKE) all
	tests/real/run.sh

# qvlmoefs under a real Slurm (Debian's slurm-wlm, started by the suite), one node and two, in
# the venv of tests/real/setup.sh; needs root (daemons, network namespaces, mounts)
check-cluster: deps test-user
	@tests/cluster/deps.sh
	$(MAKE) all
	BUILD=$(BUILD) tests/cluster/run.sh

check-valgrind: deps
	$(MAKE) all $(BUILD)/unit
	tests/valgrind.sh

$(BUILD)/qvbench: tests/bench/qvbench.c | $(BUILD)
	$(CC) $(ALL_CFLAGS) -o $@ $< -lpthread

# the null FUSE filesystem: the ceiling of `make bench` (tuned as qvlmoefs, no source I/O)
$(BUILD)/xfcheck: tests/xfcheck.c $(BUILD)/xf.o | $(BUILD)
	$(CC) $(ALL_CFLAGS) -o $@ $^ -lm

$(BUILD)/xfbench: tests/bench/xfbench.c $(BUILD)/xf.o | $(BUILD)
	$(CC) $(ALL_CFLAGS) -o $@ $^ -lm

$(BUILD)/qvnull: tests/bench/qvnull.c $(BUILD)/bdi.o $(BUILD)/loop.o | $(BUILD)
	$(CC) $(ALL_CFLAGS) -o $@ $^ $(LIBS)

# libfuse's own passthrough_ll example, the baseline of `make bench`
$(BUILD)/passthrough_ll: | $(BUILD)
	$(CC) -O2 -w -o $@ /usr/share/doc/libfuse3-dev/examples/passthrough_ll.c \
		$(shell $(PKG_CONFIG) --cflags --libs fuse3)

bench: deps
	@tests/deps.sh bc
	$(MAKE) all $(BUILD)/qvbench $(BUILD)/qvnull $(BUILD)/passthrough_ll $(BUILD)/xfbench
	tests/bench/bench.sh

# libFuzzer targets (clang, address + undefined sanitizers); FUZZ_SECONDS per target
FUZZ_SECONDS ?= 30
FUZZ_DIR := $(BUILD)/fuzz
FUZZ_TARGETS := st index plan
FUZZ_CFLAGS := -std=gnu11 -D_GNU_SOURCE -Iinclude -g -O1 -fno-omit-frame-pointer \
	-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=all \
	$(shell $(PKG_CONFIG) --cflags $(PKGS) 2>/dev/null)

$(FUZZ_DIR)/%.o: src/%.c $(wildcard include/*.h) | have-pkgs
	@mkdir -p $(FUZZ_DIR)
	clang $(FUZZ_CFLAGS) -c -o $@ $<

$(FUZZ_DIR)/fuzz_%: tests/fuzz/fuzz_%.c $(CORE:%=$(FUZZ_DIR)/%.o) $(FUZZ_DIR)/gpu_stub.o
	clang $(FUZZ_CFLAGS) -fsanitize=fuzzer -o $@ $^ $(LIBS)

.PRECIOUS: $(FUZZ_DIR)/%.o

fuzz: deps
	@tests/deps.sh clang libclang-rt-14-dev
	$(MAKE) $(FUZZ_TARGETS:%=$(FUZZ_DIR)/fuzz_%)
	tests/fuzz/run.sh $(FUZZ_DIR) $(FUZZ_SECONDS) $(FUZZ_TARGETS)

# parser agreement with the official safetensors (tests/real/st_agree.py): FUZZ_DIFF_N mutated
# files from seed FUZZ_DIFF_SEED through both parsers, in the venv of tests/real/setup.sh
FUZZ_DIFF_N ?= 100000
FUZZ_DIFF_SEED ?= 1
$(BUILD)/st_agree: tests/fuzz/st_agree.c $(CORE_OBJ) $(BUILD)/gpu_stub.o
	$(CC) $(ALL_CFLAGS) -o $@ $^ $(LIBS)

fuzz-diff: deps
	$(MAKE) all $(BUILD)/st_agree
	PY=$$(tests/real/setup.sh) && BUILD=$(BUILD) "$$PY" tests/real/st_agree.py \
		-n $(FUZZ_DIFF_N) --seed $(FUZZ_DIFF_SEED) --big

.PHONY: fuzz-diff

demo: deps
	$(MAKE) all
	tests/demo.sh

install: $(BIN) $(BUILD)/qvlmoefs-mkckpt
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(SBINDIR) $(DESTDIR)$(PREFIX)/share/man/man8
	install -m 0755 $(BIN) $(DESTDIR)$(BINDIR)/qvlmoefs
	install -m 0755 $(BUILD)/qvlmoefs-mkckpt $(DESTDIR)$(BINDIR)/qvlmoefs-mkckpt
	sed 's|@BIN@|$(BINDIR)/qvlmoefs|' mount-scripts/qvlmoefs-node-mount \
		>$(DESTDIR)$(BINDIR)/qvlmoefs-node-mount
	chmod 0755 $(DESTDIR)$(BINDIR)/qvlmoefs-node-mount
	sed 's|@BIN@|$(BINDIR)/qvlmoefs|' mount-scripts/mount.fuse.qvlmoefs \
		>$(DESTDIR)$(SBINDIR)/mount.fuse.qvlmoefs
	chmod 0755 $(DESTDIR)$(SBINDIR)/mount.fuse.qvlmoefs
	install -m 0644 mount-scripts/qvlmoefs.8 $(DESTDIR)$(PREFIX)/share/man/man8/qvlmoefs.8

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/qvlmoefs $(DESTDIR)$(BINDIR)/qvlmoefs-mkckpt \
		$(DESTDIR)$(BINDIR)/qvlmoefs-node-mount $(DESTDIR)$(SBINDIR)/mount.fuse.qvlmoefs \
		$(DESTDIR)$(PREFIX)/share/man/man8/qvlmoefs.8

clean:
	rm -rf $(BUILD)

.PHONY: all have-pkgs deps test-user bench fuzz stress check check-loaders check-real check-cluster check-valgrind demo install uninstall clean
