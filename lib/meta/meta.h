/* lib/meta internal declarations: libvirt snapshot and checkpoint
 * metadata. Uses only the public image API and lib/util. */
#ifndef QK_META_META_H
#define QK_META_META_H

#include <sys/stat.h>

#include "internal.h"
#include "util/path.h"

/* ---- problem rows (problems.c) ---- */
enum {
#define PROBLEM(code, name, cls, desc) MP_##name,
#include "meta/problems.def"
#undef PROBLEM
  MP__COUNT
};

/* A problem found while loading, kept until qk_meta_check replays it. */
struct meta_finding {
  int pr;
  int kind;           /* -1: none */
  char *msg;
  uint64_t offset;    /* QK_NONE */
};

/* ---- the safe XML layer (xml.c) ---- */
struct meta_xml_limits {
  uint64_t max_size;
  unsigned max_depth;
};

/* Scanner events over raw XML bytes (tokenizer only: finds element
 * boundaries, rejects DOCTYPE, enforces depth). */
enum scan_err {
  SCAN_OK = 0,
  SCAN_SYNTAX,      /* not well-formed at the level the scanner sees */
  SCAN_HOSTILE,     /* DOCTYPE, or too deep */
  SCAN_TOO_LARGE,
  SCAN_IO,
};

struct xml_scan {
  /* state */
  int st;
  unsigned depth;
  unsigned max_depth;
  char quote;
  unsigned match;         /* progress through a terminator or keyword */
  char bang[10];
  unsigned nbang;
  char tag[64];
  unsigned ntag;
  bool tag_end;           /* end tag */
  bool last_slash;
  bool root_seen, root_closed;
  uint64_t pos;           /* absolute offset of the next byte */
  uint64_t tag_start;     /* offset of '<' of the current tag */
  bool text_nonspace;     /* non-space text at depth 1 seen */
  /* callback on every element start tag end and end tag end:
   * start: depth is the element's depth (root = 1), empty for <x/>.
   * end: depth of the element being closed. */
  int (*on_tag) (void *opaque, bool end, bool empty, unsigned depth,
                 const char *name, uint64_t start, uint64_t stop);
  int (*on_text) (void *opaque, unsigned depth, uint64_t at);
  void *opaque;
  enum scan_err err;
  char errmsg[160];
};

extern void xml_scan_init (struct xml_scan *sc, unsigned max_depth);
/* Feed bytes; returns 0 or -1 (sc->err, sc->errmsg set). */
extern int xml_scan_feed (struct xml_scan *sc, const char *buf, size_t len);
/* Whether the scanner is between tags (no tag bytes pending). */
extern bool xml_scan_idle (const struct xml_scan *sc);
/* After all bytes: -1 unless exactly one root element was closed. */
extern int xml_scan_finish (struct xml_scan *sc);

/* Parse a complete, already scanned buffer with the safe options. */
struct _xmlDoc;
extern struct _xmlDoc *meta_xml_parse (const char *buf, size_t len,
                                       const char *url, char *err,
                                       size_t errlen);
extern void meta_xml_free_doc (struct _xmlDoc *doc);

/* ---- the in-memory model (store.c) ---- */
struct meta_moment_priv {
  struct qk_meta_moment pub;
  struct qk_meta_disk *disks;
  struct qk_meta_domain_disk *ddisks;
  struct qk_strvec strs;    /* every string of this moment */
  bool bad_active;
  bool dup;                 /* a later duplicate of a name */
  bool in_cycle;
  bool missing_parent;
  bool self_parent;
  bool has_active_elem;     /* checkpoint with <active> */
  bool disk_invalid;
  char *disk_invalid_msg;
  bool bad_state, bad_ctime;
  bool parse_failed;
  bool unsafe_name;
  size_t read_order;        /* per-file: position in readdir order */
  uint64_t file_size;
  uint64_t hash;            /* FNV-1a of the element bytes without <active> */
};

struct meta_set {
  int kind;
  int layout;
  char *dir;                /* per-file directory (host path) */
  char *bulk;               /* bulk file (host path) */
  char *location;           /* the one in use */
  struct meta_moment_priv *m;
  size_t n, cap;
  char *bulk_current;       /* current= of the bulk root (NULL: none) */
  bool bulk_current_seen;
  size_t current;           /* as libvirt sees it */
  size_t claimed;           /* what the files say (<active>1, current=) */
  bool relations_bad;       /* libvirt's UpdateRelations would fail */
  bool multi_current;       /* several <active>1: libvirt's pick is random */
  /* name hash: index+1, 0 empty */
  size_t *hash;
  size_t hash_cap;
};

