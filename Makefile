# ambient-redirect. `make test` and `make demo` set up a fresh machine first (root, Debian).
# Every bpf/*.bpf.c is an object: redirect (TC), inpod, xdp (the XDP hook of the pod-side
# outbound capture, `run --hook xdp`, docs/datapath.md), bench_empty.
BPF_SRC   := $(wildcard bpf/*.bpf.c)
BPF_OBJ   := $(patsubst bpf/%.bpf.c,build/%.bpf.o,$(BPF_SRC))
BPF_HDRS  := $(wildcard bpf/include/*.h)
CLANG     ?= clang
# -mcpu=v2 and no global data keep the objects loadable on 4.20 kernels.
BPF_CFLAGS := -O2 -g -target bpf -mcpu=v2 -Wall -Werror -Ibpf/include \
              -I/usr/include/$(shell uname -m)-linux-gnu

.PHONY: all build bpf ts cni rawframe trafficpeer layout print-bpf-cflags setup test test-unit test-build test-kernel test-slow demo clean product product-ts lint

all: build

build: bpf ts cni rawframe trafficpeer

# Variants of the capture object for the lifecycle tests: a new build of the same code
# (other debug info), a map schema change (smaller maps), and one whose load fails
# (maps of size 0).
TEST_OBJ := build/test/redirect-rebuilt.bpf.o build/test/redirect-small.bpf.o build/test/redirect-unloadable.bpf.o
# Another project's program for the ordering test: it passes every packet.
TEST_OBJ += build/tests/foreign.bpf.o
# A primary CNI's programs beside ours, one per verdict (ok, next, drop, redirect), for the
# coexistence matrix (test/kernel/cni-coexist.test.ts).
TEST_OBJ += build/tests/foreign-verdicts.bpf.o
# The last build before the counters array (agent and capture object), for the upgrade test.
TEST_OBJ += build/test/prev/.built

bpf: $(BPF_OBJ) $(TEST_OBJ)

build/%.bpf.o: bpf/%.bpf.c $(BPF_HDRS)
	@mkdir -p build
	$(CLANG) $(BPF_CFLAGS) -c $< -o $@

build/test/redirect-rebuilt.bpf.o: bpf/redirect.bpf.c $(BPF_HDRS)
	@mkdir -p build/test
	$(CLANG) $(BPF_CFLAGS) -gdwarf-4 -c $< -o $@

build/test/redirect-small.bpf.o: bpf/redirect.bpf.c $(BPF_HDRS)
	@mkdir -p build/test
	$(CLANG) $(BPF_CFLAGS) -DMAX_PODS=1024 -c $< -o $@

build/test/redirect-unloadable.bpf.o: bpf/redirect.bpf.c $(BPF_HDRS)
	@mkdir -p build/test
	$(CLANG) $(BPF_CFLAGS) -DMAX_PODS=0 -c $< -o $@

# The last build before the counters array (issue 19: pods values of 12 bytes, counters a
# per-CPU hash by ifindex), its agent and capture object from git history: the lifecycle
# test runs it, then upgrades to this build under traffic (test/kernel/lifecycle.test.ts).
# Without git history (a source tarball) it is left out with a note, and that test fails.
PREV_REV := 564926f191c403d26495e24e5dadaf30cba33b8c
PREV_DIR := build/test/prev
PREV_CFLAGS := $(subst -Ibpf/include,-I$(PREV_DIR)/bpf/include,$(BPF_CFLAGS))

# Its tsc comes from node_modules: on a fresh clone those are installed first.
$(PREV_DIR)/.built: node_modules/.package-lock.json
	@rm -rf $(PREV_DIR) && mkdir -p $(PREV_DIR)
	@git archive $(PREV_REV) bpf src tsconfig.json tsconfig.product.json 2>/dev/null | tar -x -C $(PREV_DIR) \
	  && ln -s $(CURDIR)/node_modules $(PREV_DIR)/node_modules \
	  && (cd $(PREV_DIR) && npx tsc -p tsconfig.product.json && cp src/zds/zds.proto dist/src/zds/zds.proto) \
	  && $(CLANG) $(PREV_CFLAGS) -c $(PREV_DIR)/bpf/redirect.bpf.c -o $(PREV_DIR)/redirect.bpf.o \
	  && touch $@ \
	  || { rm -rf $(PREV_DIR); echo "note: no build of $(PREV_REV) (git history missing): the upgrade test has no previous build"; }

# The chained CNI plugin (docs/cni.md): run by the container runtime on the host, where
# Node.js may not be, so a static C binary.
# Hardened: fortified libc calls, stack protector, full RELRO with immediate binding, and a
# static PIE where the toolchain can link one (else plain static).
# The ASan+UBSan build (dynamic: the sanitizer runtimes need it) is for the fuzz run
# (test/build/cni-fuzz.test.ts); skipped with a note when the sanitizer runtime is missing.
cni: build/ambient-redirect-cni build/test/ambient-redirect-cni-asan

CNI_WARN   := -Wall -Wextra -Werror
CNI_HARDEN := -O2 -D_FORTIFY_SOURCE=2 -fstack-protector-strong -fPIE -Wl,-z,relro,-z,now
CNI_STATIC  = $(shell printf 'int main(void){return 0;}' | $(CLANG) -x c -fPIE -static-pie -o /dev/null - 2>/dev/null && echo -static-pie || echo -static)

build/ambient-redirect-cni: tools/cni/ambient-redirect-cni.c
	@mkdir -p build
	$(CLANG) $(CNI_WARN) $(CNI_HARDEN) $(CNI_STATIC) -o $@ $<

build/test/ambient-redirect-cni-asan: tools/cni/ambient-redirect-cni.c
	@mkdir -p build/test
	@$(CLANG) $(CNI_WARN) -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all -o $@ $< \
	  || { rm -f $@; echo "note: no ASan/UBSan build of the CNI plugin (the sanitizer runtime is missing: libclang-rt-14-dev)"; }

# The bypass-hunt test's frame sender and sniffer (test/kernel/bypass-hunt.test.ts).
rawframe: build/rawframe

build/rawframe: tools/rawframe/rawframe.c
	@mkdir -p build
	$(CLANG) -O2 -Wall -Wextra -Werror -o $@ $<

# The native ends of the live traffic benchmarks (harness/bench/traffic.ts, inpod.ts):
# clients, server and terminating ztunnel stand-in, threads and epoll (glibc only).
trafficpeer: build/trafficpeer

build/trafficpeer: tools/trafficpeer/trafficpeer.c
	@mkdir -p build
	$(CLANG) -O2 -Wall -Wextra -Werror -pthread -o $@ $<

# The flags every BPF object is compiled with (test/build/bpf-headers.test.ts compiles each
# header alone with them).
print-bpf-cflags:
	@echo $(BPF_CFLAGS)

# The agent (src/ -> dist/src/), the harness (harness/ -> dist/harness/) and the build-time
# generators (tools/ -> dist/tools/) in one compile.
TS_SRC := $(shell find src harness tools -name '*.ts')

ts: dist/.built

dist/.built: $(TS_SRC) src/zds/zds.proto tsconfig.json node_modules/.package-lock.json
	npx tsc -p tsconfig.json
	cp src/zds/zds.proto dist/src/zds/zds.proto
	@touch $@

# What the image holds (deploy/Dockerfile): the capture objects, the CNI plugin and src/
# alone; the harness, the test objects and the sanitizer build stay out.
product: build/redirect.bpf.o build/xdp.bpf.o build/inpod.bpf.o build/ambient-redirect-cni product-ts

product-ts: node_modules/.package-lock.json
	npx tsc -p tsconfig.product.json
	cp src/zds/zds.proto dist/src/zds/zds.proto

node_modules/.package-lock.json: package-lock.json
	npm ci --no-audit --no-fund --loglevel=error

# Regenerates the TypeScript view of the shared structs from the object's BTF.
layout: build
	node dist/tools/layout-gen.js build/redirect.bpf.o bpf/include/ambient_redirect.h > src/bpf/layout.generated.ts
	node dist/tools/layout-gen.js build/inpod.bpf.o bpf/include/inpod.h > src/bpf/inpod-layout.generated.ts

# Installs what a fresh machine lacks, mounts bpffs, builds. Quiet when all is there.
setup:
	@bash scripts/setup.sh

# Biome (biome.json): the linter and the formatter's check on src/, harness/, test/ and
# tools/; part of `make test`. `npx biome format --write .` applies the format.
lint: node_modules/.package-lock.json
	npx biome lint --error-on-warnings .
	npx biome format .

test: setup lint
	@bash scripts/test.sh

# One project of vitest.config.ts at a time, with the same closing line.
test-unit: setup
	@bash scripts/test.sh --project unit

test-build: setup
	@bash scripts/test.sh --project build

test-kernel: setup
	@bash scripts/test.sh --project kernel

test-slow: setup
	@bash scripts/test.sh --project slow

demo: setup
	node dist/harness/main.js demo

clean:
	rm -rf build dist

# --- the kernel matrix (docs/kernel-matrix.md) --------------------------------------------
# The negative control: a program every verifier must reject. Compiled, never loaded by us
# except to see it refused.
build/tests/%.bpf.o: bpf/tests/%.bpf.c
	@mkdir -p build/tests
	$(CLANG) $(BPF_CFLAGS) -c $< -o $@

.PHONY: kernel-matrix
# Boots Debian's 5.10, 6.1 and 6.12 cloud kernels under qemu (and runs this kernel) with our
# programs, probes and packet corpus; prints the table. Needs root and the network the
# first time (images cached under build/kernels/).
kernel-matrix: setup build/tests/broken.bpf.o
	@KERNEL_MATRIX=1 npx vitest run test/slow/matrix.test.ts

# --- benchmarks (figures, not tests) ------------------------------------------------------
.PHONY: bench
# The data path (BPF_PROG_RUN), live traffic through each capture mode on a simulated node,
# and the control path, side by side in one run; writes docs/benchmarks.md and its chart
# docs/benchmarks.svg. Root; a few minutes. Parts: `node dist/harness/main.js bench --help`.
bench: setup
	node dist/harness/main.js bench --write docs/benchmarks.md
