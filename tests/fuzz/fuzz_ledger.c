/*
 * libFuzzer target: the lease sales ledger file (cluster/ledger.c), opened
 * the way lease_open does (ledger_open on DATA_DIR/ledger.bin with our host
 * id, then ledger_slot per leased SKU).
 *
 * Input: one flag byte, then the file. Flags:
 *   bits 0-1  how the bytes become the 24664-byte file (ledger.c "Format"):
 *             0 raw (written as is: any size), 1 laid over a valid empty
 *             ledger of our host from offset 0, 2-3 a valid empty ledger
 *             with the first 88 bytes (header) laid over it, then records of
 *             1 byte slot number + 96 bytes slot, so short inputs reach
 *             every slot
 *   bits 2-3  our host id: "A", "SuperPrimary", 64 x 'h', "fuzz-host_1"
 *   bit 4     after the checks, claim a slot for a new SKU
 * The file goes into a fresh directory under /dev/shm. Properties, beyond
 * "no crash, no leak" under ASan + UBSan:
 *   1. ledger_open accepts exactly the files a reference check written here
 *      from ledger.h accepts: 24664 bytes, magic "STKLDG01", 256 slots, our
 *      host id NUL-terminated in its 72 bytes, every slot empty (sku[0] ==
 *      0) or a valid SKU (stock_sku_valid) NUL-terminated in its 72 bytes,
 *      no SKU twice. A refusal is STOCK_EINVAL. An empty file is a new
 *      ledger. (A partial or inverted check would let a damaged ledger
 *      count sales twice, or refuse a good one at start-up.)
 *   2. Every slot it exposes (ledger_slot of each SKU in the file) is that
 *      SKU's, with the counts in the file's bytes, unchanged; the same slot
 *      again on a second lookup; a new SKU gets a zeroed slot while one is
 *      free and NULL when the ledger is full.
 *   3. Close and a second open see the same: accepted again, the same SKUs
 *      and counts, plus the claimed slot; a refused file is refused again.
 * Counts are not range-checked by ledger_open (lease.c reconcile compares
 * them with MongoDB before use); build with -DFUZZ_LEDGER_STRICT_COUNTS to
 * also require granted, sold, returned <= STOCK_COUNT_MAX and sold +
 * returned <= granted of every slot an accepted ledger exposes.
 */
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <stock.h>

#include "cluster/ledger.h"
#include "common/doc.h"
#include "log.h"

#define CHECK(c)                                                                              \
	do {                                                                                  \
		if (!(c)) {                                                                   \
			fprintf(stderr, "fuzz_ledger: property failed: %s (line %d)\n", #c,     \
			    __LINE__);                                                        \
			cleanup(); /* abort skips atexit: leave nothing in /dev/shm */        \
			abort();                                                              \
		}                                                                             \
	} while (0)

static void cleanup(void);

/* ledger.c "Format", spelled out. */
#define L_MAGIC "STKLDG01"
#define L_HOST_OFF 8
#define L_HOST_LEN 72
#define L_NSLOTS_OFF 80
#define L_SLOT_OFF 88
#define L_SLOT_SIZE 96
#define L_SKU_LEN 72
#define L_NSLOTS 256
#define L_SIZE (L_SLOT_OFF + L_NSLOTS * L_SLOT_SIZE)

static const char *const hosts[4] = {
	"A", "SuperPrimary", "hhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhh",
	"fuzz-host_1",
};

static char base_dir[256];
static char path[320];
static uint8_t file[L_SIZE + 4096];

static uint64_t
le64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

static uint32_t
le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* A valid, empty ledger of @host. */
static void
template(uint8_t *f, const char *host)
{
	memset(f, 0, L_SIZE);
	memcpy(f, L_MAGIC, 8);
	memcpy(f + L_HOST_OFF, host, strlen(host));
	f[L_NSLOTS_OFF] = L_NSLOTS & 0xff;
	f[L_NSLOTS_OFF + 1] = L_NSLOTS >> 8;
}

static const uint8_t *
slot_at(const uint8_t *f, size_t i)
{
	return f + L_SLOT_OFF + i * L_SLOT_SIZE;
}

/* The reference: would a ledger.h-conforming open accept @f (@n bytes)? */
static bool
ref_valid(const uint8_t *f, size_t n, const char *host)
{
	size_t hl;

	if (n != L_SIZE || memcmp(f, L_MAGIC, 8) != 0 || le32(f + L_NSLOTS_OFF) != L_NSLOTS)
		return false;
	hl = strnlen((const char *)f + L_HOST_OFF, L_HOST_LEN);
	if (hl == L_HOST_LEN || hl != strlen(host) || memcmp(f + L_HOST_OFF, host, hl) != 0)
		return false;
	for (size_t i = 0; i < L_NSLOTS; i++) {
		const char *sku = (const char *)slot_at(f, i);
		size_t sl = strnlen(sku, L_SKU_LEN);

		if (sl == 0)
			continue;
		if (sl == L_SKU_LEN || !stock_sku_valid(sku, sl))
			return false;
		for (size_t k = 0; k < i; k++)
			if (strncmp((const char *)slot_at(f, k), sku, L_SKU_LEN) == 0)
				return false;
	}
	return true;
}

static void
write_file(const uint8_t *p, size_t n)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

	CHECK(fd >= 0);
	CHECK(n == 0 || write(fd, p, n) == (ssize_t)n);
	close(fd);
}

