/* lib/meta/edit.h: the metadata writers' common layer (edit.c): a plan of
 * changes to the moments of one kind, turned into byte edits of the files
 * they were read from (only the changed elements are replaced), parsed
 * back, then written crash-safely with a backup of every old file, each
 * change reported as a unified diff. repair.c and delete.c plan; this
 * writes. The write protocol is stated in edit.c. */
#ifndef QK_META_EDIT_H
#define QK_META_EDIT_H

#include "meta/meta.h"

/* What changes in one moment. */
struct medit {
  bool touched;             /* some field below differs from the file */
  bool parent_set;
  char *parent;             /* new <parent> (NULL: a root) when parent_set */
  int active;               /* new <active> (-1: unchanged) */
  bool clear_dip;           /* remove <snapshotDeleteInProgress/> */
  bool set_dip;             /* add it to every <disk> with children */
  bool dip_empty;           /* with set_dip: empty <disk/> elements too
                               (internal ones) get children for it */
  char *revert_disks;       /* a <revertDisks> element put after <disks> */
  bool drop;                /* remove the moment */
  char *rename_to;          /* per-file: new leaf */
  char **subst;             /* pairs: file='OLD' becomes file='NEW' */
  size_t nsubst;
};

/* A moment to add (its element for each layout). */
struct mnew {
  char *name;
  char *xml_pf;             /* per-file file contents */
  char *xml_bulk;           /* bulk element, indented, ending in a newline */
};

struct meta_plan {
  struct qk_meta *m;
  struct meta_set *s;
  struct medit *st;         /* one per moment of s */
  bool bulk_current_set;
  char *bulk_current;       /* new current= (NULL: none) */
  struct mnew *nw;
  size_t nnew, capnew;
  const char *tag;          /* backup directory: KIND/.D.qk-TAG.N */
};

extern int meta_plan_init (struct meta_plan *p, struct qk_meta *m, int kind,
                           const char *tag);
extern void meta_plan_free (struct meta_plan *p);
extern bool meta_plan_empty (const struct meta_plan *p);
/* Takes xml_pf and xml_bulk. */
extern int meta_plan_add_new (struct meta_plan *p, const char *name,
                              char *xml_pf, char *xml_bulk);
extern int medit_set_parent (struct medit *e, const char *parent);
extern int medit_add_subst (struct medit *e, const char *old,
                            const char *new);
/* Build the edits, parse them back, write them unless dry, and report
 * each file through fn. */
extern int meta_plan_apply (struct meta_plan *p, bool dry,
                            qk_meta_change_fn fn, void *opaque);

/* An image operation (kind -1: "commit", "rebase", "create", ...) through
 * the change callback; ECANCELED when it says stop. */
extern int meta_report_op (qk_meta_change_fn fn, void *opaque,
                           const char *action, const char *path,
                           const char *new_path);

/* The snapshot a writer (delete, revert) acts on: loaded, the relations
 * sound, and unless dry no libvirt running (verb: "delete"). Its index,
 * or QK_META_NONE with the error set. */
extern size_t meta_writer_target (struct qk_meta *m, const char *name,
                                  bool dry, const char *verb);

/* Write a whole file durably in the directory of host path, keeping the
 * old one first as BACKUP_DIR/leaf (backup dir made with tag). Reports it
 * through fn. */
extern int meta_replace_file (struct qk_meta *m, const char *host,
                              const char *buf, size_t len, const char *tag,
                              bool dry, qk_meta_change_fn fn, void *opaque);

/* helpers */
extern char *meta_esc (const char *s);          /* XML text and attributes */
extern char *meta_read_fd (int fd, const char *path, size_t max, size_t *len);
/* Replace the value of every file='OLD' (or "OLD") in the string. 0,
 * -1 (ENOENT: not found). */
extern int meta_subst_source (char **t, const char *old, const char *new);
extern const char *meta_leaf_of (const char *path);
/* The domain definition's bytes (m->config_file, at most 16 MiB), NUL
 * terminated; NULL with the error set. */
extern char *meta_definition_read (struct qk_meta *m);
/* Whether the qcow2 image at host path holds an internal snapshot named
 * name: 1, 0, or -1 with the error set (cannot be opened, not qcow2, its
 * snapshot table unreadable). */
extern int meta_image_has_snapshot (struct qk_meta *m, const char *path,
                                    const char *name);


#endif
