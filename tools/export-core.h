/* The export engine shared by `qcowkit export` and `qcowkit rescue`: the
 * guest-visible contents of an opened image written to a file descriptor,
 * with holes where the guest reads zeros, by worker threads. Salvage mode
 * (rescue) goes on past clusters that cannot be read: they are left as
 * holes (zeros) and reported, with the ranges the caller already knows
 * are unreadable. */
#ifndef QK_EXPORT_CORE_H
#define QK_EXPORT_CORE_H

#include <stdbool.h>
#include <stdint.h>

#include "tool.h"

/* A guest range that is not read: left as a hole (zeros). */
struct export_range {
  uint64_t start, length;
};

/* A guest range that could not be read (salvage): why is the library's
 * message, valid during the call. */
typedef void (*export_unreadable_fn) (void *opaque, uint64_t start,
                                      uint64_t length, const char *why);

struct export_spec {
  const char *path;            /* the image: each extra worker opens it again */
  const char *snap;            /* an internal snapshot (name or ID), or NULL */
  const char *out;             /* the output's name, for messages */
  const struct common_opts *o;
  unsigned open_flags;
  struct qk_image *img;        /* opened by the caller (and the snapshot
                                * selected); worker 0 reads through it */
  int fd;                      /* the output, opened by the caller: a
                                * regular file is sized here (holes), a
                                * pipe is written in order */
  uint64_t size;               /* guest bytes */
  bool no_flush;               /* no fsync at the end */
  bool salvage;                /* unreadable clusters: holes, reported */
  const struct export_range *holes; /* salvage: sorted, not overlapping */
  size_t nholes;
  export_unreadable_fn unreadable;
  void *opaque;
  bool hash;                   /* sha256 of the output: one worker, in guest
                                * order, no copy offload */
  /* results */
  uint8_t sha256[32];
  uint64_t written;            /* bytes written (holes not counted) */
};

/* 0 when every byte was written (salvage: every readable byte), -1 after
 * a message on stderr. */
extern int export_run (struct export_spec *s);

/* Refuse (-1, with a message) to write over the image or a file it reads. */
extern int export_output_is_input (struct qk_image *img, const char *out);

/* The size a snapshot is exported at (looked up as
 * qk_image_select_snapshot does: ID first, then name). */
extern uint64_t export_snapshot_size (struct qk_image *img, const char *snap);

#endif
