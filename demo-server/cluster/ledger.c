/*
 * The sales ledger file (ledger.h): opening, locking, mapping, validating
 * and slot lookup. lease.c decides what the counts mean; this file only
 * keeps them, in a layout a later process (after kill -9) maps again.
 *
 * Format (little-endian, native alignment, 24664 bytes; unchanged since the
 * first version, so existing data dirs keep working):
 *   magic "STKLDG01" | host[72] (NUL-terminated host id) | nslots u32 (256)
 *   | pad u32 | 256 x { sku[72], granted u64, sold u64, returned u64 }
 * A free slot has sku[0] == 0. Slots are claimed at open and never freed.
 *
 * Why raw atomics here: the `sold` words live in a MAP_SHARED file page that
 * outlives the process, so they cannot be libstock objects (whose layout is
 * private to a build); each buy adds to one with a single atomic add, and the
 * lease thread and peeks read it with an atomic load. These three accesses
 * (ledger_add_sold, ledger_sold, ledger_set_sold) are the only raw atomics
 * of the cluster part.
 */
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <stock.h>

#include "cluster/ledger.h"
#include "common/assert.h"
#include "common/doc.h"
#include "log.h"

#define LEDGER_MAGIC "STKLDG01"

struct ledger_file {
	char magic[8];
	char host[72];
	uint32_t nslots;
	uint32_t pad;
	struct ledger_slot slot[LEDGER_SLOTS];
};

_Static_assert(sizeof(struct ledger_slot) == 96, "ledger slot layout is a file format");
_Static_assert(offsetof(struct ledger_file, slot) == 88, "ledger header layout is a file format");
_Static_assert(sizeof(((struct ledger_slot *)0)->sku) > STOCK_SKU_MAX, "a SKU fits a slot");
_Static_assert(sizeof(((struct ledger_file *)0)->host) > HOST_ID_MAX, "a host id fits");

struct ledger {
	struct ledger_file *f; /* the mapping */
	int fd;                /* holds the flock */
	char path[4096];
};

/* A slot's SKU: empty, or a valid SKU with its NUL inside the slot. */
static bool
slot_valid(const struct ledger_slot *s, size_t *len)
{
	*len = strnlen(s->sku, sizeof s->sku);
	return *len == 0 || (*len < sizeof s->sku && stock_sku_valid(s->sku, *len));
}

/* An existing file's contents: ours, well-formed, no SKU twice. */
static int
validate(const struct ledger *l, const char *host)
{
	const struct ledger_file *f = l->f;

	if (memcmp(f->magic, LEDGER_MAGIC, 8) != 0 || f->nslots != LEDGER_SLOTS) {
		log_error("lease", "%s is not a sales ledger", l->path);
		return STOCK_EINVAL;
	}
	if (strnlen(f->host, sizeof f->host) == sizeof f->host || strcmp(f->host, host) != 0) {
		log_error("lease", "%s belongs to host id '%.*s', not '%s': use that host id or "
		    "another data dir", l->path, (int)strnlen(f->host, sizeof f->host), f->host, host);
		return STOCK_EINVAL;
	}
	for (size_t i = 0; i < LEDGER_SLOTS; i++) {
		size_t len;

		if (!slot_valid(&f->slot[i], &len)) {
			log_error("lease", "%s: slot %zu holds no valid SKU: damaged ledger", l->path, i);
			return STOCK_EINVAL;
		}
		for (size_t k = 0; len > 0 && k < i; k++) {
			if (strcmp(f->slot[k].sku, f->slot[i].sku) == 0) {
				log_error("lease", "%s: %s has two slots: damaged ledger", l->path,
				    f->slot[i].sku);
				return STOCK_EINVAL;
			}
		}
	}
	return 0;
}

