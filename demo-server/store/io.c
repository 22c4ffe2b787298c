/*
 * The embedded store's system calls. Writes, syncs and truncations go
 * through the struct store_io hooks when the caller gave them (fault
 * injection in tests) and are the plain system calls otherwise; a short
 * write is continued until the whole buffer is on its way. Also the two
 * helpers start-up needs: mapping a whole file read-only and mkdir -p.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "store/internal.h"

static ssize_t
io_pwrite(struct store *s, enum store_io_file f, int fd, const void *buf, size_t n, off_t off)
{
	if (s->have_io && s->io.pwrite != NULL)
		return s->io.pwrite(s->io.ctx, f, fd, buf, n, off);
	return pwrite(fd, buf, n, off);
}

int
store__io_sync(struct store *s, enum store_io_file f, int fd)
{
	if (s->have_io && s->io.sync != NULL)
		return s->io.sync(s->io.ctx, f, fd);
	return f == STORE_IO_DIR ? fsync(fd) : fdatasync(fd);
}

int
store__io_ftruncate(struct store *s, enum store_io_file f, int fd, off_t len)
{
	if (s->have_io && s->io.ftruncate != NULL)
		return s->io.ftruncate(s->io.ctx, f, fd, len);
	return ftruncate(fd, len);
}

int
store__io_write_all(struct store *s, enum store_io_file f, int fd, const uint8_t *buf, size_t n,
    off_t off)
{
	while (n > 0) {
		ssize_t w = io_pwrite(s, f, fd, buf, n, off);

		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		if (w == 0) {
			errno = ENOSPC;
			return -1;
		}
		ASSERT((size_t)w <= n); /* a hook that claims more than it was given */
		buf += w;
		n -= (size_t)w;
		off += w;
	}
	return 0;
}

int
store__io_map(int fd, const uint8_t **p, size_t *size)
{
	struct stat sb;
	void *m;

	*p = NULL;
	*size = 0;
	if (fstat(fd, &sb) != 0)
		return -1;
	if (sb.st_size == 0)
		return 0;
	m = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
	if (m == MAP_FAILED)
		return -1;
	*p = m;
	*size = (size_t)sb.st_size;
	return 0;
}

int
store__io_mkdir_p(const char *path)
{
	char *p = strdup(path), *q;
	int rc = 0;

	if (p == NULL)
		return -1;
	for (q = p + 1; *q != '\0'; q++) {
		if (*q != '/')
			continue;
		*q = '\0';
		if (mkdir(p, 0700) != 0 && errno != EEXIST)
			rc = -1;
		*q = '/';
	}
	if (mkdir(p, 0700) == 0 || errno == EEXIST)
		rc = 0;
	else
		rc = -1;
	free(p);
	return rc;
}
