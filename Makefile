# libstock — build, test, install, benchmark. The only entry point.
#
#   make            shared + static library and the examples (build/release)
#   make test       install missing packages, build, run every test
#   make check-tsan the unit suite under ThreadSanitizer     (build/tsan)
#   make check-asan the unit suite under ASan + UBSan        (build/asan)
#   make bench      counter benchmark table
#   make install    PREFIX=/usr/local DESTDIR= (libdir, includedir, pkgconfigdir)
#   make deps       install the Debian packages the build needs (no-op when present)

PREFIX       ?= /usr/local
EXEC_PREFIX  ?= $(PREFIX)
LIBDIR       ?= $(EXEC_PREFIX)/lib
INCLUDEDIR   ?= $(PREFIX)/include
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
DESTDIR      ?=

VERSION_H := libstock/include/stock/common.h
MAJOR := $(shell sed -n 's/^\#define STOCK_VERSION_MAJOR \([0-9]*\)$$/\1/p' $(VERSION_H))
MINOR := $(shell sed -n 's/^\#define STOCK_VERSION_MINOR \([0-9]*\)$$/\1/p' $(VERSION_H))
PATCH := $(shell sed -n 's/^\#define STOCK_VERSION_PATCH \([0-9]*\)$$/\1/p' $(VERSION_H))
VERSION := $(MAJOR).$(MINOR).$(PATCH)

CC      ?= cc
AR      ?= ar
VARIANT ?= release
O       := build/$(VARIANT)

WARN := -Wall -Wextra -Wshadow -Wstrict-prototypes
ifeq ($(CI),true)
WARN += -Werror
endif
ifdef WERROR
WARN += -Werror
endif

CK_CFLAGS := $(shell pkg-config --cflags ck 2>/dev/null)
CK_LIBS   := $(shell pkg-config --libs ck 2>/dev/null || echo -lck)

ifeq ($(VARIANT),tsan)
# ck_pr's inline assembly is invisible to TSan: use the compiler builtins.
OPT := -O1 -g -fsanitize=thread -DCK_USE_CC_BUILTINS=1 -DDEMO_DEBUG
SANLDFLAGS := -fsanitize=thread
else ifeq ($(VARIANT),asan)
OPT := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined -DDEMO_DEBUG
SANLDFLAGS := -fsanitize=address,undefined
else ifeq ($(VARIANT),fuzz)
# libFuzzer targets (make fuzz): clang, every object instrumented for
# coverage, ASan + UBSan; only the fuzz binaries link libFuzzer's main.
CC := clang
OPT := -O1 -g -fno-omit-frame-pointer -fsanitize=fuzzer-no-link,address,undefined \
       -fno-sanitize-recover=undefined -DDEMO_DEBUG
SANLDFLAGS := -fsanitize=address,undefined
else
OPT := -O2 -g
SANLDFLAGS :=
endif

CFLAGS   ?=
LDFLAGS  ?=
STD      := -std=gnu11 -D_GNU_SOURCE
INCS     := -Ilibstock/include
LIBCFLAGS = $(STD) $(OPT) $(WARN) -fPIC -fvisibility=hidden $(INCS) $(CK_CFLAGS) $(CFLAGS)
APPCFLAGS = $(STD) $(OPT) $(WARN) $(INCS) $(CK_CFLAGS) $(CFLAGS)

# Every source is compiled once per flavour into $(O)/obj/<its path>.o, with a
# dependency file (-MMD -MP): touching one .c recompiles one object, touching
# a header recompiles what includes it.
DEPFLAGS := -MMD -MP

