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
OPT := -O1 -g -fsanitize=thread -DCK_USE_CC_BUILTINS=1
SANLDFLAGS := -fsanitize=thread
else ifeq ($(VARIANT),asan)
OPT := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
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

LIB_SRCS := $(wildcard libstock/src/*.c)
LIB_OBJS := $(patsubst libstock/src/%.c,$(O)/obj/%.o,$(LIB_SRCS))
LIB_HDRS := $(wildcard libstock/include/*.h libstock/include/stock/*.h) libstock/src/internal.h

SONAME    := libstock.so.$(MAJOR)
SHLIB     := $(O)/libstock.so.$(VERSION)
STLIB     := $(O)/libstock.a
LIBS_PRIV := $(CK_LIBS) -lpthread

EXAMPLE_SRCS := $(wildcard examples/*.c)
EXAMPLES     := $(patsubst examples/%.c,$(O)/examples/%,$(EXAMPLE_SRCS))

UNIT_SRCS := $(wildcard tests/unit/*.c)
UNIT_HDRS := $(wildcard tests/unit/*.h)
UNIT_BIN  := $(O)/tests/unit_tests
CRITERION_LIBS := $(shell pkg-config --libs criterion 2>/dev/null || echo -lcriterion)

BENCH_BIN := $(O)/bench/bench_counters

# demo-server: the stores and the bus are also linked into the server unit
# tests (tests/server/test_*.c); libmongoc (MongoDB store) and hiredis (Redis
# pub/sub) come from Debian's libmongoc-dev and libhiredis-dev.
BSON_CFLAGS := $(shell pkg-config --cflags libbson-1.0 libmongoc-1.0 hiredis 2>/dev/null)
BSON_LIBS   := $(shell pkg-config --libs libmongoc-1.0 libbson-1.0 hiredis 2>/dev/null || \
                 echo -lmongoc-1.0 -lbson-1.0 -lhiredis)
STORE_SRCS  := demo-server/store.c demo-server/store_bson.c demo-server/crc32c.c \
               $(wildcard demo-server/store_mongo.c demo-server/bus_redis.c)
STORE_HDRS  := $(wildcard demo-server/*.h)
SERVER_UNIT_SRCS := $(wildcard tests/server/test_*.c)
SERVER_UNIT_BIN  := $(O)/tests/server_unit_tests
BENCH_STORE_BIN  := $(O)/bench/bench_store
SERVER_SRCS := $(filter-out $(STORE_SRCS),$(wildcard demo-server/*.c)) $(STORE_SRCS)
SERVER_BIN  := $(O)/demo-server
CIVETWEB_LIBS := -lcivetweb

# Debian packages the library, its tests and its benchmarks need.
DEPS_PKGS := gcc libc6-dev binutils make pkg-config libck-dev libcriterion-dev libbson-dev \
             libcivetweb-dev libmongoc-dev libhiredis-dev curl jq wrk siege redis-server redis-tools

.PHONY: all run lib static shared examples run-examples test unit check server-test multi-test check-tsan check-asan \
        bench bench-store bench-http install uninstall deps deps-pkgs clean test-install

all: lib examples $(SERVER_BIN)

$(SERVER_BIN): $(SERVER_SRCS) $(STORE_HDRS) $(STLIB)
	@mkdir -p $(@D)
	$(CC) $(APPCFLAGS) -Idemo-server $(BSON_CFLAGS) $(SERVER_SRCS) -o $@ $(SANLDFLAGS) $(LDFLAGS) \
	    $(STLIB) $(BSON_LIBS) $(CIVETWEB_LIBS) $(LIBS_PRIV)

# Starts the demo server on 127.0.0.1:5059 with the embedded store in ./data.
RUN_ARGS ?=
run: deps-pkgs
	$(MAKE) $(SERVER_BIN)
	exec $(SERVER_BIN) $(RUN_ARGS)

lib: static shared
static: $(STLIB)
shared: $(SHLIB)

$(O)/obj/%.o: libstock/src/%.c $(LIB_HDRS)
	@mkdir -p $(@D)
	$(CC) $(LIBCFLAGS) -c $< -o $@

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

$(O)/examples/%: examples/%.c $(STLIB) $(LIB_HDRS)
	@mkdir -p $(@D)
	$(CC) $(APPCFLAGS) $< -o $@ $(SANLDFLAGS) $(LDFLAGS) $(STLIB) $(LIBS_PRIV)

# Under TSan and ASan the same test files build against a Criterion-compatible
# shim (tests/unit/shim) that runs every test in one process: Criterion's
# sandbox cannot start under TSan, and under ASan LeakSanitizer reports
# nothing from Criterion's worker processes (a deliberate leak passed), while
# through the shim it checks every test at exit.
ifneq ($(filter tsan asan,$(VARIANT)),)
UNIT_EXTRA := -Itests/unit/shim tests/unit/shim/shim_main.c
UNIT_LIBS  :=
UNIT_FLAGS :=
else
UNIT_EXTRA :=
UNIT_LIBS  := $(CRITERION_LIBS)
UNIT_FLAGS := --jobs 2
endif

$(UNIT_BIN): $(UNIT_SRCS) $(UNIT_HDRS) $(STLIB) $(wildcard tests/unit/shim/*.c tests/unit/shim/criterion/*.h)
	@mkdir -p $(@D)
	$(CC) $(APPCFLAGS) $(UNIT_EXTRA) -Itests/unit $(UNIT_SRCS) -o $@ $(SANLDFLAGS) $(LDFLAGS) \
	    $(STLIB) $(UNIT_LIBS) $(LIBS_PRIV)

$(SERVER_UNIT_BIN): $(SERVER_UNIT_SRCS) $(STORE_SRCS) $(STORE_HDRS) $(STLIB) $(wildcard tests/unit/shim/*.c tests/unit/shim/criterion/*.h)
	@mkdir -p $(@D)
	$(CC) $(APPCFLAGS) $(UNIT_EXTRA) -Idemo-server $(BSON_CFLAGS) $(SERVER_UNIT_SRCS) $(STORE_SRCS) \
	    -o $@ $(SANLDFLAGS) $(LDFLAGS) $(STLIB) $(BSON_LIBS) $(UNIT_LIBS) $(LIBS_PRIV)

$(BENCH_STORE_BIN): tests/bench/bench_store.c $(STORE_SRCS) $(STORE_HDRS) $(STLIB)
	@mkdir -p $(@D)
	$(CC) $(APPCFLAGS) -Idemo-server $(BSON_CFLAGS) $< $(STORE_SRCS) -o $@ $(SANLDFLAGS) $(LDFLAGS) \
	    $(STLIB) $(BSON_LIBS) $(LIBS_PRIV)

$(BENCH_BIN): tests/bench/bench_counters.c $(STLIB) $(LIB_HDRS)
	@mkdir -p $(@D)
	$(CC) $(APPCFLAGS) $< -o $@ $(SANLDFLAGS) $(LDFLAGS) $(STLIB) $(LIBS_PRIV)

# --- tests -----------------------------------------------------------------

UNIT_RUN := $(UNIT_BIN) $(UNIT_FLAGS)

# The server unit tests get a real redis-server and MongoDB-compatible server
# (tests/services/run.sh starts and stops them).
unit: $(UNIT_BIN) $(SERVER_UNIT_BIN)
	$(UNIT_RUN)
	bash tests/services/run.sh $(SERVER_UNIT_BIN) $(UNIT_FLAGS)

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
	bash tests/server/multi_test.sh $(SERVER_BIN) $(MONGO_DOCS_BIN)

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
$(BARE_BIN): tests/bench/bare_civetweb.c
	@mkdir -p $(@D)
	$(CC) $(APPCFLAGS) $< -o $@ $(SANLDFLAGS) $(LDFLAGS) $(CIVETWEB_LIBS) $(LIBS_PRIV)

# The demo server against a bare civetweb handler and Redis (appendfsync
# always), measured in the same run. Needs wrk and redis-server (make deps).
bench-http: deps
	$(MAKE) $(SERVER_BIN) $(BARE_BIN) $(BENCH_MONGO_BIN)
	bash tests/bench/bench_http.sh $(SERVER_BIN) $(BARE_BIN) $(BENCH_MONGO_BIN)

# Group commit of the embedded store against one write+fdatasync per append.
# Run on a real disk (BENCH_STORE_DIR), not tmpfs.
BENCH_STORE_DIR ?= build/bench-store-data
bench-store: deps
	$(MAKE) $(BENCH_STORE_BIN)
	rm -rf $(BENCH_STORE_DIR) && mkdir -p $(BENCH_STORE_DIR)
	$(BENCH_STORE_BIN) -d $(BENCH_STORE_DIR)
	rm -rf $(BENCH_STORE_DIR)

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
deps: deps-pkgs
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
