/* qcowkit: big-endian accessors over byte arrays (never cast packed structs). */
#ifndef QK_UTIL_BYTEORDER_H
#define QK_UTIL_BYTEORDER_H

#include <endian.h>
#include <stdint.h>
#include <string.h>

/* Each is one load or store of the whole word and a byte swap: the
 * compilers make the same of the byte-by-byte form in a plain build, but
 * not under ASan, which checks every byte access of it (and that is where
 * the fuzzers spend their time: tables of millions of entries). */
static inline uint16_t
be16_get (const uint8_t *p)
{
  uint16_t v;
  memcpy (&v, p, sizeof v);
  return be16toh (v);
}

static inline uint32_t
be32_get (const uint8_t *p)
{
  uint32_t v;
  memcpy (&v, p, sizeof v);
  return be32toh (v);
}

static inline uint64_t
be64_get (const uint8_t *p)
{
  uint64_t v;
  memcpy (&v, p, sizeof v);
  return be64toh (v);
}

static inline void
be16_put (uint8_t *p, uint16_t v)
{
  v = htobe16 (v);
  memcpy (p, &v, sizeof v);
}

static inline void
be32_put (uint8_t *p, uint32_t v)
{
  v = htobe32 (v);
  memcpy (p, &v, sizeof v);
}

static inline void
be64_put (uint8_t *p, uint64_t v)
{
  v = htobe64 (v);
  memcpy (p, &v, sizeof v);
}

/* n big-endian words read into w, to host order, in place. */
static inline void
be64_array (uint64_t *w, uint64_t n)
{
  for (uint64_t i = 0; i < n; i++)
    w[i] = be64toh (w[i]);
}

#endif