LIB_SRCS := $(wildcard libstock/src/*.c)
LIB_OBJS := $(patsubst %.c,$(O)/obj/%.o,$(LIB_SRCS))

# Before 1.0 every minor version may change the ABI: the SONAME carries it.
ABI       := $(if $(filter 0,$(MAJOR)),$(MAJOR).$(MINOR),$(MAJOR))
SONAME    := libstock.so.$(ABI)
SHLIB     := $(O)/libstock.so.$(VERSION)
STLIB     := $(O)/libstock.a
LIBS_PRIV := $(CK_LIBS) -lpthread

EXAMPLE_SRCS := $(wildcard examples/*.c)
EXAMPLES     := $(patsubst examples/%.c,$(O)/examples/%,$(EXAMPLE_SRCS))

UNIT_SRCS := $(wildcard tests/unit/*.c)
UNIT_BIN  := $(O)/tests/unit_tests
CRITERION_LIBS := $(shell pkg-config --libs criterion 2>/dev/null || echo -lcriterion)

BENCH_BIN := $(O)/bench/bench_counters

# demo-server: one folder per part (docs/server.md "Architecture"). libmongoc
# (MongoDB), libbson and hiredis (Redis pub/sub) come from Debian's
# libmongoc-dev, libbson-dev and libhiredis-dev; libcrypto (SHA-256 of the
# buyer-limit documents' ids) from libssl-dev.
BSON_CFLAGS := $(shell pkg-config --cflags libbson-1.0 libmongoc-1.0 hiredis libcrypto 2>/dev/null)
BSON_LIBS   := $(shell pkg-config --libs libmongoc-1.0 libbson-1.0 hiredis libcrypto 2>/dev/null || \
                 echo -lmongoc-1.0 -lbson-1.0 -lhiredis -lcrypto)
CIVETWEB_LIBS := -lcivetweb
SRVCFLAGS = $(APPCFLAGS) -Idemo-server $(BSON_CFLAGS)
SRV_LIBS   = $(STLIB) $(BSON_LIBS) $(CIVETWEB_LIBS) $(LIBS_PRIV)

# srv_objs PARTS: the objects of those demo-server folders (plus log.c, which
# every part uses).
srv_objs = $(patsubst %.c,$(O)/obj/%.o,$(foreach d,$(1),$(wildcard demo-server/$(d)/*.c)) demo-server/log.c)
SERVER_PARTS := common store mongo cluster inventory http checkout
SERVER_OBJS  := $(call srv_objs,$(SERVER_PARTS)) $(O)/obj/demo-server/config.o $(O)/obj/demo-server/main.o
SERVER_BIN   := $(O)/demo-server

# Server unit tests: one binary per part, linked with only the parts it needs,
# so a part's tests build and run on their own.
SERVER_TESTS := $(patsubst tests/server/%.c,$(O)/tests/server/%,$(wildcard tests/server/test_*.c))
test_parts_test_journal := common store
test_parts_test_mongo   := common mongo
test_parts_test_bus     := common mongo cluster
test_parts_test_json    := common
test_parts_test_buf     := common
test_parts_test_lease   := common mongo cluster
test_parts_test_payment := common checkout
test_parts_test_checkout := common store mongo cluster inventory
BENCH_STORE_BIN  := $(O)/bench/bench_store

# Debian packages the library, its tests and its benchmarks need.
DEPS_PKGS := gcc libc6-dev binutils make pkg-config libck-dev libcriterion-dev libbson-dev \
             libcivetweb-dev libmongoc-dev libhiredis-dev libssl-dev curl jq wrk siege redis-server \
             redis-tools

.PHONY: all run lib static shared examples run-examples test unit check server-test multi-test check-tsan check-asan \
        bench bench-store bench-http bench-history fuzz fuzz-build install uninstall deps deps-pkgs clean test-install

all: lib examples $(SERVER_BIN)

$(SERVER_BIN): $(SERVER_OBJS) $(STLIB)
	@mkdir -p $(@D)
	$(CC) $(SERVER_OBJS) -o $@ $(SANLDFLAGS) $(LDFLAGS) $(SRV_LIBS)

$(O)/obj/demo-server/%.o: demo-server/%.c
	@mkdir -p $(@D)
	$(CC) $(SRVCFLAGS) $(DEPFLAGS) -c $< -o $@

# Starts the demo server on 127.0.0.1:5059 with the embedded store in ./data.
RUN_ARGS ?=
run: deps-pkgs
	$(MAKE) $(SERVER_BIN)
	exec $(SERVER_BIN) $(RUN_ARGS)

lib: static shared
static: $(STLIB)
shared: $(SHLIB)

$(O)/obj/libstock/%.o: libstock/%.c
	@mkdir -p $(@D)
	$(CC) $(LIBCFLAGS) $(DEPFLAGS) -c $< -o $@

$(STLIB): $(LIB_OBJS)
	@mkdir -p $(@D)
	rm -f $@
	$(AR) rcs $@ $^

$(SHLIB): $(LIB_OBJS)
	@mkdir -p $(@D)
	$(CC) -shared -Wl,-soname,$(SONAME) $(SANLDFLAGS) $(LDFLAGS) -o $@ $^ $(LIBS_PRIV)
	ln -sf libstock.so.$(VERSION) $(O)/$(SONAME)
	ln -sf $(SONAME) $(O)/libstock.so

examples: $(EXAMPLES)

$(O)/examples/%: $(O)/obj/examples/%.o $(STLIB)
	@mkdir -p $(@D)
	$(CC) $< -o $@ $(SANLDFLAGS) $(LDFLAGS) $(STLIB) $(LIBS_PRIV)

$(O)/obj/examples/%.o: examples/%.c
	@mkdir -p $(@D)
	$(CC) $(APPCFLAGS) $(DEPFLAGS) -c $< -o $@

# Under TSan and ASan the same test files build against a Criterion-compatible
# shim (tests/unit/shim) that runs every test in one process: Criterion's
# sandbox cannot start under TSan, and under ASan LeakSanitizer reports
# nothing from Criterion's worker processes (a deliberate leak passed), while
# through the shim it checks every test at exit.
ifneq ($(filter tsan asan,$(VARIANT)),)
SHIM_OBJ   := $(O)/obj/tests/unit/shim/shim_main.o
TESTCFLAGS := -Itests/unit/shim
UNIT_LIBS  :=
UNIT_FLAGS :=
else
SHIM_OBJ   :=
TESTCFLAGS :=
UNIT_LIBS  := $(CRITERION_LIBS)
UNIT_FLAGS := --jobs 2
endif

UNIT_OBJS := $(patsubst %.c,$(O)/obj/%.o,$(UNIT_SRCS))

$(O)/obj/tests/unit/%.o: tests/unit/%.c
	@mkdir -p $(@D)
	$(CC) $(APPCFLAGS) $(TESTCFLAGS) -Itests/unit $(DEPFLAGS) -c $< -o $@

$(O)/obj/tests/server/%.o: tests/server/%.c
	@mkdir -p $(@D)
	$(CC) $(SRVCFLAGS) $(TESTCFLAGS) $(DEPFLAGS) -c $< -o $@

$(UNIT_BIN): $(UNIT_OBJS) $(SHIM_OBJ) $(STLIB)
	@mkdir -p $(@D)
	$(CC) $(UNIT_OBJS) $(SHIM_OBJ) -o $@ $(SANLDFLAGS) $(LDFLAGS) $(STLIB) $(UNIT_LIBS) $(LIBS_PRIV)

# $(O)/tests/server/test_X: its own object, the shim, and the parts listed in
# test_parts_test_X.
.SECONDEXPANSION:
$(SERVER_TESTS): $(O)/tests/server/%: $(O)/obj/tests/server/%.o $$(call srv_objs,$$(test_parts_$$*)) $(SHIM_OBJ) $(STLIB)
	@mkdir -p $(@D)
	$(CC) $(filter %.o,$^) -o $@ $(SANLDFLAGS) $(LDFLAGS) $(SRV_LIBS) $(UNIT_LIBS)

$(BENCH_STORE_BIN): $(O)/obj/tests/bench/bench_store.o $(call srv_objs,common store) $(STLIB)
	@mkdir -p $(@D)
	$(CC) $(filter %.o,$^) -o $@ $(SANLDFLAGS) $(LDFLAGS) $(SRV_LIBS)

$(O)/obj/tests/bench/%.o: tests/bench/%.c
	@mkdir -p $(@D)
	$(CC) $(SRVCFLAGS) $(DEPFLAGS) -c $< -o $@

$(BENCH_BIN): $(O)/obj/tests/bench/bench_counters.o $(STLIB)
	@mkdir -p $(@D)
	$(CC) $< -o $@ $(SANLDFLAGS) $(LDFLAGS) $(STLIB) $(LIBS_PRIV)

# --- tests -----------------------------------------------------------------

UNIT_RUN := $(UNIT_BIN) $(UNIT_FLAGS)

# The server unit tests get a real redis-server and MongoDB-compatible server
# (tests/services/run.sh starts and stops them).
unit: $(UNIT_BIN) $(SERVER_TESTS)
	$(UNIT_RUN)
	bash tests/services/run.sh bash -c 'for t in "$$@"; do echo "== $$t"; $$t $(UNIT_FLAGS) || exit 1; done' - $(SERVER_TESTS)

# Runs every example (they check their own results and exit non-zero on a miss).
run-examples: $(EXAMPLES)
	@set -e; for e in $(EXAMPLES); do echo "== $$e"; $$e > /dev/null; done; \
	    echo "examples: $(words $(EXAMPLES)) passed, 0 failed"

check: unit

test: deps
	$(MAKE) all
	$(MAKE) unit
	$(MAKE) test-install
	$(MAKE) server-test

# Starts the real server binary on a free port with a temp data dir; then
# three instances on one MongoDB-compatible server and one redis-server
# (started by the script, tests/services/).
MONGO_DOCS_BIN := $(O)/tests/mongo_docs
$(MONGO_DOCS_BIN): tests/services/mongo_docs.c
	@mkdir -p $(@D)
	$(CC) -O1 -g -Wall -Wextra $(BSON_CFLAGS) $< -o $@ $(BSON_LIBS)

server-test: $(SERVER_BIN) $(MONGO_DOCS_BIN)
	bash tests/server/http_test.sh $(SERVER_BIN)
	bash tests/server/checkout_test.sh $(SERVER_BIN)
	bash tests/load/k6_scenario.sh $(SERVER_BIN)
	bash tests/server/multi_test.sh $(SERVER_BIN) $(MONGO_DOCS_BIN)
	bash tests/load/history.sh $(SERVER_BIN) $(MONGO_DOCS_BIN)

# The history checker at full scale (tests/load/history/): a benchmark.
bench-history: deps
	$(MAKE) $(SERVER_BIN) $(MONGO_DOCS_BIN)
	bash tests/load/history.sh $(SERVER_BIN) $(MONGO_DOCS_BIN) --full

multi-test: $(SERVER_BIN) $(MONGO_DOCS_BIN)
	bash tests/server/multi_test.sh $(SERVER_BIN) $(MONGO_DOCS_BIN)

# Installs into a temp DESTDIR and builds every example with pkg-config alone.
test-install: all
	bash tests/install/run.sh

check-tsan: deps
	$(MAKE) VARIANT=tsan unit run-examples server-test TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 $(TSAN_OPTIONS)"

check-asan: deps
	$(MAKE) VARIANT=asan unit run-examples server-test \
	    ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:$(ASAN_OPTIONS)" \
	    LSAN_OPTIONS="suppressions=$(CURDIR)/tests/lsan.supp:print_suppressions=0" \
	    UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:$(UBSAN_OPTIONS)"

export TSAN_OPTIONS ASAN_OPTIONS UBSAN_OPTIONS LSAN_OPTIONS

bench: deps
	$(MAKE) $(BENCH_BIN)
	$(BENCH_BIN)

BENCH_MONGO_BIN := $(O)/bench/bench_mongo
$(BENCH_MONGO_BIN): tests/bench/bench_mongo.c
	@mkdir -p $(@D)
	$(CC) -O2 -g -Wall -Wextra $(BSON_CFLAGS) $< -o $@ $(BSON_LIBS) -lpthread

BARE_BIN := $(O)/bench/bare_civetweb
$(BARE_BIN): $(O)/obj/tests/bench/bare_civetweb.o $(O)/obj/demo-server/http/threads.o
	@mkdir -p $(@D)
	$(CC) $^ -o $@ $(SANLDFLAGS) $(LDFLAGS) $(CIVETWEB_LIBS) $(LIBS_PRIV)

# The demo server against a bare civetweb handler and Redis (appendfsync
# always), measured in the same run. Needs wrk and redis-server (make deps).
SLOW_FSYNC_SO := $(O)/bench/slow_fsync.so
$(SLOW_FSYNC_SO): tests/bench/slow_fsync.c
	@mkdir -p $(@D)
	$(CC) -O2 -fPIC -shared -Wall -Wextra $< -o $@ -ldl

bench-http: deps
	$(MAKE) $(SERVER_BIN) $(BARE_BIN) $(BENCH_MONGO_BIN) $(SLOW_FSYNC_SO) crowd-bin
	CROWD=$(CROWD_BIN) SLOW_FSYNC=$(SLOW_FSYNC_SO) \
	    bash tests/bench/bench_http.sh $(SERVER_BIN) $(BARE_BIN) $(BENCH_MONGO_BIN)

# A flash-sale crowd on the server's defaults: 10 000 keep-alive clients and
# 1000 silent + 1000 slow-header connections against 64 clients and a lone
# buyer, same run (tests/load/crowd, a Go tool; docs/benchmarks.md "Crowd").
GO        ?= $(shell command -v go 2>/dev/null || echo /usr/local/go/bin/go)
CROWD_BIN := $(O)/bench/crowd
.PHONY: bench-crowd crowd-bin
crowd-bin:
	@mkdir -p $(O)/bench
	cd tests/load/crowd && GOTOOLCHAIN=local $(GO) build -o $(abspath $(CROWD_BIN)) .

bench-crowd: crowd-bin
	$(MAKE) $(SERVER_BIN) $(BARE_BIN)
	BARE=$(BARE_BIN) bash tests/bench/bench_crowd.sh $(SERVER_BIN) $(CROWD_BIN)
	CROWD_MODE=mongo bash tests/bench/bench_crowd.sh $(SERVER_BIN) $(CROWD_BIN)

# Group commit of the embedded store against one write+fdatasync per append.
# Run on a real disk (BENCH_STORE_DIR), not tmpfs.
BENCH_STORE_DIR ?= build/bench-store-data
bench-store: deps
	$(MAKE) $(BENCH_STORE_BIN)
	rm -rf $(BENCH_STORE_DIR) && mkdir -p $(BENCH_STORE_DIR)
	$(BENCH_STORE_BIN) -d $(BENCH_STORE_DIR)
	rm -rf $(BENCH_STORE_DIR)

# --- fuzzing (tests/fuzz/) ------------------------------------------------

# One libFuzzer target per parser of untrusted input; each asserts a property
# (tests/fuzz/README.md). `make fuzz` runs each for FUZZ_SECONDS on a copy of
# its seed corpus (tests/fuzz/corpus/<target>/) and prints execs and coverage;
# `make fuzz FUZZ_TARGETS=fuzz_bus` runs only the ones named. Debian's clang
# only recommends the compiler-rt runtime that -fsanitize=fuzzer links
# (libclang_rt.fuzzer, asan, ubsan): FUZZ_PKGS installs it.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= $(patsubst tests/fuzz/%.c,%,$(wildcard tests/fuzz/fuzz_*.c))
FUZZ_BINS    := $(patsubst %,$(O)/fuzz/%,$(FUZZ_TARGETS))
FUZZ_OBJS     = $(call srv_objs,$(SERVER_PARTS)) $(O)/obj/demo-server/config.o
FUZZ_PKGS    := clang libclang-rt-dev

$(O)/obj/tests/fuzz/%.o: tests/fuzz/%.c
	@mkdir -p $(@D)
	$(CC) $(SRVCFLAGS) $(DEPFLAGS) -c $< -o $@

$(FUZZ_BINS): $(O)/fuzz/%: $(O)/obj/tests/fuzz/%.o $(FUZZ_OBJS) $(STLIB)
	@mkdir -p $(@D)
	$(CC) -fsanitize=fuzzer,address,undefined $(filter %.o,$^) -o $@ $(LDFLAGS) $(SRV_LIBS)

# The fuzz binaries exist only in the fuzz variant (clang, instrumented).
ifeq ($(VARIANT),fuzz)
fuzz-build: $(FUZZ_BINS)
else
fuzz-build:
	$(MAKE) VARIANT=fuzz fuzz-build
endif

fuzz: deps
	@$(MAKE) --no-print-directory deps-pkgs DEPS_PKGS="$(FUZZ_PKGS)"
	$(MAKE) VARIANT=fuzz fuzz-build FUZZ_TARGETS="$(FUZZ_TARGETS)"
	bash tests/fuzz/run.sh build/fuzz/fuzz $(FUZZ_SECONDS) $(FUZZ_TARGETS)

# --- install ---------------------------------------------------------------

$(O)/libstock.pc: pkgconfig/libstock.pc.in $(VERSION_H)
	@mkdir -p $(@D)
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@LIBDIR@|$(LIBDIR)|g' \
	    -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|g' -e 's|@VERSION@|$(VERSION)|g' \
	    -e 's|@LIBS_PRIVATE@|-lpthread|g' $< > $@

install: lib $(O)/libstock.pc
	install -d $(DESTDIR)$(LIBDIR) $(DESTDIR)$(INCLUDEDIR)/stock $(DESTDIR)$(PKGCONFIGDIR)
	install -m 0644 libstock/include/stock.h $(DESTDIR)$(INCLUDEDIR)/stock.h
	install -m 0644 libstock/include/stock/*.h $(DESTDIR)$(INCLUDEDIR)/stock/
	install -m 0755 $(SHLIB) $(DESTDIR)$(LIBDIR)/
	ln -sf libstock.so.$(VERSION) $(DESTDIR)$(LIBDIR)/$(SONAME)
	ln -sf $(SONAME) $(DESTDIR)$(LIBDIR)/libstock.so
	install -m 0644 $(STLIB) $(DESTDIR)$(LIBDIR)/
	install -m 0644 $(O)/libstock.pc $(DESTDIR)$(PKGCONFIGDIR)/libstock.pc

uninstall:
	rm -f $(DESTDIR)$(INCLUDEDIR)/stock.h
	rm -rf $(DESTDIR)$(INCLUDEDIR)/stock
	rm -f $(DESTDIR)$(LIBDIR)/libstock.so.$(VERSION) $(DESTDIR)$(LIBDIR)/$(SONAME)
	rm -f $(DESTDIR)$(LIBDIR)/libstock.so $(DESTDIR)$(LIBDIR)/libstock.a
	rm -f $(DESTDIR)$(PKGCONFIGDIR)/libstock.pc

# --- system packages -------------------------------------------------------

# deps-pkgs: the Debian packages (enough for `make run`); deps: also the
# MongoDB-compatible server the tests start (FerretDB, built with Go).
# Packages only the tests need: promtool (prometheus) lints /metrics, clang
# builds the libFuzzer targets.
TEST_PKGS := prometheus clang

deps: deps-pkgs
	@$(MAKE) --no-print-directory deps-pkgs DEPS_PKGS="$(TEST_PKGS)"
	@if command -v mongod >/dev/null || [ -n "$$STOCK_TEST_MONGO_URI" ]; then :; \
	else bash tests/services/ferretdb-install.sh || \
	    echo "deps: WARNING: FerretDB could not be built (Go missing?): MongoDB tests will be SKIPPED"; fi

deps-pkgs:
	@missing=""; for p in $(DEPS_PKGS); do \
	    dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	    echo "deps: installing$$missing"; \
	    SUDO=""; [ "$$(id -u)" -eq 0 ] || SUDO=sudo; \
	    $$SUDO apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

clean:
	rm -rf build

-include $(shell find $(O)/obj -name '*.d' 2>/dev/null)
