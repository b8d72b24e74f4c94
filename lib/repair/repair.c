/* lib/repair/repair.c: repair a qcow2 image in place (qk_repair_run).
 *
 * The repair is the check (lib/check) run again after each pass of fixes:
 * the check finds, the pass plans a group of changes, asks once for the
 * group (a latch group, as e2fsck asks "Fix?" once for many blocks),
 * writes, flushes, and the image is reopened over the same write stack so
 * that no cache survives a write. Writes go through one stack (lib/io):
 *   image file (read-write, QEMU's write locks: refused while in use)
 *   <- fault injection (QCOWKIT_FAULT, for the fault sweep tests)
 *   <- undo journal (made before the first write, when asked for)
 *
 * Crash-safety protocol. The passes, in this order, each ending with a
 * flush (fdatasync) before the next one reads:
 *   0. Snapshot table entries whose extra data size field alone is wrong
 *      (pass_snapshots): the 4-byte field, one entry at a time, each
 *      followed by a flush and a new check. Either value leaves a table
 *      that reads (the old one as before); a rerun fixes the next.
 *   0b. The snapshot table written again when entries have extra data
 *      QEMU rejects (too long: cut to 1024 bytes; too short in a version
 *      3 image: completed) or name nothing (dropped): the new table past
 *      the end of the file, flush, one 12-byte header write (nb_snapshots
 *      and snapshots_offset), flush; the new table's clusters get their
 *      refcounts before the switch where a refcount block covers them
 *      (claim). A crash before the header write leaves the old table (and
 *      maybe leaks); after it, the new one (pass 2 sets what claim could
 *      not, and frees the old table).
 *   1. Table entries (pass_entries): reserved bits stripped, misaligned
 *      preallocated zero clusters made plain zero clusters, entries
 *      pointing outside the file or misaligned cleared. L2 tables first,
 *      then L1 tables. Each write is one run of entries of one table. A
 *      crash in the middle leaves some entries fixed and others as found:
 *      every entry is either, so the image checks no worse (a cleared
 *      entry's cluster becomes a leak: space, not data), and a rerun finds
 *      and fixes the rest.
 *   1b. A host cluster mapped at two guest offsets of the active image
 *      (pass_duplicates): the second gets a copy, written past the end of
 *      the file and flushed, then given refcount 1 where a refcount block
 *      covers it (claim; flushed), before its L2 entry (8 bytes) is
 *      switched to it; flush. A crash before the switch leaves bytes past
 *      the end that nothing references (or a leak); after it, the copy,
 *      with its refcount or, where no block covered it, without (pass 2
 *      sets it): no worse than the shared cluster's refcount.
 *   1c. Persistent bitmaps left in use (pass_bitmaps). Keep (default):
 *      the bitmap's table written in place as all ones (each entry: offset
 *      0, bit 0), flush, then its in-use flag cleared (4 bytes), flush. A
 *      crash between leaves it in use as found (a rerun finishes); its old
 *      data clusters are leaks for pass 2. Drop (QK_REPAIR_DROP_BITMAPS):
 *      a directory of the other entries past the end of the file, flush,
 *      claim, then one 24-byte write of the extension payload, flush; with
 *      no bitmap left, the header cluster written again without the
 *      extension and with the autoclear bit clear, in one write from
 *      offset 0 (as qcow2_update_header), flush. A crash before that write
 *      leaves the old directory; after it, the new one.
 *   2. Refcounts (pass_refcounts), from the references the check counted.
 *      In place when the structure is sound and every cluster in use has a
 *      refcount block: each changed block is written once (the run of
 *      changed entries); a crash leaves every refcount either as found or
 *      right, never another value. Otherwise rebuilt as QEMU rebuilds it
 *      (qcow2-refcount.c, rebuild_refcount_structure): a new table and
 *      blocks written past the end of the file, nothing points at them
 *      yet; flush; then the header's refcount_table_offset and
 *      refcount_table_clusters, one 12-byte write inside one sector;
 *      flush. A crash before the header write leaves the old image and
 *      some clusters past its end that nothing references (qemu-img and
 *      qcowkit count them as nothing); after it, the new structure, whole.
 *   3. The dirty bit, when the refcounts are complete and right: one
 *      header write; flush.
 *   4. COPIED flags (pass_copied), now that refcounts are right: L2 tables,
 *      then the L1 table; flush. Either value of a flag is consistent
 *      data, so a crash leaves only flags still to correct.
 *   5. The corrupt bit, when the image then checks clean: one header
 *      write; flush.
 * Passes 0 to 4 run in rounds until a round writes nothing (at most 4):
 * a fix can make another possible (a table skipped for overlapping the
 * old refcount structure can be fixed once the rebuild moved it), and a
 * second repair, which starts from the same bytes, must write nothing.
 * No write lands in a host cluster two structures claim (an L1 table
 * that is also guest data, an L1 table at offset 0 under the header, a
 * "refcount block" that is an L2 table): the check hands every such
 * cluster over (qk_refmap.conflicted), the passes leave them, and put()
 * refuses one as the last line of defence.
 * A rerun after a crash anywhere repeats the check and makes the fixes
 * still needed: each pass derives its changes from the image as it is.
 * The undo journal holds the old bytes of every range before it is first
 * written (lib/io/undo.c), so qk_undo_apply puts the image back byte for
 * byte whatever point the repair reached.
 *
 * Never written: what the check did not find, guest data clusters, the
 * snapshot table other than by passes 0 and 0b, bitmaps other than those
 * left in use (pass 1c). */
#include <config.h>

#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"
#include "image/image.h"
#include "image/spec.h"
#include "repair/refstruct.h"
#include "check/check.h"
#include "io/io.h"
#include "util/path.h"
#include "util/problems.h"

enum {
#define FIX(code, name, flags, prompt, done, desc) FX_##name,
#include "repair/fixes.def"
#undef FIX
  FX_N
};

#define PREEN QK_FIX_PREEN
#define LOSES QK_FIX_LOSES_DATA
#define LEAKS QK_FIX_LEAKS