struct qk_meta {
  char *domain;
  struct qk_meta_options o;
  char *libvirt_root, *config_dir, *state_dir, *sysroot;
  struct qk_root root;      /* the sysroot (QK_ROOT_IN), or the host */
  char *config_file;        /* host path of the domain definition */
  char *state_logical;      /* the state directory as given (before sysroot) */
  char *uuid;
  struct qk_meta_domain_disk *ddisks;
  size_t n_ddisks;
  struct qk_strvec dstrs;
  bool domain_ok;
  struct meta_set set[2];
  struct meta_finding *f;
  size_t nf, capf;
  struct meta_xml_limits lim;
};

/* store.c */
extern int meta_add_finding (struct qk_meta *m, int pr, int kind,
                             uint64_t offset, const char *fmt, ...)
  __attribute__ ((format (printf, 5, 6)));
extern size_t meta_lookup (const struct meta_set *s, const char *name);
extern char *meta_host_path (const struct qk_meta *m, const char *path);
/* Open (or stat) a host path made by meta_host_path, resolved again under
 * the sysroot so that nothing swapped in since leads out of it. */
extern int meta_open (const struct qk_meta *m, const char *host, int flags);
extern int meta_stat (const struct qk_meta *m, const char *host,
                      struct stat *st);
extern int meta_load (struct qk_meta *m);
/* Read a whole regular file from fd (taken over), at most max bytes:
 * 0, -1 (errno; EINVAL and *mode for a file that is not regular), or 1
 * when it is larger than max (*size set). */
extern int meta_read_limited_fd (int fd, uint64_t max, char **buf,
                                 size_t *len, uint64_t *size, mode_t *mode);
/* A domain name that can be a file name (no '/', no leading '.'). */
extern bool meta_domain_name_ok (const char *d);
/* o's configuration and state directories, before the sysroot. */
extern void meta_dirs (const struct qk_meta_options *o, char **cfg,
                       char **state);
/* Load s (kind, layout, dir or bulk set) into m. */
extern int meta_load_set_at (struct qk_meta *m, struct meta_set *s);
extern void meta_unload (struct qk_meta *m);
extern const char *meta_kind_name (int kind);        /* "snapshot" */
extern const char *meta_elem_name (int kind);        /* "domainsnapshot" */
extern const char *meta_bulk_root (int kind);        /* "snapshots" */

/* parse.c-style extraction lives in xml.c: fill a moment from a doc. */
extern int meta_extract_moment (struct qk_meta *m, struct meta_set *s,
                                struct _xmlDoc *doc,
                                struct meta_moment_priv *mp);
extern int meta_extract_domain (struct qk_meta *m, struct _xmlDoc *doc);

/* relations.c */
extern void meta_link (struct meta_set *s);
struct meta_report {
  qk_problem_fn fn;
  void *opaque;
  int cb_ret;
  int errors;
  const struct qk_meta_moment *subject;   /* what the next reports are
                                             about (meta_subject) */
};
/* The moment the following reports are about (NULL: none). */
extern void meta_subject (struct meta_report *r,
                          const struct qk_meta_moment *p);
extern void meta_report (struct meta_report *r, int pr, const char *fmt, ...)
  __attribute__ ((format (printf, 3, 4)));
extern void meta_check_relations (struct qk_meta *m, struct meta_report *r);

/* crosscheck.c */
extern void meta_check_images (struct qk_meta *m, struct meta_report *r);
/* The same file (normalised path, or under m's sysroot the same inode). */
extern bool meta_same_path (const struct qk_meta *m, const char *a,
                            const char *b);
/* Open an image read-only with its backing chain, resolved like every
 * other path of m (under its sysroot). */
extern struct qk_image *meta_image_open (struct qk_meta *m, const char *path);
/* The disk of a <domain> with target (or source path) name. */
extern const struct qk_meta_domain_disk *
meta_ddisk (const struct qk_meta_domain_disk *d, size_t n, const char *name);
/* The <disk> of a moment's <disks> (revert: of its <revertDisks>). */
extern const struct qk_meta_disk *meta_mdisk (const struct qk_meta_moment *p,
                                              const char *target, bool revert);
extern bool meta_is_external (const struct qk_meta_disk *d);
/* The image a disk used right after moment p was taken (*revert: after a
 * revert to it, or NULL). */
extern const char *meta_active_after (const struct qk_meta_moment *p,
                                      const char *target,
                                      const char **revert);

/* The byte range [*a, *b) of the <active> child (with its indentation and
 * newline) in one element's bytes; *a == *b when there is none. */
extern void meta_active_range (const char *elem, size_t len, size_t *a,
                               size_t *b);
extern uint64_t meta_hash2 (const char *p1, size_t n1, const char *p2,
                            size_t n2);

/* convert.c */
extern int meta_convert (struct qk_meta *m, int kind, int layout,
                         unsigned flags);
/* Reload m's metadata from the files. */
extern int meta_reload (struct qk_meta *m);

#endif