/* Property 2 on an open ledger @l of the reference file @f. */
static void
check_slots(struct ledger *l, const uint8_t *f)
{
	for (size_t i = 0; i < L_NSLOTS; i++) {
		const uint8_t *s = slot_at(f, i);
		const char *sku = (const char *)s;
		struct ledger_slot *ls;

		if (sku[0] == '\0')
			continue;
		ls = ledger_slot(l, sku);
		CHECK(ls != NULL && strcmp(ls->sku, sku) == 0);
		CHECK(ls->granted == le64(s + L_SKU_LEN));
		CHECK(ledger_sold(ls) == le64(s + L_SKU_LEN + 8));
		CHECK(ls->returned == le64(s + L_SKU_LEN + 16));
		CHECK(ledger_slot(l, sku) == ls);
#ifdef FUZZ_LEDGER_STRICT_COUNTS
		CHECK(ls->granted <= STOCK_COUNT_MAX && ledger_sold(ls) <= STOCK_COUNT_MAX &&
		    ls->returned <= STOCK_COUNT_MAX);
		CHECK(ledger_sold(ls) <= ls->granted && ls->returned <= ls->granted - ledger_sold(ls));
#endif
	}
}

static void
sink(void *arg, enum log_level level, const char *who, const char *msg)
{
	(void)arg, (void)level, (void)who, (void)msg;
}

static void
cleanup(void)
{
	unlink(path);
	rmdir(base_dir);
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	const char *tmp = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : getenv("TMPDIR");

	(void)argc, (void)argv;
	log_set_sink(sink, NULL);
	snprintf(base_dir, sizeof base_dir, "%s/fuzz_ledger.XXXXXX", tmp != NULL ? tmp : "/tmp");
	CHECK(mkdtemp(base_dir) != NULL);
	snprintf(path, sizeof path, "%s/ledger.bin", base_dir);
	atexit(cleanup);
	return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct ledger *l = NULL;
	const char *host;
	size_t n;
	bool valid, created, have_free = false;
	int rc, rc2;
	uint8_t flags;
	static const char newsku[] = "fuzz:new-sku";
	struct ledger_slot *claimed = NULL;

	if (size < 1 || size > sizeof file)
		return 0;
	flags = data[0];
	data++, size--;
	host = hosts[(flags >> 2) & 3];
	switch (flags & 3) {
	case 0:
		memcpy(file, data, size);
		n = size;
		break;
	case 1:
		template(file, host);
		memcpy(file, data, size < L_SIZE ? size : L_SIZE);
		n = L_SIZE;
		break;
	default:
		template(file, host);
		memcpy(file, data, size < L_SLOT_OFF ? size : L_SLOT_OFF);
		for (size_t o = L_SLOT_OFF; o < size; o += 1 + L_SLOT_SIZE) {
			size_t k = size - o - 1 < L_SLOT_SIZE ? size - o - 1 : L_SLOT_SIZE;
			memcpy(file + L_SLOT_OFF + (size_t)data[o] * L_SLOT_SIZE, data + o + 1, k);
		}
		n = L_SIZE;
		break;
	}
	write_file(file, n);
	created = n == 0;
	valid = created || ref_valid(file, n, host);

	/* 1: accepted exactly when the reference accepts. */
	rc = ledger_open(&l, path, host);
	if ((rc == 0) != valid)
		fprintf(stderr, "fuzz_ledger: ledger_open %d (%s), reference says %s\n", rc,
		    stock_strerror(rc), valid ? "valid" : "invalid");
	CHECK((rc == 0) == valid);
	if (rc != 0) {
		CHECK(rc == STOCK_EINVAL && l == NULL);
		/* 3: refused again, the file untouched. */
		rc2 = ledger_open(&l, path, host);
		CHECK(rc2 == rc && l == NULL);
		goto out;
	}
	if (created)
		template(file, host); /* what a new ledger must hold */
	/* 2: every slot as in the file. */
	check_slots(l, file);
	for (size_t i = 0; i < L_NSLOTS; i++)
		have_free |= slot_at(file, i)[0] == '\0';
	if (flags & 16) {
		bool known = false;
		for (size_t i = 0; i < L_NSLOTS; i++)
			known |= strncmp((const char *)slot_at(file, i), newsku, L_SKU_LEN) == 0;
		claimed = ledger_slot(l, newsku);
		if (!known) {
			CHECK((claimed != NULL) == have_free);
			if (claimed != NULL) {
				CHECK(strcmp(claimed->sku, newsku) == 0 && claimed->granted == 0 &&
				    ledger_sold(claimed) == 0 && claimed->returned == 0);
				/* the file now holds it in the first free slot */
				for (size_t i = 0; i < L_NSLOTS; i++) {
					uint8_t *s = file + L_SLOT_OFF + i * L_SLOT_SIZE;
					if (s[0] == '\0') {
						memset(s, 0, L_SLOT_SIZE);
						memcpy(s, newsku, sizeof newsku);
						break;
					}
				}
			}
		}
	}
	ledger_close(l);
	l = NULL;

	/* 3: the second open sees the same. */
	rc2 = ledger_open(&l, path, host);
	CHECK(rc2 == 0 && l != NULL);
	check_slots(l, file);
	ledger_close(l);
out:
	unlink(path);
	return 0;
}
