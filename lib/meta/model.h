/* lib/meta/model.h: the bottom layer of lib/meta (model.c): the problem
 * rows, the in-memory model of a domain's metadata, and what works on it
 * alone. Includes no other lib/meta header (layer order in meta.h). */
#ifndef QK_META_MODEL_H
#define QK_META_MODEL_H

#include <sys/stat.h>

#include "internal.h"
#include "util/path.h"

/* ---- problem rows (problems.def; the table is in model.c) ---- */
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

/* The bounds of what is read (xml.c and load.c enforce them). */
struct meta_xml_limits {
  uint64_t max_size;
  unsigned max_depth;
};

/* ---- the in-memory model (model.c) ---- */
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

/* model.c */
extern int meta_add_finding (struct qk_meta *m, int pr, int kind,
                             uint64_t offset, const char *fmt, ...)
  __attribute__ ((format (printf, 5, 6)));
extern size_t meta_lookup (const struct meta_set *s, const char *name);
/* A new moment at the end of s (NULL: out of memory). */
extern struct meta_moment_priv *meta_new_moment (struct meta_set *s);
/* Index the loaded moments of s by name; later duplicates are not
 * loaded (a finding in m). */
extern int meta_build_hash (struct qk_meta *m, struct meta_set *s);
extern void meta_unload (struct qk_meta *m);
extern const char *meta_kind_name (int kind);        /* "snapshot" */
extern const char *meta_elem_name (int kind);        /* "domainsnapshot" */
extern const char *meta_bulk_root (int kind);        /* "snapshots" */
extern char *meta_fmt (const char *f, ...)
  __attribute__ ((format (printf, 1, 2)));

/* Link parents and children, find the current moment as libvirt would. */
extern void meta_link (struct meta_set *s);

/* Problem reports (qk_meta_check's callback). */
struct meta_report {
  qk_problem_fn fn;
  void *opaque;
  int cb_ret;
  int errors;
  const struct qk_meta_moment *subject;   /* what the next reports are
                                             about (meta_subject) */
  const char *file;   /* with no subject: the file (an image) the next
                         reports are about, for the record's "file" */
};
/* The moment the following reports are about (NULL: none). */
extern void meta_subject (struct meta_report *r,
                          const struct qk_meta_moment *p);
extern void meta_report (struct meta_report *r, int pr, const char *fmt, ...)
  __attribute__ ((format (printf, 3, 4)));

#endif
