/*
 * CRC-32C (Castagnoli) for the embedded store's record and snapshot
 * checksums. Table-driven, no hardware instructions, no global state beyond
 * tables built once on first use.
 */
#ifndef DEMO_CRC32C_H
#define DEMO_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/**
 * crc32c - extend a CRC-32C over @len bytes at @buf.
 * @crc: 0 to start, or the value a previous call returned (to checksum data
 *       that arrives in pieces: crc32c(crc32c(0, a), b) == crc32c(0, a || b)).
 * @buf: the bytes; may be NULL when @len is 0.
 * @len: number of bytes.
 *
 * Returns the CRC-32C (polynomial 0x1EDC6F41, reflected, initial value and
 * final XOR 0xFFFFFFFF: the iSCSI / ext4 / LevelDB variant, so
 * crc32c(0, "123456789", 9) == 0xE3069283). Thread-safe.
 */
uint32_t crc32c(uint32_t crc, const void *buf, size_t len);

#endif /* DEMO_CRC32C_H */