/* Open, lock and size the file; *@created when it was empty (new). */
static int
file_open(struct ledger *l, bool *created)
{
	struct stat sb;

	l->fd = open(l->path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (l->fd < 0) {
		log_error("lease", "cannot open %s: %s", l->path, strerror(errno));
		return STOCK_ESYS;
	}
	if (flock(l->fd, LOCK_EX | LOCK_NB) != 0) {
		log_error("lease", "%s is in use by another server", l->path);
		return STOCK_EBUSY;
	}
	if (fstat(l->fd, &sb) != 0) {
		log_error("lease", "%s: %s", l->path, strerror(errno));
		return STOCK_ESYS;
	}
	*created = sb.st_size == 0;
	if (!*created && (size_t)sb.st_size != sizeof *l->f) {
		log_error("lease", "%s: %lld bytes, a sales ledger has %zu", l->path,
		    (long long)sb.st_size, sizeof *l->f);
		return STOCK_EINVAL;
	}
	if (*created && ftruncate(l->fd, sizeof *l->f) != 0) {
		log_error("lease", "%s: %s", l->path, strerror(errno));
		return STOCK_ESYS;
	}
	return 0;
}

int
ledger_open(struct ledger **out, const char *path, const char *host)
{
	struct ledger *l;
	bool created = false;
	int rc;

	*out = NULL;
	ASSERT(host_id_valid(host, strlen(host)));
	if ((l = calloc(1, sizeof *l)) == NULL)
		return STOCK_ENOMEM;
	l->fd = -1;
	if (snprintf(l->path, sizeof l->path, "%s", path) >= (int)sizeof l->path) {
		free(l);
		return STOCK_EINVAL;
	}
	if ((rc = file_open(l, &created)) != 0)
		goto fail;
	l->f = mmap(NULL, sizeof *l->f, PROT_READ | PROT_WRITE, MAP_SHARED, l->fd, 0);
	if (l->f == MAP_FAILED) {
		l->f = NULL;
		log_error("lease", "cannot map %s: %s", l->path, strerror(errno));
		rc = STOCK_ESYS;
		goto fail;
	}
	if (created) {
		memcpy(l->f->magic, LEDGER_MAGIC, 8);
		snprintf(l->f->host, sizeof l->f->host, "%s", host);
		l->f->nslots = LEDGER_SLOTS;
		if (msync(l->f, sizeof *l->f, MS_SYNC) != 0 || fsync(l->fd) != 0) {
			log_error("lease", "%s: %s", l->path, strerror(errno));
			rc = STOCK_ESYS;
			goto fail;
		}
	} else if ((rc = validate(l, host)) != 0) {
		goto fail;
	}
	*out = l;
	return 0;
fail:
	ledger_close(l);
	return rc;
}

void
ledger_close(struct ledger *l)
{
	if (l == NULL)
		return;
	if (l->f != NULL) {
		msync(l->f, sizeof *l->f, MS_SYNC);
		munmap(l->f, sizeof *l->f);
	}
	if (l->fd >= 0)
		close(l->fd); /* releases the flock */
	free(l);
}

/* @sku's slot, else the first free one (not claimed), else NULL: the ledger is full. */
static struct ledger_slot *
slot_of(struct ledger *l, const char *sku)
{
	struct ledger_slot *free_slot = NULL;

	for (size_t i = 0; i < LEDGER_SLOTS; i++) {
		struct ledger_slot *s = &l->f->slot[i];

		if (s->sku[0] == '\0') {
			if (free_slot == NULL)
				free_slot = s;
		} else if (strcmp(s->sku, sku) == 0) {
			return s;
		}
	}
	return free_slot;
}

struct ledger_slot *
ledger_slot(struct ledger *l, const char *sku)
{
	struct ledger_slot *s;

	ASSERT(stock_sku_valid(sku, strlen(sku)));
	if ((s = slot_of(l, sku)) != NULL && s->sku[0] == '\0') {
		memset(s, 0, sizeof *s);
		snprintf(s->sku, sizeof s->sku, "%s", sku);
	}
	return s;
}

bool
ledger_has_room(struct ledger *l, const char *sku)
{
	return slot_of(l, sku) != NULL;
}

/* Raw atomic 1 of 3: the buy path's add, in the shared page (see the top). */
void
ledger_add_sold(struct ledger_slot *s, uint64_t n)
{
	__atomic_add_fetch(&s->sold, n, __ATOMIC_RELEASE);
}

/* Raw atomic 2 of 3: buyers add concurrently with this read. */
uint64_t
ledger_sold(const struct ledger_slot *s)
{
	return __atomic_load_n(&s->sold, __ATOMIC_ACQUIRE);
}

/* Raw atomic 3 of 3: at open, before buys, but the word is shared with them. */
void
ledger_set_sold(struct ledger_slot *s, uint64_t sold)
{
	__atomic_store_n(&s->sold, sold, __ATOMIC_RELEASE);
}

int
ledger_sync(struct ledger *l)
{
	if (msync(l->f, sizeof *l->f, MS_SYNC) == 0)
		return 0;
	log_warn("lease", "msync of %s: %s", l->path, strerror(errno));
	return STOCK_ESYS;
}