static const struct qk_fixrow fixrows[] = {
#define FIX(code, name, flags, prompt, done, desc) \
  { code, #name, flags, prompt, done, desc },
#include "repair/fixes.def"
#undef FIX
};

#undef PREEN
#undef LOSES
#undef LEAKS

QK_EXPORT size_t
qk_fix_count (void)
{
  return FX_N;
}

QK_EXPORT int
qk_fix_info (size_t i, uint32_t *code, const char **name, unsigned *flags,
             const char **description)
{
  return qk_fixrows_info (fixrows, FX_N, i, code, name, flags, description);
}

/* A table with entries to look at again (pass 1 and 4). */
struct tref {
  uint64_t offset;      /* the table */
  uint64_t guest_base;  /* guest offset of its entry 0, or QK_NONE */
  int64_t source;       /* -1 active, else snapshot index (L1 tables) */
  bool l1;
  uint32_t entries;     /* L1: its size */
};

struct qk_repair {
  unsigned flags;
  char *undo_path;
  struct qk_fixer fixer;    /* the mode, the questions, the offers */
  qk_problem_fn report, note;
  void *report_opaque;
  uint64_t report_limit;
  struct qk_open_options opts;
  bool has_opts;

  struct qk_check_result before, after;
  bool have_before;
  struct qk_lost *lost;
  size_t n_lost, cap_lost;
  uint64_t n_writes;        /* writes made this run (a pass wrote: check
                               again; qk_repair_wrote) */
  uint64_t checked_at;      /* n_writes when the last check ran */
  const struct qk_refmap *map;  /* the current check's (conflicts) */

  /* one run */
  const char *path;
  struct qk_writer w;       /* file (+ fault) (+ undo journal) */
  struct qk_image *img;
  bool first_check;         /* report the problems of this check */
  /* what the current check found */
  uint64_t n_code[0x0b];    /* phases 0..0a: counts by class, below */
  struct tref *tabs;        /* tables with entries to fix */
  size_t n_tabs, cap_tabs;
  bool any_past_eof_table;  /* a PAST_EOF of an L2 table (no entry) */
  bool refstruct_broken;    /* the refcount structure must be rebuilt */
  unsigned refstruct_problems;
  uint64_t n_leak, n_low, n_copied, n_entry, n_overflow;
  uint64_t n_bm_in_use;     /* BM_IN_USE */
  bool bm_bad;              /* a bitmap problem other than BM_IN_USE */
  struct dup { uint64_t host, guest; } *dups;   /* DUPLICATE_MAPPING */
  size_t n_dups, cap_dups;
};

QK_EXPORT struct qk_repair *
qk_repair_new (void)
{
  struct qk_repair *r = calloc (1, sizeof *r);
  if (r == NULL)
    set_error (ENOMEM, "qk_repair_new");
  return r;
}

static void
clear_results (struct qk_repair *r)
{
  qk_fixer_reset (&r->fixer);
  r->n_lost = 0;
  r->have_before = false;
  r->n_writes = r->checked_at = 0;
  memset (&r->before, 0, sizeof r->before);
  memset (&r->after, 0, sizeof r->after);
}

QK_EXPORT void
qk_repair_free (struct qk_repair *r)
{
  if (r == NULL)
    return;
  clear_results (r);
  qk_fixer_free (&r->fixer);
  free (r->lost);
  free (r->tabs);
  free (r->dups);
  free (r->undo_path);
  free (r);
}

QK_EXPORT int
qk_repair_set_mode (struct qk_repair *r, enum qk_repair_mode mode)
{
  if (mode > QK_REPAIR_ASK) {
    set_error (EINVAL, "qk_repair_set_mode: invalid mode %d", (int) mode);
    return -1;
  }
  r->fixer.mode = mode;
  return 0;
}

QK_EXPORT int
qk_repair_set_flags (struct qk_repair *r, unsigned flags)
{
  if (flags & ~(QK_REPAIR_LEAKS_ONLY | QK_REPAIR_DROP_BITMAPS)) {
    set_error (EINVAL, "qk_repair_set_flags: unknown flags 0x%x", flags);
    return -1;
  }
  r->flags = flags;
  return 0;
}

QK_EXPORT int
qk_repair_set_undo (struct qk_repair *r, const char *path)
{
  char *p = NULL;

  if (path && (p = strdup (path)) == NULL) {
    set_error (ENOMEM, "qk_repair_set_undo");
    return -1;
  }
  free (r->undo_path);
  r->undo_path = p;
  return 0;
}

QK_EXPORT int
qk_repair_set_ask (struct qk_repair *r, qk_fix_fn fn, void *opaque)
{
  r->fixer.ask = fn;
  r->fixer.ask_opaque = opaque;
  return 0;
}

QK_EXPORT int
qk_repair_set_report (struct qk_repair *r, qk_problem_fn fn,
                      qk_problem_fn note, void *opaque)
{
  r->report = fn;
  r->note = note;
  r->report_opaque = opaque;
  return 0;
}

QK_EXPORT int
qk_repair_set_report_limit (struct qk_repair *r, uint64_t per_code)
{
  r->report_limit = per_code;
  return 0;
}

QK_EXPORT int
qk_repair_set_open_options (struct qk_repair *r,
                            const struct qk_open_options *opts)
{
  if (opts) {
    r->opts = *opts;
    r->has_opts = true;
  }
  else
    r->has_opts = false;
  return 0;
}

QK_EXPORT size_t
qk_repair_fix_count (const struct qk_repair *r)
{
  return r->fixer.n;
}

QK_EXPORT const struct qk_fix *
qk_repair_fix (const struct qk_repair *r, size_t i)
{
  return i < r->fixer.n ? &r->fixer.recs[i]->f : NULL;
}

QK_EXPORT size_t
qk_repair_lost_count (const struct qk_repair *r)
{
  return r->n_lost;
}

QK_EXPORT const struct qk_lost *
qk_repair_lost (const struct qk_repair *r, size_t i)
{
  return i < r->n_lost ? &r->lost[i] : NULL;
}

QK_EXPORT const struct qk_check_result *
qk_repair_before (const struct qk_repair *r)
{
  return &r->before;
}

QK_EXPORT const struct qk_check_result *
qk_repair_after (const struct qk_repair *r)
{
  return &r->after;
}

QK_EXPORT bool
qk_repair_wrote (const struct qk_repair *r)
{
  return r->n_writes != 0;
}

/* ---- questions ---- */

/* Offer fix fx for count items; the answer (and the record of it). */
/* Offer fix fx (one latch group of count items): the fixer answers by
 * the mode or asks. check -r leaks (QK_REPAIR_LEAKS_ONLY) makes only the
 * fixes flagged LEAKS. */
static struct qk_fixrec *
offer (struct qk_repair *r, int fx, uint64_t count, const char *countstr)
{
  r->fixer.require = (r->flags & QK_REPAIR_LEAKS_ONLY) ? QK_FIX_LEAKS : 0;
  /* answered no (or abort) in an earlier round: the same answer, unasked
   * and not recorded twice */
  for (size_t i = 0; i < r->fixer.n; i++)
    if (r->fixer.recs[i]->f.code == fixrows[fx].code
        && r->fixer.recs[i]->f.answer != QK_ANSWER_YES)
      return r->fixer.recs[i];
  return qk_fixer_offer (&r->fixer, &fixrows[fx], count, countstr);
}

static void
note (struct qk_repair *r, int fx, const char *fmt, ...)
  __attribute__ ((format (printf, 3, 4)));

static void
note (struct qk_repair *r, int fx, const char *fmt, ...)
{
  char msg[512];
  va_list ap;
  struct qk_problem p = {
    .code = fixrows[fx].code, .name = fixrows[fx].name,
    .cls = QK_CLASS_INFO, .message = msg,
    .host_offset = QK_NONE, .length = QK_NONE, .guest_offset = QK_NONE,
    .guest_offset2 = QK_NONE, .table_offset = QK_NONE, .index = QK_NONE,
    .expected = QK_NONE, .found = QK_NONE,
  };

  if (r->note == NULL)
    return;
  va_start (ap, fmt);
  vsnprintf (msg, sizeof msg, fmt, ap);
  va_end (ap);
  r->note (r->report_opaque, &p);
}

static int
add_lost (struct qk_repair *r, int64_t source, uint64_t guest, uint64_t len,
          const char *reason)
{
  struct qk_lost *l;

  if (r->n_lost && r->lost[r->n_lost - 1].snapshot == source
      && r->lost[r->n_lost - 1].reason == reason
      && r->lost[r->n_lost - 1].guest_offset + r->lost[r->n_lost - 1].length
         == guest) {
    r->lost[r->n_lost - 1].length += len;
    return 0;
  }
  l = qk_grow (r->lost, &r->cap_lost, r->n_lost + 1, sizeof *l);
  if (l == NULL)
    return -1;
  r->lost = l;
  r->lost[r->n_lost++] = (struct qk_lost) { source, guest, len, reason };
  return 0;
}

/* ---- the write stack ---- */

/* The stack as it is now: reads see every write made. */
static struct qk_source *
cur (struct qk_repair *r)
{
  return qk_writer_src (&r->w);
}

/* Whether a cluster of [off, off+len) is claimed by two structures. */
static bool
range_conflicted (const struct qk_refmap *map, uint64_t off, uint64_t len,
                  uint64_t cs)
{
  for (uint64_t k = off / cs; len && k <= (off + len - 1) / cs; k++)
    if (qk_refmap_conflicted (map, k))
      return true;
  return false;
}

/* The last line of defence: no write lands in a cluster that two
 * structures claim (the passes check before they plan; this refuses,
 * and stops the repair, if one did not). */
static int
put (struct qk_repair *r, const void *buf, size_t len, uint64_t off)
{
  if (range_conflicted (r->map, off, len, r->img->hdr.cluster_size)) {
    set_error (EPERM, "refusing to write %zu bytes at 0x%" PRIx64 ": it "
               "lies in a host cluster two structures claim", len, off);
    return -1;
  }
  /* without the references counted (a refcount_order QEMU refuses), no
   * cluster is known to be one thing only: a table may be guest data */
  if (r->map && !r->map->counting) {
    set_error (EPERM, "refusing to write %zu bytes at 0x%" PRIx64 ": the "
               "check could not count references (refcount_order %u), so "
               "what else the cluster holds is unknown", len, off,
               r->img->hdr.refcount_order);
    return -1;
  }
  r->n_writes++;
  return qk_writer_pwrite (&r->w, buf, len, off);
}

static int
flush (struct qk_repair *r)
{
  return qk_writer_flush (&r->w);
}

/* ---- checking ---- */

static void
add_table (struct qk_repair *r, uint64_t off, uint64_t guest_base, bool l1)
{
  struct tref *t;

  /* registered already: keep the guest base if this registration knows
   * it and the first did not (a COPIED problem does not say it, a
   * PAST_EOF of the same table does; without it no lost range could be
   * reported for the entries cleared) */
  for (size_t i = r->n_tabs; i-- > 0 && (r->n_tabs < 64 || i + 1 == r->n_tabs); )
    if (r->tabs[i].offset == off && r->tabs[i].l1 == l1) {
      if (r->tabs[i].guest_base == QK_NONE)
        r->tabs[i].guest_base = guest_base;
      return;
    }
  t = qk_grow (r->tabs, &r->cap_tabs, r->n_tabs + 1, sizeof *t);
  if (t == NULL)
    return;   /* then that table is not fixed; the recheck says so */
  r->tabs = t;
  r->tabs[r->n_tabs++] = (struct tref) { .offset = off,
                                         .guest_base = guest_base,
                                         .l1 = l1, .source = -1 };
}

static int
on_problem (void *opaque, const struct qk_problem *p)
{
  struct qk_repair *r = opaque;
  uint64_t cs = r->img->hdr.cluster_size;

  if (r->first_check && r->report)
    r->report (r->report_opaque, p);

  switch (p->code) {
  case 0x010001: case 0x010002:          /* L1_RESERVED, L1_UNALIGNED */
    r->n_entry++;
    add_table (r, p->table_offset, QK_NONE, true);
    break;
  case 0x010003: case 0x010004: case 0x010005: case 0x010006:
    r->n_entry++;
    if (p->table_offset != QK_NONE)
      add_table (r, p->table_offset,
                 p->guest_offset != QK_NONE && p->index != QK_NONE
                 ? p->guest_offset - p->index * cs : QK_NONE, false);
    break;
  case 0x01000b:                         /* PAST_EOF */
    r->n_entry++;
    if (p->table_offset != QK_NONE)
      add_table (r, p->table_offset,
                 p->guest_offset != QK_NONE && p->index != QK_NONE
                 ? p->guest_offset - p->index * cs : QK_NONE, false);
    else
      r->any_past_eof_table = true;
    break;
  case 0x000009:                         /* HDR_L1_INVALID */
    break;
  case 0x01000c:                         /* DUPLICATE_MAPPING */
    if (p->guest_offset2 != QK_NONE && p->host_offset != QK_NONE) {
      struct dup *d = qk_grow (r->dups, &r->cap_dups, r->n_dups + 1,
                               sizeof *d);
      if (d) {
        r->dups = d;
        r->dups[r->n_dups++] = (struct dup) { p->host_offset,
                                              p->guest_offset2 };
      }
    }
    break;
  case 0x00000a: case 0x030001: case 0x030002: case 0x030003:
  case 0x030004: case 0x030006:
    r->refstruct_broken = true;
    r->refstruct_problems++;
    break;
  case 0x040003:                         /* REFCOUNT_UNREADABLE */
    if (p->length != QK_NONE) {          /* a refcount block, not an L2 */
      r->refstruct_broken = true;
      r->refstruct_problems++;
    }
    break;
  case 0x030005:
    r->n_overflow += p->count;
    break;
  case 0x040001:
    r->n_low++;
    break;
  case 0x040002:
    r->n_leak++;
    break;
  case 0x060004:                         /* BM_IN_USE */
    r->n_bm_in_use++;
    break;
  case 0x060001: case 0x060002: case 0x060003: case 0x060005:
  case 0x060006: case 0x060007: case 0x060008:
    r->bm_bad = true;
    break;
  case 0x050001:
    r->n_copied++;
    add_table (r, p->table_offset, QK_NONE, true);
    break;
  case 0x050002:
    r->n_copied++;
    add_table (r, p->table_offset, QK_NONE, false);
    break;
  }
  return 0;
}

/* Reopen the image over the stack and check it. */
static int
check (struct qk_repair *r, struct qk_check_result *res, struct qk_refmap *map)
{
  struct qk_source *s = cur (r);

  qk_image_close (r->img);
  r->img = qk_image_open_src (s, r->path, r->has_opts ? &r->opts : NULL,
                              true);
  if (r->img == NULL)
    return -1;
  r->n_tabs = 0;
  r->n_dups = 0;
  r->any_past_eof_table = r->refstruct_broken = false;
  r->refstruct_problems = 0;
  r->n_leak = r->n_low = r->n_copied = r->n_entry = r->n_overflow = 0;
  r->n_bm_in_use = 0;
  r->bm_bad = false;
  if (qk_check_run_map_limit (r->img,
                              r->first_check && r->report ? 0
                              : QK_CHECK_NO_MESSAGES, r->report_limit,
                              on_problem, r, res, map) < 0)
    return -1;
  r->checked_at = r->n_writes;
  if (r->first_check) {
    r->before = *res;
    r->have_before = true;
    r->first_check = false;
  }
  return 0;
}

/* ---- claiming fresh clusters ---- */

/* The first cluster a pass may write fresh structures or copies at: past
 * the end of the file, past every cluster the check counted, and past the
 * clusters dangling entries (past the end of the file) point at, which
 * would otherwise read what is written there. */
static uint64_t
fresh_base (const struct qk_repair *r, const struct qk_refmap *map)
{
  uint64_t cs = r->img->hdr.cluster_size;
  uint64_t k = (r->img->src->size + cs - 1) / cs;

  if (map && k < map->n)
    k = map->n;
  if (map && k < map->dangling_end)
    k = map->dangling_end;
  return k;
}

/* Give the fresh clusters [first, first + n), which nothing references
 * yet, refcount 1 before anything is made to point at them, where a
 * refcount block of the current structure covers them (in place, the run
 * of changed entries; flushed). Returns whether every one was claimed: if
 * not, the pass that writes them relies on pass 2 to set the rest, and a
 * crash between leaves them referenced with refcount 0, no worse than what
 * is being fixed. A crash after the claim and before the switch leaves
 * leaks: space, not data. */
static int
claim (struct qk_repair *r, const struct qk_refmap *map, uint64_t first,
       uint64_t n, bool *all)
{
  const struct qk_header *h = &r->img->hdr;
  uint64_t cs = h->cluster_size, per;
  unsigned order = h->refcount_order;
  uint8_t *blk;
  int ret = -1;

  *all = false;
  if (map == NULL || map->reftable == NULL || !map->counting)
    return 0;
  per = cs * 8 >> order;     /* counting: order <= 6 */
  for (uint64_t k = first; k < first + n; k++) {
    uint64_t t = k / per;
    if (t >= map->reftable_n || !(map->reftable[t] & QK_REFT_OFFSET_MASK)
        || !(map->refblocks[t / 8] >> (t & 7) & 1)
        || qk_refmap_conflicted (map, (map->reftable[t]
                                       & QK_REFT_OFFSET_MASK) / cs))
      return 0;
  }
  blk = malloc (cs);
  if (blk == NULL) {
    set_error (ENOMEM, "malloc");
    return -1;
  }
  for (uint64_t k = first; k < first + n; ) {
    uint64_t t = k / per, off = map->reftable[t] & QK_REFT_OFFSET_MASK;
    uint64_t end = (t + 1) * per < first + n ? (t + 1) * per : first + n;
    size_t a, b, w = order >= 3 ? (size_t) 1 << (order - 3) : 1;
    if (qk_source_read_exact (cur (r), blk, cs, off, "refcount block") < 0)
      goto out;
    for (uint64_t i = k; i < end; i++)
      if (qk_refblock_get (blk, order, i % per) != 0) {
        ret = 0;          /* not fresh after all: leave it to pass 2 */
        goto out;
      }
    for (uint64_t i = k; i < end; i++)
      qk_refblock_set (blk, order, i % per, 1);
    a = order >= 3 ? (size_t) ((k % per) << (order - 3))
                   : (size_t) ((k % per) >> (3 - order));
    b = order >= 3 ? (size_t) (((end - 1) % per) << (order - 3))
                   : (size_t) (((end - 1) % per) >> (3 - order));
    if (put (r, blk + a, b + w - a, off + a) < 0)
      goto out;
    k = end;
  }
  if (flush (r) < 0)
    goto out;
  *all = true;
  ret = 0;
out:
  free (blk);
  return ret;
}

/* Whether the header cluster is something else too (an L1 table at
 * offset 0, say): then no fix that writes the header is made, since the
 * same bytes are that structure's. Says so once per check. */
static bool
header_shared (struct qk_repair *r, int fx)
{
  if (!qk_refmap_conflicted (r->map, 0))
    return false;
  note (r, fx, "Not writing the header: its cluster belongs to another "
        "structure too");
  return true;
}

/* ---- pass 0: snapshot table entries ---- */

/* Whether the snapshot table entry at p (avail bytes) reads as a sane
 * entry with extra bytes of extra data; *elen gets its padded size. */
static bool
entry_plausible (const uint8_t *p, size_t avail, uint32_t extra,
                 const struct qk_header *h, size_t *elen)
{
  uint16_t idlen, namelen;
  uint64_t need;

  if (avail < 40 || extra > 1024 || (h->version >= 3 && extra < 16))
    return false;
  idlen = be16_get (p + 12);
  namelen = be16_get (p + 14);
  need = 40 + (uint64_t) extra + idlen + namelen;
  if (idlen == 0 || need > avail
      || !IS_ALIGNED (be64_get (p), h->cluster_size))
    return false;
  for (size_t k = 0; k < idlen; k++)
    if (p[40 + extra + k] < 0x21 || p[40 + extra + k] > 0x7e)
      return false;
  for (size_t k = 0; k < namelen; k++) {
    uint8_t c = p[40 + extra + idlen + k];
    if (c < 0x20 || c == 0x7f)
      return false;
  }
  if (extra >= 16 && be64_get (p + 48) % 512 != 0)
    return false;
  *elen = (size_t) ((need + 7) & ~7ULL);
  return true;
}

/* Entry i declares more than 1024 bytes of extra data: find the size its
 * bytes say it has, if exactly one reading makes sense (QK_NONE if not). */
static uint64_t
guess_extra (struct qk_repair *r, size_t i)
{
  const struct qk_header *h = &r->img->hdr;
  const struct qk_snapshot *s = &r->img->snaps[i].s;
  static const uint32_t first[] = { 24, 16, 8, 0 };
  size_t want = 2 * (40 + 1024 + 2 * 65535 + 8), avail;
  uint64_t found = QK_NONE;
  uint8_t *buf;

  if (s->entry_offset >= r->img->src->size)
    return QK_NONE;
  avail = r->img->src->size - s->entry_offset < want
          ? (size_t) (r->img->src->size - s->entry_offset) : want;
  buf = malloc (avail);
  if (buf == NULL || qk_source_read_zeropad (r->img->src, buf, avail,
                                             s->entry_offset) < 0) {
    free (buf);
    return QK_NONE;
  }
  for (uint32_t k = 0; k < 4 + 1024 / 8 && found == QK_NONE; k++) {
    uint32_t c = k < 4 ? first[k] : (k - 4) * 8 + 32;
    size_t elen, elen2;
    if (c > 1024 || (k >= 4 && c <= 24))
      continue;
    if (!entry_plausible (buf, avail, c, h, &elen))
      continue;
    if (i + 1 < h->nb_snapshots
        && (elen >= avail
            || !entry_plausible (buf + elen, avail - elen,
                                 be32_get (buf + elen + 36), h, &elen2)))
      continue;
    found = c;
  }
  free (buf);
  return found;
}

static int
pass_snapshots (struct qk_repair *r, bool *changed)
{
  *changed = false;
  for (size_t i = 0; i < r->img->n_snaps; i++) {
    const struct qk_snapshot *s = &r->img->snaps[i].s;
    uint64_t c;
    char what[64];
    struct qk_fixrec *f;
    uint8_t b[4];

    if (s->extra_data_size <= 1024)
      continue;
    c = guess_extra (r, i);
    if (c == QK_NONE) {
      note (r, FX_SNAPSHOT_EXTRA_SIZE, "Not changing snapshot table entry "
            "%zu: no standard extra data size makes its id and name "
            "readable (it keeps its %u bytes)", i, s->extra_data_size);
      return 0;
    }
    snprintf (what, sizeof what, "%zu (%u bytes, not %u)", i, (unsigned) c,
              s->extra_data_size);
    f = offer (r, FX_SNAPSHOT_EXTRA_SIZE, 1, what);
    if (f == NULL)
      return -1;
    if (f->f.answer != QK_ANSWER_YES)
      return 0;
    if (range_conflicted (r->map, s->entry_offset + 36, 4,
                          r->img->hdr.cluster_size)) {
      note (r, FX_SNAPSHOT_EXTRA_SIZE, "Not changing snapshot table entry "
            "%zu: its cluster belongs to another structure too", i);
      return 0;
    }
    be32_put (b, (uint32_t) c);
    if (put (r, b, 4, s->entry_offset + 36) < 0 || flush (r) < 0)
      return -1;
    f->f.made = true;
    f->f.corruptions_fixed = 1;
    *changed = true;
    return 0;     /* the table reads differently now: check again */
  }
  return 0;
}

/* The snapshot table written again (pass_snaptable): entries QEMU rejects
 * for their extra data made acceptable, entries that name nothing dropped.
 * The new table goes past the end of the file and is flushed before one
 * 12-byte header write (nb_snapshots at 60, snapshots_offset at 64, inside
 * one sector) switches to it; flush. A crash before the switch leaves the
 * old table and bytes past the end nothing references; after it, the new
 * table without its refcounts yet (pass 2 sets them and frees the old
 * table's clusters), no worse than the rejected entries were. */
static const char lost_snapshot[] =
  "its snapshot table entry could not be read (past the end of the file or "
  "of the table): the snapshot is dropped";

static bool
names_nothing (const struct qk_snapshot_raw *sr)
{
  return sr->id[0] == '\0' && sr->name[0] == '\0'
         && sr->s.l1_table_offset == 0;
}

static int
pass_snaptable (struct qk_repair *r, const struct qk_refmap *map,
                bool *changed)
{
  struct qk_image *img = r->img;
  const struct qk_header *h = &img->hdr;
  uint64_t cs = h->cluster_size, total = 0, next, dst;
  size_t n_trim = 0, n_pad = 0, n_drop = 0, kept = 0;
  uint64_t n_unread = 0;
  size_t n_read;
  char what[160];
  uint8_t *tab = NULL, hdr[12];
  struct qk_fixrec *f = NULL, *fu = NULL;
  int ret = -1;

  *changed = false;
  if (h->nb_snapshots == 0)
    return 0;
  if (qk_refmap_conflicted (map, 0)) {
    /* the switch is a header write: only said when there is a fix */
    if (!img->snaps_ok || img->snaps_qemu != h->nb_snapshots)
      header_shared (r, FX_SNAPSHOT_DROP_UNREADABLE);
    return 0;
  }
  /* the entries QEMU can read: those that end within its 64 MiB table limit
   * (as declared; snaps_qemu == n_snaps for any table below the limit) */
  n_read = img->snaps_qemu;
  if (!img->snaps_ok || n_read != h->nb_snapshots) {
    /* entries that cannot be read: only dropping them fixes the table */
    if (h->snapshots_offset != 0 && !IS_ALIGNED (h->snapshots_offset, cs))
      return 0;       /* an unaligned offset: reported, never guessed at */
    n_unread = h->nb_snapshots - n_read;
    if (n_unread == 0)
      return 0;
    fu = offer (r, FX_SNAPSHOT_DROP_UNREADABLE, n_unread, NULL);
    if (fu == NULL)
      return -1;
    if (fu->f.answer != QK_ANSWER_YES)
      return 0;
  }
  for (size_t i = 0; i < n_read; i++) {
    const struct qk_snapshot_raw *sr = &img->snaps[i];
    uint32_t e = sr->s.extra_data_size;
    if (names_nothing (sr)) {
      n_drop++;
      continue;
    }
    if (e > 1024) {
      n_trim++;
      e = 1024;
    }
    else if (h->version >= 3 && e < 16) {
      n_pad++;
      e = 24;
    }
    total += qk_snapshot_entry_size (e, strlen (sr->id), strlen (sr->name));
  }
  if (n_trim + n_pad + n_drop == 0 && n_unread == 0)
    return 0;
  if (n_trim + n_pad + n_drop) {
    snprintf (what, sizeof what, "%zu entries' extra data cut to 1024 "
              "bytes, %zu completed, %zu entries that name nothing dropped",
              n_trim, n_pad, n_drop);
    f = offer (r, FX_SNAPSHOT_TABLE_REWRITE, n_trim + n_pad + n_drop, what);
    if (f == NULL)
      return -1;
    if (f->f.answer != QK_ANSWER_YES && n_unread == 0)
      return 0;
    if (f->f.answer != QK_ANSWER_YES)
      n_trim = n_pad = n_drop = 0;   /* written as they are */
  }
  tab = calloc (1, total ? total : 1);
  if (tab == NULL) {
    set_error (ENOMEM, "calloc");
    return -1;
  }
  for (size_t i = 0, o = 0; i < n_read; i++) {
    struct qk_snapshot_raw sr = img->snaps[i];
    uint8_t extra[1024];
    int n;
    bool fix = f && f->f.answer == QK_ANSWER_YES;
    if (fix && names_nothing (&sr))
      continue;
    memset (extra, 0, sizeof extra);
    if (!fix)
      memcpy (extra, sr.extra, sr.s.extra_data_size < sizeof extra
                               ? sr.s.extra_data_size : sizeof extra);
    else if (sr.s.extra_data_size > 1024) {
      memcpy (extra, sr.extra, 1024);
      sr.s.extra_data_size = 1024;
    }
    else if (h->version >= 3 && sr.s.extra_data_size < 16) {
      if (!sr.s.has_vm_state_size_large)
        sr.s.vm_state_size = sr.s.vm_state_size32;
      sr.s.disk_size = h->size;
      sr.s.icount = UINT64_MAX;
      sr.s.extra_data_size = 24;
      qk_snapshot_extra_format (&sr.s, extra, sizeof extra);
    }
    else
      memcpy (extra, sr.extra, sr.s.extra_data_size);
    sr.extra = extra;
    n = qk_snapshot_format (&sr, tab + o, total - o);
    if (n < 0)
      goto out;
    o += (size_t) n;
    kept++;
  }
  next = fresh_base (r, map);
  dst = next * cs;
  if ((total && put (r, tab, total, dst) < 0) || flush (r) < 0)
    goto out;
  if (total) {
    bool all;
    if (claim (r, map, next, (total + cs - 1) / cs, &all) < 0)
      goto out;
  }
  be32_put (hdr, (uint32_t) kept);
  be64_put (hdr + 4, kept ? dst : 0);
  if (put (r, hdr, 12, 60) < 0 || flush (r) < 0)
    goto out;
  note (r, FX_SNAPSHOT_TABLE_REWRITE, "Wrote a snapshot table of %zu entries "
        "at 0x%" PRIx64 " (was %u at 0x%" PRIx64 ")", kept, kept ? dst : 0,
        h->nb_snapshots, h->snapshots_offset);
  if (f && f->f.answer == QK_ANSWER_YES) {
    f->f.made = true;
    f->f.corruptions_fixed = n_trim + n_pad + n_drop;
  }
  if (fu) {
    fu->f.made = true;
    fu->f.corruptions_fixed = n_unread;
    /* each dropped snapshot is lost whole; at most 16 listed, the rest
     * counted in a note (a table can claim 4 billion entries) */
    for (uint64_t k = n_read; k < h->nb_snapshots && k < n_read + 16; k++)
      add_lost (r, (int64_t) k, 0, h->size, lost_snapshot);
    if (n_unread > 16)
      note (r, FX_SNAPSHOT_DROP_UNREADABLE, "Dropped %" PRIu64 " more "
            "unreadable snapshot table entries (not listed one by one)",
            n_unread - 16);
  }
  *changed = true;
  ret = 0;
out:
  free (tab);
  return ret;
}

/* ---- pass 1: table entries ---- */

struct entry_fix {
  uint64_t strip, to_zero, ccopied, clear;
};

/* Which groups to apply. */
struct allow {
  bool strip, to_zero, ccopied, clear;
};

static const struct allow allow_all = { true, true, true, true };

static bool
past_eof (uint64_t off, uint64_t len, uint64_t file_len, uint64_t cs)
{
  uint64_t end;
  return ADD_OVERFLOW (off, len, &end) || end >= file_len + cs;
}

static const char lost_l2[] =
  "its L2 entry pointed outside the image or was misaligned";
static const char lost_l1[] =
  "its L1 entry pointed outside the image or was misaligned";

/* The guest ranges that the entries idx[0..n) of the L2 table t held,
 * lost when they are cleared: at every L1 entry of the active table and
 * of each snapshot's that points at the table, for a table can be shared
 * (by several L1 entries, by snapshots); with no such L1 entry, at the
 * guest offset the check named. Found by fuzz-repair: a table shared by
 * three active L1 entries lost the data of all three, and one range was
 * reported. */
static void
lost_entries (struct qk_repair *r, int64_t source, uint64_t disk_size,
              uint64_t base, const uint32_t *idx, size_t n)
{
  uint64_t cs = r->img->hdr.cluster_size;

  for (size_t j = 0; j < n; j++) {
    uint64_t g = base + idx[j] * cs;
    if (g < disk_size)
      add_lost (r, source, g, disk_size - g < cs ? disk_size - g : cs,
                lost_l2);
  }
}

static void
l2_lost (struct qk_repair *r, const struct tref *t, const uint32_t *idx,
         size_t n)
{
  struct qk_image *img = r->img;
  uint64_t cs = img->hdr.cluster_size;
  uint64_t span = (uint64_t) img->hdr.l2_entries * cs;
  bool found = false;

  for (uint32_t i = 0; img->l1 && i < img->l1_count; i++)
    if ((img->l1[i] & QK_L1E_OFFSET_MASK) == t->offset) {
      found = true;
      lost_entries (r, -1, img->hdr.size, i * span, idx, n);
    }
  for (size_t s = 0; s < img->n_snaps; s++) {
    const struct qk_snapshot *sn = &img->snaps[s].s;
    uint64_t *e = NULL;
    uint32_t c = 0;
    if (qk_image_read_snapshot_l1 (img, s, &e, &c) < 0)
      continue;
    for (uint32_t i = 0; i < c; i++)
      if ((e[i] & QK_L1E_OFFSET_MASK) == t->offset) {
        found = true;
        lost_entries (r, (int64_t) s,
                      sn->has_disk_size ? sn->disk_size : img->hdr.size,
                      i * span, idx, n);
      }
    free (e);
  }
  if (!found && t->guest_base != QK_NONE)
    lost_entries (r, -1, img->hdr.size, t->guest_base, idx, n);
}

/* Fix the entries of one L2 table in buf, the groups al allows; returns
 * whether it changed. Lost ranges go to r when record (cleared: room for
 * the indexes of the entries cleared, l2_entries of them). */
static bool
fix_l2 (struct qk_repair *r, uint8_t *buf, const struct tref *t,
        struct entry_fix *ef, const struct allow *al, bool record,
        uint32_t *cleared)
{
  const struct qk_header *h = &r->img->hdr;
  bool extl2 = h->subclusters > 1;
  bool data_file = (h->incompatible_features & QK_INCOMPAT_DATA_FILE) != 0;
  uint64_t cs = h->cluster_size, flen = r->img->src->size;
  bool changed = false;
  size_t n_cleared = 0;

  for (uint32_t i = 0; i < h->l2_entries; i++) {
    uint8_t *p = buf + (size_t) i * h->l2_entry_size;
    uint64_t e = be64_get (p), ne = e;
    enum qk_cluster_type ty = qk_l2_cluster_type (e, extl2, data_file);
    bool clear = false;

    if (ty == QK_CLUSTER_COMPRESSED) {
      uint64_t coff, clen;
      qk_l2_compressed (e & ~QK_OFLAG_COPIED, h->cluster_bits, &coff, &clen);
      if (!data_file && past_eof (coff, clen, flen, cs))
        clear = al->clear;
      if (!clear && (e & QK_OFLAG_COPIED) && al->ccopied) {
        ne &= ~QK_OFLAG_COPIED;
        ef->ccopied++;
      }
    }
    else {
      uint64_t off = e & QK_L2E_OFFSET_MASK;
      bool bad = off && !data_file
                 && (!IS_ALIGNED (off, cs) || past_eof (off, cs, flen, cs));
      if (bad && !extl2 && h->version >= 3 && (e & QK_OFLAG_ZERO)) {
        if (al->to_zero) {
          ne = QK_OFLAG_ZERO;
          ef->to_zero++;
        }
      }
      else if (bad)
        clear = al->clear;
      else if ((e & QK_L2E_STD_RESERVED) && al->strip) {
        ne &= ~QK_L2E_STD_RESERVED;
        ef->strip++;
      }
    }
    if (clear) {
      ne = 0;
      ef->clear++;
      if (extl2 && be64_get (p + 8)) {
        be64_put (p + 8, 0);
        changed = true;
      }
      cleared[n_cleared++] = i;
    }
    if (ne != e) {
      be64_put (p, ne);
      changed = true;
    }
  }
  if (record && n_cleared)
    l2_lost (r, t, cleared, n_cleared);
  return changed;
}

/* The same for an L1 table of n raw entries. */
static bool
fix_l1 (struct qk_repair *r, uint8_t *raw, uint32_t n, int64_t source,
        struct entry_fix *ef, const struct allow *al, bool record)
{
  const struct qk_header *h = &r->img->hdr;
  uint64_t cs = h->cluster_size, flen = r->img->src->size;
  uint64_t span = (uint64_t) h->l2_entries * cs;
  bool changed = false;

  for (uint32_t i = 0; i < n; i++) {
    uint64_t e = be64_get (raw + 8 * (size_t) i), off = e & QK_L1E_OFFSET_MASK;
    if (e == 0)
      continue;
    if (off && (!IS_ALIGNED (off, cs) || past_eof (off, cs, flen, cs))) {
      if (!al->clear)
        continue;
      be64_put (raw + 8 * (size_t) i, 0);
      ef->clear++;
      if (record)
        add_lost (r, source, (uint64_t) i * span, span, lost_l1);
      changed = true;
    }
    else if ((e & QK_L1E_RESERVED_MASK) && al->strip) {
      be64_put (raw + 8 * (size_t) i, e & ~QK_L1E_RESERVED_MASK);
      ef->strip++;
      changed = true;
    }
  }
  return changed;
}

/* Write the run of buf that differs from old (entry size es). */
static int
put_diff (struct qk_repair *r, const uint8_t *buf, const uint8_t *old,
          size_t len, size_t es, uint64_t off)
{
  size_t a = 0, b = len;

  while (a < len && memcmp (buf + a, old + a, es) == 0)
    a += es;
  while (b > a && memcmp (buf + b - es, old + b - es, es) == 0)
    b -= es;
  if (a == b)
    return 0;
  return put (r, buf + a, b - a, off + a);
}

/* Whether [off, off+len) may be written as a table of the kind l1 (an L1
 * table, or an L2 table): it must not touch the header cluster, the
 * refcount table or a refcount block, the snapshot table, the bitmap
 * directory, nor (for an L2 table) any L1 table. The check reports such
 * overlaps; the repair then leaves the table alone rather than write
 * entries into other metadata (an L1 entry with offset 0 and reserved bits
 * makes the check walk the header cluster as an L2 table, as qemu-img
 * does). Returns what it overlaps, or NULL. */
static bool
touches (uint64_t off, uint64_t len, uint64_t a, uint64_t alen)
{
  return alen && off < a + alen && a < off + len;
}

static const char *
overlaps_metadata (const struct qk_repair *r, const struct qk_refmap *map,
                   uint64_t off, uint64_t len, bool l1)
{
  const struct qk_image *img = r->img;
  const struct qk_header *h = &img->hdr;
  uint64_t cs = h->cluster_size;

  if (off < cs)
    return "the header cluster";
  if (map == NULL || !map->counting)
    return "clusters whose other uses are unknown (the check could not "
           "count references)";
  if (range_conflicted (map, off, len, cs))
    return "another structure or guest data (METADATA_OVERLAP)";
  if (touches (off, len, h->refcount_table_offset,
               (uint64_t) h->refcount_table_clusters * cs))
    return "the refcount table";
  if (map && map->reftable)
    for (size_t t = 0; t < map->reftable_n; t++) {
      uint64_t b = map->reftable[t] & QK_REFT_OFFSET_MASK;
      if (b && touches (off, len, b, cs))
        return "a refcount block";
    }
  if (img->n_snaps) {
    uint64_t end = h->snapshots_offset;
    for (size_t i = 0; i < img->n_snaps; i++)
      if (img->snaps[i].s.entry_offset + img->snaps[i].s.entry_size > end)
        end = img->snaps[i].s.entry_offset + img->snaps[i].s.entry_size;
    if (touches (off, len, h->snapshots_offset, end - h->snapshots_offset))
      return "the snapshot table";
  }
  if (img->has_bitmaps_ext
      && touches (off, len, img->bitmaps_ext.directory_offset,
                  img->bitmaps_ext.directory_size))
    return "the bitmap directory";
  if (l1)
    return NULL;
  if (touches (off, len, h->l1_table_offset, (uint64_t) h->l1_size * 8))
    return "the active L1 table";
  for (size_t i = 0; i < img->n_snaps; i++) {
    uint64_t n = img->snaps[i].s.l1_size;
    if (n <= (32u << 20) / 8
        && touches (off, len, img->snaps[i].s.l1_table_offset, n * 8))
      return "a snapshot's L1 table";
  }
  return NULL;
}

/* Each L1 table (the active one, then each snapshot's) that can be read,
 * and each L2 table the check named: fix with al, and when write, write
 * them back, L2 tables first. */
static int
entries_walk (struct qk_repair *r, const struct qk_refmap *map,
              struct entry_fix *ef, const struct allow *al, bool write)
{
  struct qk_image *img = r->img;
  uint64_t cs = img->hdr.cluster_size;
  uint8_t *buf = malloc (cs), *old = malloc (cs);
  uint32_t *cleared = malloc ((size_t) img->hdr.l2_entries * sizeof *cleared);
  int ret = -1;

  if (buf == NULL || old == NULL || cleared == NULL) {
    set_error (ENOMEM, "malloc");
    goto out;
  }
  for (size_t i = 0; i < r->n_tabs; i++) {
    const struct tref *t = &r->tabs[i];
    const char *what;
    if (t->l1 || !IS_ALIGNED (t->offset, cs)
        || past_eof (t->offset, cs, img->src->size, cs))
      continue;
    if ((what = overlaps_metadata (r, map, t->offset, cs, false)) != NULL) {
      if (!write)
        note (r, FX_CLEAR_BAD_ENTRIES, "Not fixing the entries of the L2 "
              "table at 0x%" PRIx64 ": it overlaps %s", t->offset, what);
      continue;
    }
    if (qk_source_read_zeropad (img->src, buf, cs, t->offset) < 0)
      goto out;
    memcpy (old, buf, cs);
    if (fix_l2 (r, buf, t, ef, al, write, cleared) && write
        && put_diff (r, buf, old, cs, img->hdr.l2_entry_size, t->offset) < 0)
      goto out;
  }
  /* The snapshots' L1 tables only when the check read the snapshot
   * table: it counts them then, and finds what overlaps them. With the
   * table unreadable it counts none (as qemu-img), and the entries read
   * before the damaged one are not known to be only an L1 table: found by
   * fuzz-repair, a snapshot's L1 table was guest data of the active image
   * (its L2 table was the snapshot table), and clearing its entries
   * changed that data (tests/regress/repair-unread-snapshot-l1-is-data.gz).
   * Such a table is left alone, as the check leaves it. */
  size_t n_l1 = img->snaps_ok ? img->n_snaps : 0;
  for (size_t s = 0; s <= n_l1; s++) {
    uint64_t off = s == 0 ? img->hdr.l1_table_offset
                          : img->snaps[s - 1].s.l1_table_offset;
    uint32_t cnt = s == 0 ? img->hdr.l1_size : img->snaps[s - 1].s.l1_size;
    size_t len = (size_t) cnt * 8;
    uint8_t *raw, *o;
    if (cnt == 0 || !IS_ALIGNED (off, cs) || cnt > (32u << 20) / 8
        || past_eof (off, len, img->src->size, cs)
        || overlaps_metadata (r, map, off, len, true))
      continue;    /* the check reports these; not fixed here */
    raw = malloc (len);
    o = malloc (len);
    if (raw == NULL || o == NULL) {
      free (raw);
      free (o);
      set_error (ENOMEM, "malloc");
      goto out;
    }
    if (qk_source_read_zeropad (img->src, raw, len, off) < 0) {
      free (raw);
      free (o);
      goto out;
    }
    memcpy (o, raw, len);
    if (fix_l1 (r, raw, cnt, (int64_t) s - 1, ef, al, write) && write
        && put_diff (r, raw, o, len, 8, off) < 0) {
      free (raw);
      free (o);
      goto out;
    }
    free (raw);
    free (o);
  }
  ret = 0;
out:
  free (buf);
  free (old);
  free (cleared);
  return ret;
}

static int
pass_entries (struct qk_repair *r, const struct qk_refmap *map)
{
  struct entry_fix plan = { 0 }, done = { 0 };
  struct qk_fixrec *f[4] = { NULL };
  struct allow al = { false, false, false, false };

  if (entries_walk (r, map, &plan, &allow_all, false) < 0)
    return -1;
  if (plan.strip && (f[0] = offer (r, FX_STRIP_RESERVED, plan.strip, NULL)) == NULL)
    return -1;
  if (plan.to_zero
      && (f[1] = offer (r, FX_PREALLOC_TO_ZERO, plan.to_zero, NULL)) == NULL)
    return -1;
  if (plan.ccopied
      && (f[2] = offer (r, FX_COMPRESSED_COPIED, plan.ccopied, NULL)) == NULL)
    return -1;
  if (plan.clear
      && (f[3] = offer (r, FX_CLEAR_BAD_ENTRIES, plan.clear, NULL)) == NULL)
    return -1;
  al.strip = f[0] && f[0]->f.answer == QK_ANSWER_YES;
  al.to_zero = f[1] && f[1]->f.answer == QK_ANSWER_YES;
  al.ccopied = f[2] && f[2]->f.answer == QK_ANSWER_YES;
  al.clear = f[3] && f[3]->f.answer == QK_ANSWER_YES;
  if (!al.strip && !al.to_zero && !al.ccopied && !al.clear)
    return 0;
  if (entries_walk (r, map, &done, &al, true) < 0 || flush (r) < 0)
    return -1;
  for (int i = 0; i < 4; i++)
    if (f[i] && f[i]->f.answer == QK_ANSWER_YES)
      f[i]->f.made = true;
  return 0;
}

/* ---- pass 1b: clusters mapped twice by the active tables ---- */

/* Whether the L2 table at l2off is used once (by one entry of the active
 * L1 table and by no snapshot), so that switching one of its entries
 * moves one guest offset only. The check's count says so, but it counts
 * in the image's refcount width and stops at its largest value: with
 * 1-bit refcounts a table of three L1 tables counts 1. A count at that
 * largest value is looked up in the L1 tables themselves (an L1 table
 * that cannot be read: not known to be once). Found by fuzz-repair: the
 * copies of a 1-bit image's shared clusters were shared again, and every
 * repair made new ones (tests/regress/repair-rc1-shared-l2-copies.gz). */
static bool
l2_used_once (struct qk_repair *r, const struct qk_refmap *map,
              uint64_t l2off)
{
  struct qk_image *img = r->img;
  uint64_t v = qk_refmap_get (map, l2off / img->hdr.cluster_size);
  uint64_t top = map->order >= 6 ? UINT64_MAX
                 : (1ULL << (1U << map->order)) - 1;
  unsigned n = 0;

  if (v != 1)
    return false;
  if (v < top)
    return true;
  for (uint32_t i = 0; i < img->l1_count; i++)
    if ((img->l1[i] & QK_L1E_OFFSET_MASK) == l2off && ++n > 1)
      return false;
  for (size_t s = 0; s < img->n_snaps; s++) {
    uint64_t *e = NULL;
    uint32_t c = 0;
    bool found = false;
    if (qk_image_read_snapshot_l1 (img, s, &e, &c) < 0)
      return false;
    for (uint32_t i = 0; i < c && !found; i++)
      found = (e[i] & QK_L1E_OFFSET_MASK) == l2off;
    free (e);
    if (found)
      return false;
  }
  return true;
}

/* The second guest offset of each pair the check found gets its own copy
 * of the host cluster: the copy is written past the end of the file and
 * flushed before the L2 entry is switched to it (one 8-byte write), then
 * flushed. A crash before the switch leaves unreferenced bytes past the
 * end; after it, the copy with no refcount yet (pass 2, or a rerun, sets
 * it), which is no worse than the shared cluster's refcount was. */
static int
pass_duplicates (struct qk_repair *r, const struct qk_refmap *map,
                 bool *changed)
{
  struct qk_image *img = r->img;
  const struct qk_header *h = &img->hdr;
  uint64_t cs = h->cluster_size, span = (uint64_t) h->l2_entries * cs;
  uint64_t next, once_off = 0;
  bool extl2 = h->subclusters > 1, once_val = false;
  bool data_file = (h->incompatible_features & QK_INCOMPAT_DATA_FILE) != 0;
  struct qk_fixrec *f;
  uint8_t *buf;
  int ret = -1;

  *changed = false;
  if (r->n_dups == 0 || data_file || img->l1 == NULL)
    return 0;
  f = offer (r, FX_COPY_SHARED, r->n_dups, NULL);
  if (f == NULL)
    return -1;
  if (f->f.answer != QK_ANSWER_YES)
    return 0;
  buf = malloc (cs);
  if (buf == NULL) {
    set_error (ENOMEM, "malloc");
    return -1;
  }
  next = fresh_base (r, map);
  for (size_t i = 0; i < r->n_dups; i++) {
    uint64_t g = r->dups[i].guest, host = r->dups[i].host;
    uint64_t l1i = g / span, l2off, e, eoff, dst;
    uint32_t idx = (uint32_t) ((g % span) / cs);
    uint8_t eb[8];

    if (l1i >= img->l1_count)
      continue;
    l2off = img->l1[l1i] & QK_L1E_OFFSET_MASK;
    /* switching an entry of an L2 table that other L1 entries (or
     * snapshots) also use would move their guest offsets too: then the
     * duplicate would never go away */
    if (l2off == 0 || !IS_ALIGNED (l2off, cs)
        || overlaps_metadata (r, map, l2off, cs, false))
      continue;
    if (l2off != once_off) {       /* the pairs of one table are together */
      once_off = l2off;
      once_val = l2_used_once (r, map, l2off);
    }
    if (!once_val)
      continue;
    eoff = l2off + (uint64_t) idx * h->l2_entry_size;
    if (qk_source_read_exact (cur (r), eb, 8, eoff, "L2 entry") < 0)
      goto out;
    e = be64_get (eb);
    if (qk_l2_cluster_type (e, extl2, false) != QK_CLUSTER_NORMAL
        || (e & QK_L2E_OFFSET_MASK) != host)
      continue;     /* not as the check saw it: left to the next check */
    if (qk_source_read_zeropad (cur (r), buf, cs, host) < 0)
      goto out;
    dst = next++ * cs;
    if (put (r, buf, cs, dst) < 0 || flush (r) < 0)
      goto out;
    {
      bool all;
      if (claim (r, map, dst / cs, 1, &all) < 0)
        goto out;
      /* COPIED only once the copy's refcount is 1 (else pass 4 sets it) */
      be64_put (eb, (e & ~(QK_L2E_OFFSET_MASK | QK_OFLAG_COPIED)) | dst
                    | (all ? QK_OFLAG_COPIED : 0));
    }
    if (put (r, eb, 8, eoff) < 0 || flush (r) < 0)
      goto out;
    note (r, FX_COPY_SHARED, "Copied host cluster 0x%" PRIx64 " to 0x%"
          PRIx64 " for guest offset 0x%" PRIx64, host, dst, g);
    f->f.corruptions_fixed++;
    *changed = true;
  }
  f->f.made = *changed;
  ret = 0;
out:
  free (buf);
  return ret;
}

/* ---- pass 1c: bitmaps left in use ---- */

static const char *
bitmap_unsafe (struct qk_repair *r, const struct qk_refmap *map,
               const struct qk_bitmap *b)
{
  uint64_t cs = r->img->hdr.cluster_size, len = (uint64_t) b->table_size * 8;
  const char *why;

  if (b->table_size == 0 || b->table_size > QK_MAX_BITMAP_TABLE_ENTRIES
      || !IS_ALIGNED (b->table_offset, cs) || b->table_offset == 0)
    return "its table is invalid";
  if ((why = overlaps_metadata (r, map, b->table_offset, len, false)) != NULL)
    return why;
  for (uint64_t k = b->table_offset / cs;
       k < (b->table_offset + len + cs - 1) / cs; k++)
    if (map == NULL || qk_refmap_get (map, k) != 1)
      return "its table shares a cluster with something else";
  return NULL;
}

/* Keep: each bitmap left in use gets a table of all-ones entries (bit 0
 * with offset 0: every bit of the range set), so that whatever the VM
 * wrote since the last clean close is marked dirty and an incremental
 * backup based on it copies everything, then its in-use flag is cleared.
 * Order: the tables, flush, the flags (4 bytes each), flush. A crash
 * before a flag is cleared leaves that bitmap in use (QEMU still refuses
 * it; a rerun finishes); the old data clusters become leaks, freed by
 * pass 2. */
static int
bitmaps_keep (struct qk_repair *r, const struct qk_refmap *map,
              const uint8_t *sel, size_t n)
{
  struct qk_image *img = r->img;
  struct qk_fixrec *f = offer (r, FX_BITMAPS_FULL, n, NULL);
  uint8_t *tab = NULL;
  int ret = -1;

  if (f == NULL)
    return -1;
  if (f->f.answer != QK_ANSWER_YES)
    return 0;
  for (size_t i = 0; i < img->n_bitmaps; i++) {
    const struct qk_bitmap *b = &img->bitmaps[i].b;
    size_t len = (size_t) b->table_size * 8;
    uint8_t *t;
    if (!sel[i])
      continue;
    t = realloc (tab, len);
    if (t == NULL) {
      set_error (ENOMEM, "realloc");
      goto out;
    }
    tab = t;
    for (size_t k = 0; k < b->table_size; k++)
      be64_put (tab + 8 * k, 1);        /* offset 0, all ones */
    if (put (r, tab, len, b->table_offset) < 0)
      goto out;
  }
  if (flush (r) < 0)
    goto out;
  for (size_t i = 0; i < img->n_bitmaps; i++) {
    const struct qk_bitmap *b = &img->bitmaps[i].b;
    uint8_t fl[4];
    if (!sel[i])
      continue;
    be32_put (fl, b->flags & ~QK_BITMAP_IN_USE);
    if (put (r, fl, 4, b->entry_offset + 12) < 0)
      goto out;
    note (r, FX_BITMAPS_FULL, "Marked bitmap '%s' fully dirty (%u table "
          "entries) and cleared its in-use flag", b->name, b->table_size);
  }
  if (flush (r) < 0)
    goto out;
  f->f.made = true;
  ret = 0;
out:
  free (tab);
  return ret;
}

/* The header cluster without the bitmaps extension and with the
 * 'bitmaps' autoclear bit cleared, laid out as qcow2_update_header does
 * (image/spec.c). *len gets the bytes to write from offset 0. */
static uint8_t *
header_without_bitmaps (const struct qk_image *img, size_t *len)
{
  struct qk_image_spec sp;
  uint8_t *out;

  if (qk_image_spec_init (img, &sp) < 0)
    return NULL;
  sp.s.bitmaps = NULL;
  sp.s.h.autoclear_features &= ~QK_AUTOCLEAR_BITMAPS;
  out = qk_image_spec_format (img, &sp.s, len);
  qk_image_spec_free (&sp);
  return out;
}

/* Drop: the bitmaps left in use are taken out of the directory. A new
 * directory of the other entries is written past the end of the file,
 * flushed and claimed, then one 24-byte write of the extension's payload
 * (nb_bitmaps, directory size and offset) switches to it; flush. When no
 * bitmap remains, the header cluster is written again without the
 * extension and with the 'bitmaps' autoclear bit clear, in one write, as
 * QEMU's qcow2_update_header does. A crash before the switch leaves the
 * old directory (and leaks); after it, the new one. The dropped bitmaps'
 * tables and data, and the old directory, become leaks (pass 2). */
static int
bitmaps_drop (struct qk_repair *r, const struct qk_refmap *map,
              const uint8_t *sel, size_t n)
{
  struct qk_image *img = r->img;
  const struct qk_bitmaps_ext *be = &img->bitmaps_ext;
  uint64_t cs = img->hdr.cluster_size, dst, next, total = 0;
  struct qk_fixrec *f = offer (r, FX_BITMAPS_DROP, n, NULL);
  uint8_t *dir = NULL, *hdr = NULL;
  size_t kept = 0, o = 0, hlen;
  const struct qk_extension *x = NULL;
  int ret = -1;

  if (f == NULL)
    return -1;
  if (f->f.answer != QK_ANSWER_YES)
    return 0;
  for (size_t i = 0; i < img->n_ext; i++)
    if (img->ext[i].magic == QK_EXT_BITMAPS && x == NULL)
      x = &img->ext[i];
  for (size_t i = 0; i < img->n_bitmaps; i++)
    if (!sel[i]) {
      total += img->bitmaps[i].b.entry_size;
      kept++;
    }
  if (kept == 0) {
    hdr = header_without_bitmaps (img, &hlen);
    if (hdr == NULL || put (r, hdr, hlen, 0) < 0 || flush (r) < 0)
      goto out;
  }
  else {
    uint8_t pl[24];
    struct qk_bitmaps_ext ne = *be;
    bool all;
    dir = calloc (1, total);
    if (dir == NULL || x == NULL) {
      set_error (dir ? EINVAL : ENOMEM, "the bitmap directory");
      goto out;
    }
    for (size_t i = 0; i < img->n_bitmaps; i++) {
      const struct qk_bitmap *b = &img->bitmaps[i].b;
      uint64_t have = be->directory_offset + be->directory_size
                      - b->entry_offset;
      if (sel[i])
        continue;
      if (qk_source_read_exact (cur (r), dir + o,
                                have < b->entry_size ? have : b->entry_size,
                                b->entry_offset, "bitmap directory") < 0)
        goto out;
      o += b->entry_size;
    }
    next = fresh_base (r, map);
    dst = next * cs;
    if (put (r, dir, total, dst) < 0 || flush (r) < 0
        || claim (r, map, next, (total + cs - 1) / cs, &all) < 0)
      goto out;
    ne.nb_bitmaps = (uint32_t) kept;
    ne.directory_size = total;
    ne.directory_offset = dst;
    if (qk_bitmaps_ext_format (&ne, pl, sizeof pl) < 0
        || put (r, pl, sizeof pl, x->offset + 8) < 0 || flush (r) < 0)
      goto out;
  }
  for (size_t i = 0; i < img->n_bitmaps; i++)
    if (sel[i])
      note (r, FX_BITMAPS_DROP, "Removed bitmap '%s' (it was left in use)",
            img->bitmaps[i].b.name);
  f->f.made = true;
  ret = 0;
out:
  free (dir);
  free (hdr);
  return ret;
}

static int
pass_bitmaps (struct qk_repair *r, const struct qk_refmap *map)
{
  struct qk_image *img = r->img;
  uint8_t *sel;
  size_t n = 0;
  int ret;

  if (r->n_bm_in_use == 0 || r->bm_bad || img->n_bitmaps == 0
      || img->n_bitmaps != img->bitmaps_ext.nb_bitmaps)
    return 0;
  /* drop writes the header, keep the directory */
  if ((r->flags & QK_REPAIR_DROP_BITMAPS) ? header_shared (r, FX_BITMAPS_DROP)
      : range_conflicted (map, img->bitmaps_ext.directory_offset,
                          img->bitmaps_ext.directory_size,
                          img->hdr.cluster_size))
    return 0;
  sel = calloc (img->n_bitmaps, 1);
  if (sel == NULL) {
    set_error (ENOMEM, "calloc");
    return -1;
  }
  for (size_t i = 0; i < img->n_bitmaps; i++) {
    const struct qk_bitmap *b = &img->bitmaps[i].b;
    const char *why;
    if (!(b->flags & QK_BITMAP_IN_USE))
      continue;
    if (!(r->flags & QK_REPAIR_DROP_BITMAPS)
        && (why = bitmap_unsafe (r, map, b)) != NULL) {
      note (r, FX_BITMAPS_FULL, "Bitmap '%s' is left in use: %s", b->name,
            why);
      continue;
    }
    sel[i] = 1;
    n++;
  }
  ret = n == 0 ? 0
        : r->flags & QK_REPAIR_DROP_BITMAPS ? bitmaps_drop (r, map, sel, n)
        : bitmaps_keep (r, map, sel, n);
  free (sel);
  return ret;
}

/* ---- pass 2: refcounts ---- */

/* Whether every cluster with references has a usable refcount block. */
static bool
blocks_cover (const struct qk_repair *r, const struct qk_refmap *map)
{
  const struct qk_header *h = &r->img->hdr;
  uint64_t per = h->cluster_size * 8 >> h->refcount_order;

  for (uint64_t t = qk_refmap_next_block (map, per, 0), e; t != UINT64_MAX;
       t = qk_refmap_next_block (map, per, t + 1)) {
    if (t >= map->reftable_n)
      return false;
    e = map->reftable[t];
    if ((e & QK_REFT_OFFSET_MASK) == 0
        || !(map->refblocks[t / 8] >> (t & 7) & 1)
        || qk_refmap_conflicted (map, (e & QK_REFT_OFFSET_MASK)
                                      / h->cluster_size))
      return false;
  }
  return true;
}

static int
refcounts_in_place (struct qk_repair *r, const struct qk_refmap *map)
{
  const struct qk_header *h = &r->img->hdr;
  uint64_t cs = h->cluster_size, per = cs * 8 >> h->refcount_order;
  unsigned order = h->refcount_order;
  uint8_t *blk = malloc (cs), *old = malloc (cs);
  struct qk_fixrec *fl = NULL, *fr = NULL;
  bool yl, yr;
  int ret = -1;

  if (blk == NULL || old == NULL) {
    set_error (ENOMEM, "malloc");
    goto out;
  }
  if (r->n_leak && map->complete)
    fl = offer (r, FX_FREE_LEAKS, r->n_leak, NULL);
  if (r->n_low)
    fr = offer (r, FX_RAISE_REFCOUNTS, r->n_low, NULL);
  yl = fl && fl->f.answer == QK_ANSWER_YES;
  yr = fr && fr->f.answer == QK_ANSWER_YES;
  if (!yl && !yr) {
    ret = 0;
    goto out;
  }
  for (size_t t = 0; t < map->reftable_n && t * per < map->n; t++) {
    uint64_t off = map->reftable[t] & QK_REFT_OFFSET_MASK;
    uint64_t first = t * per, end = first + per;
    size_t a = SIZE_MAX, b = 0;
    if (off == 0 || !(map->refblocks[t / 8] >> (t & 7) & 1))
      continue;
    if (end > map->n)
      end = map->n;
    if (qk_source_read_exact (cur (r), blk, cs, off, "refcount block") < 0)
      goto out;
    memcpy (old, blk, cs);
    for (uint64_t k = first; k < end; k++) {
      uint64_t stored, counted;
      size_t byte;
      /* the counts have the block's format: skip equal 8-byte words (a
       * word holds 8 >> (order - 3) entries) without decoding them */
      if (order >= 3 && order <= 6 && map->order == order
          && ((k - first) & ((64 >> order) - 1)) == 0
          && end - k >= (64U >> order)) {
        size_t bo = (size_t) ((k - first) << (order - 3));
        if (memcmp (blk + bo, map->counted + (k << (order - 3)), 8) == 0) {
          k += (64 >> order) - 1;
          continue;
        }
      }
      stored = qk_refblock_get (blk, order, k - first);
      counted = qk_refmap_get (map, k);
      if (stored == counted)
        continue;
      if (stored > counted ? !yl : !yr)
        continue;
      qk_refblock_set (blk, order, k - first, counted);
      note (r, stored > counted ? FX_FREE_LEAKS : FX_RAISE_REFCOUNTS,
            "Repairing cluster %" PRIu64 " refcount=%" PRIu64
            " reference=%" PRIu64, k, stored, counted);
      if (stored > counted)
        fl->f.leaks_fixed++;
      else
        fr->f.corruptions_fixed++;
      byte = order >= 3 ? (size_t) ((k - first) << (order - 3))
                        : (size_t) ((k - first) >> (3 - order));
      if (byte < a)
        a = byte;
      if (byte > b)
        b = byte;
    }
    if (a != SIZE_MAX) {
      size_t w = order >= 3 ? (size_t) 1 << (order - 3) : 1;
      if (put (r, blk + a, b + w - a, off + a) < 0)
        goto out;
    }
  }
  if (flush (r) < 0)
    goto out;
  if (yl)
    fl->f.made = true;
  if (yr)
    fr->f.made = true;
  ret = 0;
out:
  free (blk);
  free (old);
  return ret;
}

/* Whether cluster 0 is claimed by the header and, besides it, only by
 * the refcount table and blocks the check counted (which a rebuild
 * replaces). */
static bool
header_only_refstructs (const struct qk_refmap *map, unsigned cb)
{
  uint64_t on0 = 0;

  if (!qk_refmap_conflicted (map, 0) || !map->refstructs)
    return false;
  if (map->reftable_len && (map->reftable_offset >> cb) == 0)
    on0++;
  for (size_t t = 0; t < map->reftable_n; t++)
    if (map->refblocks && ((map->refblocks[t / 8] >> (t & 7)) & 1)
        && ((map->reftable[t] & QK_REFT_OFFSET_MASK) >> cb) == 0)
      on0++;
  return on0 && qk_refmap_get (map, 0) == on0 + 1;
}

static int
put_cb (void *opaque, const void *buf, size_t len, uint64_t off)
{
  return put (opaque, buf, len, off);
}

static int
refcounts_rebuild (struct qk_repair *r, struct qk_refmap *map)
{
  const struct qk_header *h = &r->img->hdr;
  unsigned cb = h->cluster_bits;
  struct qk_refstruct rs;
  struct qk_fixrec *f;
  uint8_t hdr[12];
  bool hdr_alone;

  /* the header cluster may be shared with the refcount structure being
   * replaced (a refcount table at offset 0): then the header is the only
   * structure left on it, and switching the header away is the fix */
  hdr_alone = header_only_refstructs (map, cb);
  if (!hdr_alone && header_shared (r, FX_REBUILD_REFCOUNTS))
    return 0;
  f = offer (r, FX_REBUILD_REFCOUNTS,
             r->refstruct_problems + r->n_low + r->n_leak, NULL);
  if (f == NULL)
    return -1;
  if (f->f.answer != QK_ANSWER_YES)
    return 0;
  if (!map->complete) {
    /* unreachable: pass_refcounts refuses first */
    set_error (EINVAL, "cannot rebuild from incomplete references");
    return -1;
  }
  qk_refmap_drop_refstructs (map, cb);
  if (qk_refstruct_write (map, cb, h->refcount_order, fresh_base (r, map),
                          put_cb, r, &rs) < 0
      || flush (r) < 0)
    return -1;
  note (r, FX_REBUILD_REFCOUNTS, "Rebuilding refcount structure: table of %"
        PRIu32 " clusters at 0x%" PRIx64 ", %" PRIu64 " blocks",
        rs.table_clusters, rs.table_offset, rs.n_blocks);
  be64_put (hdr, rs.table_offset);
  be32_put (hdr + 8, rs.table_clusters);
  /* (put() refuses cluster 0 while the old table claims it too: the
   * write that ends that claim goes to the stack directly) */
  if (hdr_alone) {
    r->n_writes++;
    if (qk_writer_pwrite (&r->w, hdr, 12, 48) < 0 || flush (r) < 0)
      return -1;
  }
  else if (put (r, hdr, 12, 48) < 0 || flush (r) < 0)
    return -1;
  f->f.made = true;
  f->f.leaks_fixed = r->n_leak;
  f->f.corruptions_fixed = r->n_low + r->refstruct_problems;
  return 0;
}

/* Returns 1 when the refcounts are now right (complete and checked), 0
 * when not (declined, or could not), -1 on failure. */
static int
pass_refcounts (struct qk_repair *r, struct qk_refmap *map)
{
  bool rebuild;
  size_t before = r->fixer.n;

  if (!map->counting)
    return 0;
  rebuild = r->refstruct_broken || !blocks_cover (r, map);
  if (!rebuild) {
    if (r->n_leak == 0 && r->n_low == 0)
      return map->complete ? 1 : 0;
    if (refcounts_in_place (r, map) < 0)
      return -1;
  }
  else {
    if (!map->complete || (r->flags & QK_REPAIR_LEAKS_ONLY))
      return 0;
    if (refcounts_rebuild (r, map) < 0)
      return -1;
  }
  for (size_t i = before; i < r->fixer.n; i++)
    if (!r->fixer.recs[i]->f.made)
      return 0;
  return map->complete ? 1 : 0;
}

/* ---- header bits ---- */

static int
clear_incompat (struct qk_repair *r, uint64_t bit, int fx)
{
  struct qk_fixrec *f;
  uint8_t b[8];

  if (r->img->hdr.version < 3 || !(r->img->hdr.incompatible_features & bit)
      || header_shared (r, fx))
    return 0;
  f = offer (r, fx, 1, "");
  if (f == NULL)
    return -1;
  if (f->f.answer != QK_ANSWER_YES)
    return 0;
  be64_put (b, r->img->hdr.incompatible_features & ~bit);
  if (put (r, b, 8, 72) < 0 || flush (r) < 0)
    return -1;
  f->f.made = true;
  return 0;
}

/* ---- pass 4: COPIED ---- */

static int
pass_copied (struct qk_repair *r, const struct qk_refmap *map)
{
  const struct qk_header *h = &r->img->hdr;
  uint64_t cs = h->cluster_size;
  bool extl2 = h->subclusters > 1;
  bool data_file = (h->incompatible_features & QK_INCOMPAT_DATA_FILE) != 0;
  uint8_t *buf = malloc (cs), *old = malloc (cs);
  uint8_t *l1 = NULL, *l1old = NULL;
  struct qk_fixrec *f;
  int ret = -1;

  if (buf == NULL || old == NULL) {
    set_error (ENOMEM, "malloc");
    goto out;
  }
  f = offer (r, FX_FIX_COPIED, r->n_copied, NULL);
  if (f == NULL)
    goto out;
  if (f->f.answer != QK_ANSWER_YES) {
    ret = 0;
    goto out;
  }
  for (size_t i = 0; i < r->n_tabs; i++) {
    const struct tref *t = &r->tabs[i];
    if (t->l1 || !IS_ALIGNED (t->offset, cs)
        || overlaps_metadata (r, map, t->offset, cs, false))
      continue;
    if (qk_source_read_zeropad (cur (r), buf, cs, t->offset) < 0)
      goto out;
    memcpy (old, buf, cs);
    for (uint32_t k = 0; k < h->l2_entries; k++) {
      uint8_t *p = buf + (size_t) k * h->l2_entry_size;
      uint64_t e = be64_get (p), off = e & QK_L2E_OFFSET_MASK;
      enum qk_cluster_type ty = qk_l2_cluster_type (e, extl2, data_file);
      bool want;
      if (ty != QK_CLUSTER_NORMAL && ty != QK_CLUSTER_ZERO_ALLOC)
        continue;
      if (off == 0)
        continue;
      want = data_file || qk_refmap_get (map, off >> h->cluster_bits) == 1;
      if (want != ((e & QK_OFLAG_COPIED) != 0)) {
        be64_put (p, want ? e | QK_OFLAG_COPIED : e & ~QK_OFLAG_COPIED);
        f->f.corruptions_fixed++;
      }
    }
    if (put_diff (r, buf, old, cs, h->l2_entry_size, t->offset) < 0)
      goto out;
  }
  /* the active L1 table */
  if (r->img->l1 && r->img->l1_count
      && !overlaps_metadata (r, map, h->l1_table_offset,
                             (uint64_t) r->img->l1_count * 8, true)) {
    size_t len = (size_t) r->img->l1_count * 8;
    l1 = malloc (len);
    l1old = malloc (len);
    if (l1 == NULL || l1old == NULL) {
      set_error (ENOMEM, "malloc");
      goto out;
    }
    if (qk_source_read_zeropad (cur (r), l1, len, h->l1_table_offset) < 0)
      goto out;
    memcpy (l1old, l1, len);
    for (uint32_t k = 0; k < r->img->l1_count; k++) {
      uint64_t e = be64_get (l1 + 8 * (size_t) k);
      uint64_t off = e & QK_L1E_OFFSET_MASK;
      bool want;
      if (off == 0)
        continue;
      want = qk_refmap_get (map, off >> h->cluster_bits) == 1;
      if (want != ((e & QK_OFLAG_COPIED) != 0)) {
        be64_put (l1 + 8 * (size_t) k,
                  want ? e | QK_OFLAG_COPIED : e & ~QK_OFLAG_COPIED);
        f->f.corruptions_fixed++;
      }
    }
    if (put_diff (r, l1, l1old, len, 8, h->l1_table_offset) < 0)
      goto out;
  }
  if (flush (r) < 0)
    goto out;
  f->f.made = true;
  ret = 0;
out:
  free (buf);
  free (old);
  free (l1);
  free (l1old);
  return ret;
}

/* ---- driver ---- */

static void
close_stack (struct qk_repair *r)
{
  qk_image_close (r->img);
  r->img = NULL;
  qk_writer_close (&r->w);
}

static bool
clean (const struct qk_check_result *c)
{
  return c->corruptions == 0 && c->leaks == 0 && c->check_errors == 0;
}

/* Check again, over the stack, when the pass just run wrote (w: the
 * write count before it). */
static int
recheck (struct qk_repair *r, uint64_t w, struct qk_check_result *res,
         struct qk_refmap *map)
{
  if (r->n_writes == w)
    return 0;
  qk_refmap_recycle (map);
  return check (r, res, map);
}

/* One round of passes 0 to 4, each from the check made after the last
 * write. */
static int
round_of_passes (struct qk_repair *r, struct qk_refmap *map,
                 struct qk_check_result *res)
{
  int refs_ok;

  /* pass 0: snapshot table entries, one at a time (each changes how the
   * rest of the table reads); 0b: the table written again */
  for (int k = 0; k < 64; k++) {
    uint64_t w = r->n_writes;
    bool changed;
    if (pass_snapshots (r, &changed) < 0 || recheck (r, w, res, map) < 0)
      return -1;
    if (!changed)
      break;
  }
  {
    uint64_t w = r->n_writes;
    bool changed;
    if (pass_snaptable (r, map, &changed) < 0 || recheck (r, w, res, map) < 0)
      return -1;
  }

  /* pass 1: entries; 1b: clusters mapped twice by the active tables */
  if (r->n_entry || r->any_past_eof_table) {
    uint64_t w = r->n_writes;
    if (pass_entries (r, map) < 0 || recheck (r, w, res, map) < 0)
      return -1;
  }
  for (int k = 0; k < 64 && r->n_dups; k++) {
    uint64_t w = r->n_writes;
    bool changed;
    if (pass_duplicates (r, map, &changed) < 0
        || recheck (r, w, res, map) < 0)
      return -1;
    if (!changed)
      break;
  }

  /* pass 1c: bitmaps left in use */
  if (r->n_bm_in_use) {
    uint64_t w = r->n_writes;
    if (pass_bitmaps (r, map) < 0 || recheck (r, w, res, map) < 0)
      return -1;
  }

  /* pass 2: refcounts; 3: the dirty bit */
  {
    uint64_t w = r->n_writes;
    refs_ok = pass_refcounts (r, map);
    if (refs_ok < 0 || recheck (r, w, res, map) < 0)
      return -1;
  }
  if (refs_ok && r->n_leak == 0 && r->n_low == 0 && !r->refstruct_broken
      && map->complete && !(r->flags & QK_REPAIR_LEAKS_ONLY)) {
    uint64_t w = r->n_writes;
    if (clear_incompat (r, QK_INCOMPAT_DIRTY, FX_CLEAR_DIRTY) < 0
        || recheck (r, w, res, map) < 0)
      return -1;
  }

  /* pass 4: COPIED, only on right refcounts */
  if (r->n_copied && r->n_leak == 0 && r->n_low == 0 && !r->refstruct_broken
      && !(r->flags & QK_REPAIR_LEAKS_ONLY)) {
    uint64_t w = r->n_writes;
    if (pass_copied (r, map) < 0 || recheck (r, w, res, map) < 0)
      return -1;
  }
  return 0;
}

/* The rounds: a fix can make another possible (a table skipped for
 * overlapping the old refcount structure can be fixed once the rebuild
 * moved it), so the passes run again until a round writes nothing: then
 * a second repair, which would start from the same bytes, writes nothing
 * either (the two-run rule). A fix answered no is not asked again. */
#define MAX_ROUNDS 4

static int
run (struct qk_repair *r)
{
  struct qk_refmap map = { 0 };
  struct qk_check_result res;

  r->map = &map;
  r->first_check = true;
  if (check (r, &res, &map) < 0)
    goto fail;
  if (!r->img->is_qcow2) {
    set_error (ENOTSUP, "%s is not a qcow2 image", r->path);
    goto fail;
  }
  for (int round = 0; round < MAX_ROUNDS; round++) {
    uint64_t w = r->n_writes;
    if (round_of_passes (r, &map, &res) < 0)
      goto fail;
    if (r->n_writes == w)
      break;
  }

  /* the last check; pass 5: the corrupt bit. Every pass that wrote was
   * followed by a check, so the last one made is the last check (its
   * messages were not asked for: QK_CHECK_NO_MESSAGES, as the last
   * check's). */
  if (r->n_writes == r->checked_at)
    r->after = res;
  else if (recheck (r, r->checked_at, &r->after, &map) < 0)
    goto fail;
  if (clean (&r->after) && !(r->flags & QK_REPAIR_LEAKS_ONLY)
      && (r->img->hdr.incompatible_features & QK_INCOMPAT_CORRUPT)) {
    uint64_t w = r->n_writes;
    if (clear_incompat (r, QK_INCOMPAT_CORRUPT, FX_CLEAR_CORRUPT) < 0
        || recheck (r, w, &r->after, &map) < 0)
      goto fail;
  }
  qk_refmap_free (&map);
  r->map = NULL;
  return 0;
fail:
  qk_refmap_free (&map);
  r->map = NULL;
  return -1;
}

QK_EXPORT int
qk_repair_run (struct qk_repair *r, const char *path)
{
  int ret;

  if (r == NULL || path == NULL) {
    set_error (EINVAL, "qk_repair_run: NULL argument");
    return -1;
  }
  clear_results (r);
  r->path = path;
  if (r->fixer.mode == QK_REPAIR_NONE) {
    struct qk_source *s = qk_source_file (path);
    if (s == NULL)
      return -1;
    qk_writer_adopt (&r->w, s);
  }
  else if (qk_writer_open (&r->w, path, r->undo_path) < 0) {
    qk_internal_prefix_error ("qk_repair_run");
    close_stack (r);
    return -1;
  }
  ret = run (r);
  if (ret < 0) {
    struct qk_saved_error sv;
    qk_internal_save_error (&sv);
    close_stack (r);
    qk_internal_restore_error (&sv);
    return -1;
  }
  close_stack (r);
  return 0;
}

/* ---- undo ---- */

QK_EXPORT int
qk_undo_apply (const char *journal_path, const char *image_path,
               unsigned flags)
{
  const char *leaf;
  int dirfd, fd, ret;
  struct qk_source *s;
  struct qk_saved_error sv;

  if (journal_path == NULL || image_path == NULL) {
    set_error (EINVAL, "qk_undo_apply: NULL argument");
    return -1;
  }
  dirfd = qk_dir_of (journal_path, &leaf);
  if (dirfd < 0) {
    qk_internal_prefix_error ("qk_undo_apply");
    return -1;
  }
  fd = open (image_path, O_RDWR | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) {
    set_error (errno, "qk_undo_apply: open %s read-write", image_path);
    close (dirfd);
    return -1;
  }
  s = qk_source_fd_rw (fd, image_path, QK_IO_LOCK);
  if (s == NULL) {
    qk_internal_prefix_error ("qk_undo_apply");
    close (dirfd);
    return -1;
  }
  ret = qk_undo_replay (dirfd, leaf, s,
                        (flags & QK_UNDO_FORCE) ? QK_UNDO_IGNORE_ID : 0);
  if (ret < 0)
    qk_internal_save_error (&sv);
  qk_source_close (s);
  close (dirfd);
  if (ret < 0) {
    qk_internal_restore_error (&sv);
    qk_internal_prefix_error ("qk_undo_apply");
  }
  return ret;
}
