/* Unit tests of lib/meta/host.c: a host's domains in an embedded root and
 * under a sysroot (definitions, status XML, disks of every type, the
 * <backingStore> chain), and hostile definitions (too large, not
 * well-formed, a symlink out of the sysroot, a <name> that is not the
 * file's), which give warnings, never a failure. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <sys/stat.h>
#include <unistd.h>

#include "meta/meta.h"
#include "../tap.h"

static char tmpl[] = "/tmp/qk-test-host.XXXXXX";

static void
put (const char *rel, const char *fmt, ...)
{
  char path[4096], cmd[4200];
  va_list ap;
  FILE *f;

  snprintf (path, sizeof path, "%s/%s", tmpl, rel);
  snprintf (cmd, sizeof cmd, "mkdir -p \"$(dirname '%s')\"", path);
  if (system (cmd) != 0)
    abort ();
  f = fopen (path, "w");
  if (f == NULL)
    abort ();
  va_start (ap, fmt);
  vfprintf (f, fmt, ap);
  va_end (ap);
  fclose (f);
}

static const char *dom1 =
  "<!-- WARNING: THIS IS AN AUTO-GENERATED FILE -->\n"
  "<domain type='qemu'><name>vm1</name>"
  "<uuid>11111111-2222-3333-4444-555555555555</uuid><devices>"
  "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
  "<source file='/images/vm1.qcow2'/><target dev='vda'/></disk>"
  "<disk type='network' device='disk'><driver name='qemu' type='raw'/>"
  "<source protocol='nbd' name='export'><host name='h' port='10809'/></source>"
  "<target dev='vdb'/></disk>"
  "<disk type='block' device='disk'><driver name='qemu' type='raw'/>"
  "<source dev='/dev/sdz'/><target dev='vdc'/><readonly/></disk>"
  "<disk type='volume' device='disk'><source pool='p' volume='v'/>"
  "<target dev='vdd'/></disk>"
  "<disk device='cdrom'><target dev='hdc'/><readonly/></disk>"
  "</devices></domain>\n";

static const char *status2 =
  "<domstatus state='running' reason='booted' pid='4242'>"
  "<domain type='qemu' id='1'><name>vm2</name><uuid>u2</uuid><devices>"
  "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
  "<source file='/images/vm2.top' index='2'/>"
  "<backingStore type='file' index='1'><format type='qcow2'/>"
  "<source file='/images/vm2.mid'/>"
  "<backingStore type='file'><format type='raw'/>"
  "<source file='/images/../images/vm2.base'/><backingStore/>"
  "</backingStore></backingStore><target dev='vda'/></disk>"
  "</devices></domain></domstatus>\n";

static bool
has_warning (const struct qk_meta_domains *l, const char *needle)
{
  for (size_t i = 0; i < qk_meta_domains_warning_count (l); i++)
    if (strstr (qk_meta_domains_warning (l, i), needle))
      return true;
  return false;
}

int
main (void)
{
  struct qk_meta_options o = { 0 };
  struct qk_meta_domains *l;
  const struct qk_meta_host_domain *d;
  const struct qk_meta_host_disk *k;
  static char root[4096], sys[4096], want[4096];

  setvbuf (stdout, NULL, _IONBF, 0);
  if (mkdtemp (tmpl) == NULL)
    return 1;

  /* an embedded root: vm1 defined, vm2 defined and running (its status
   * XML's disks are the ones in use), vm3 running only (transient) */
  put ("lr/etc/qemu/vm1.xml", "%s", dom1);
  put ("lr/etc/qemu/vm2.xml", "<domain><name>vm2</name><uuid>u2</uuid>"
       "<devices><disk type='file'><source file='/old'/><target dev='vda'/>"
       "</disk></devices></domain>");
  put ("lr/run/qemu/vm2.xml", "%s", status2);
  put ("lr/run/qemu/vm3.xml", "<domstatus state='running' pid='7'><domain>"
       "<name>vm3</name></domain></domstatus>");
  put ("lr/run/qemu/vm3.pid", "7");
  put ("lr/etc/qemu/autostart/vm1.xml", "not read");
  snprintf (root, sizeof root, "%s/lr", tmpl);
  o.libvirt_root = root;
  l = qk_meta_list_domains (&o, NULL, 0);
  ok (l != NULL, "list an embedded root");
  is_u64 (qk_meta_domains_count (l), 3, "three domains");
  is_u64 (qk_meta_domains_warning_count (l), 0, "no warnings");
  for (size_t i = 0; l && i < qk_meta_domains_warning_count (l); i++)
    printf ("# warning: %s\n", qk_meta_domains_warning (l, i));
  d = qk_meta_domains_get (l, 0);
  is_str (d->name, "vm1", "sorted by name");
  is_str (d->uuid, "11111111-2222-3333-4444-555555555555", "uuid");
  ok (d->persistent && !d->running, "vm1 persistent, not running");
  snprintf (want, sizeof want, "%s/etc/qemu/vm1.xml", root);
  is_str (d->config_path, want, "config path");
  is_u64 (qk_meta_domains_disk_count (l, 0), 5, "vm1 has 5 disks");
  k = qk_meta_domains_disk (l, 0, 0);
  ok (k->type == QK_META_DISK_FILE, "vda is a file");
  is_str (k->path, "/images/vm1.qcow2", "vda path (no sysroot)");
  is_str (k->format, "qcow2", "vda format");
  k = qk_meta_domains_disk (l, 0, 1);
  ok (k->type == QK_META_DISK_NETWORK && k->path == NULL, "vdb network");
  is_str (k->protocol, "nbd", "vdb protocol");
  is_str (k->source, "export", "vdb source name");
  k = qk_meta_domains_disk (l, 0, 2);
  ok (k->type == QK_META_DISK_BLOCK && k->readonly, "vdc block, readonly");
  is_str (k->path, "/dev/sdz", "vdc path");
  k = qk_meta_domains_disk (l, 0, 3);
  ok (k->type == QK_META_DISK_VOLUME, "vdd volume");
  is_str (k->source, "p/v", "vdd source pool/volume");
  k = qk_meta_domains_disk (l, 0, 4);
  ok (k->source == NULL && k->path == NULL, "empty cdrom: no source");
  is_str (k->device, "cdrom", "cdrom device");
  d = qk_meta_domains_get (l, 1);
  is_str (d->name, "vm2", "vm2");
  ok (d->persistent && d->running && d->pid == 4242, "vm2 running, pid");
  ok (d->status_path && strstr (d->status_path, "/run/qemu/vm2.xml"),
      "status path");
  is_u64 (qk_meta_domains_disk_count (l, 1), 1, "vm2: the status disks");
  k = qk_meta_domains_disk (l, 1, 0);
  is_str (k->path, "/images/vm2.top", "vm2 top");
  is_u64 (k->n_backing, 2, "two backing images (the empty end not counted)");
  if (k->n_backing == 2) {
    is_str (k->backing[0].path, "/images/vm2.mid", "backing 1");
    is_str (k->backing[0].format, "qcow2", "backing 1 format");
    is_str (k->backing[1].path, "/images/vm2.base", "backing 2 normalised");
  }
  d = qk_meta_domains_get (l, 2);
  ok (!d->persistent && d->running && d->pid == 7 && d->config_path == NULL,
      "vm3 transient");
  {
    struct qk_meta_options mo;
    ok (qk_meta_domains_options (l, &mo) == 0 && mo.libvirt_root
        && strcmp (mo.config_dir, want) != 0, "options for qk_meta_open");
    struct qk_meta *m = qk_meta_open ("vm1", &mo);
    ok (m && qk_meta_domain_disk_count (m) == 5, "qk_meta_open finds vm1");
    qk_meta_close (m);
  }
  ok (qk_meta_domains_get (l, 3) == NULL && qk_meta_domains_disk (l, 0, 9)
      == NULL, "out of range: NULL");
  qk_meta_domains_free (l);

  /* a sysroot: the system layout below it; hostile files */
  snprintf (sys, sizeof sys, "%s/sys", tmpl);
  put ("sys/etc/libvirt/qemu/good.xml", "<domain><name>good</name><devices>"
       "<disk type='file'><source file='/var/lib/libvirt/images/link/g.qcow2'/>"
       "<target dev='vda'/></disk></devices></domain>");
  put ("sys/etc/libvirt/qemu/bad.xml", "<domain><name>bad</name>");
  put ("sys/etc/libvirt/qemu/renamed.xml", "<domain><name>../x</name></domain>");
  put ("sys/etc/libvirt/qemu/.hidden.xml", "<domain/>");
  put ("sys/etc/libvirt/qemu/doctype.xml", "<!DOCTYPE d [<!ENTITY e SYSTEM "
       "'file:///etc/passwd'>]><domain><name>&e;</name></domain>");
  put ("sys/etc/libvirt/qemu/notdom.xml", "<network/>");
  {
    static char big[4096];
    FILE *f;
    snprintf (big, sizeof big, "%s/sys/etc/libvirt/qemu/huge.xml", tmpl);
    f = fopen (big, "w");
    fputs ("<domain><name>huge</name>", f);
    fseek (f, 20 << 20, SEEK_SET);       /* sparse: 20 MiB > 16 MiB */
    fputs ("</domain>", f);
    fclose (f);
    snprintf (big, sizeof big, "%s/sys/etc/libvirt/qemu/escape.xml", tmpl);
    if (symlink ("../../../../../../../../etc/passwd", big) != 0)
      abort ();
    snprintf (big, sizeof big, "%s/sys/var/lib/libvirt/images", tmpl);
    put ("sys/var/lib/libvirt/images/real/g.qcow2", "x");
    snprintf (big, sizeof big, "%s/sys/var/lib/libvirt/images/link", tmpl);
    if (symlink ("/var/lib/libvirt/images/real", big) != 0)
      abort ();
    snprintf (big, sizeof big, "%s/sys/etc/libvirt/qemu/dir.xml", tmpl);
    mkdir (big, 0755);
  }
  memset (&o, 0, sizeof o);
  o.sysroot = sys;
  l = qk_meta_list_domains (&o, NULL, 0);
  ok (l != NULL, "list a sysroot");
  for (size_t i = 0; l && i < qk_meta_domains_warning_count (l); i++)
    printf ("# warning: %s\n", qk_meta_domains_warning (l, i));
  /* doctype.xml: the entity is not expanded (no external entities), so
   * its <name> is empty: listed, with a warning */
  is_u64 (qk_meta_domains_count (l), 3, "doctype, good and renamed only");
  if (qk_meta_domains_count (l) == 3) {
    d = qk_meta_domains_get (l, 1);
    is_str (d->name, "good", "good");
    snprintf (want, sizeof want, "%s/var/lib/libvirt/images/real/g.qcow2",
              sys);
    k = qk_meta_domains_disk (l, 1, 0);
    is_str (k ? k->path : NULL, want,
            "an absolute symlink resolves inside the sysroot");
    is_str (k ? k->source : NULL, "/var/lib/libvirt/images/link/g.qcow2",
            "source as written");
    d = qk_meta_domains_get (l, 2);
    is_str (d->name, "renamed", "a <name> with '/': the file's name is kept");
  }
  ok (has_warning (l, "<name> is '../x'"), "warning: <name> not the file's");
  ok (has_warning (l, "bad.xml:"), "warning: not well-formed");
  ok (has_warning (l, "huge.xml: too large"), "warning: too large");
  ok (has_warning (l, "notdom.xml: not a <domain>"), "warning: not a domain");
  ok (has_warning (l, "dir.xml: not a regular file"), "warning: a directory");
  ok (has_warning (l, "escape.xml"), "warning: a symlink out of the sysroot "
      "resolves inside it (no such file there)");
  ok (has_warning (l, "doctype.xml: <name> is ''"),
      "warning: external entity not expanded");
  ok (!has_warning (l, "hidden"), "hidden files are not domains");
  qk_meta_domains_free (l);

  /* a missing layout: no domains, no failure */
  memset (&o, 0, sizeof o);
  o.libvirt_root = "/nonexistent/qk";
  l = qk_meta_list_domains (&o, NULL, 0);
  ok (l && qk_meta_domains_count (l) == 0
      && qk_meta_domains_warning_count (l) == 0, "empty root: nothing");
  qk_meta_domains_free (l);
  ok (qk_meta_list_domains (&o, NULL, 0x80) == NULL && qk_get_errno ()
      == EINVAL, "unknown flags refused");

  /* the session layout */
  put ("home/.config/libvirt/qemu/s1.xml", "<domain><name>s1</name></domain>");
  put ("xdg-run/libvirt/qemu/run/s2.xml", "<domstatus><domain><name>s2</name>"
       "</domain></domstatus>");
  snprintf (want, sizeof want, "%s/home", tmpl);
  setenv ("HOME", want, 1);
  unsetenv ("XDG_CONFIG_HOME");
  snprintf (want, sizeof want, "%s/xdg-run", tmpl);
  setenv ("XDG_RUNTIME_DIR", want, 1);
  l = qk_meta_list_domains (NULL, NULL, QK_META_LIST_SESSION);
  ok (l && qk_meta_domains_count (l) == 2, "session: s1 defined, s2 running");
  if (l && qk_meta_domains_count (l) == 2) {
    struct qk_meta_options mo;
    ok (qk_meta_domains_get (l, 1)->running, "s2 running");
    qk_meta_domains_options (l, &mo);
    ok (mo.state_dir && strstr (mo.state_dir, "/.config/libvirt/qemu/lib"),
        "session state dir");
  }
  qk_meta_domains_free (l);

  {
    char cmd[4200];
    snprintf (cmd, sizeof cmd, "rm -rf '%s'", tmpl);
    if (system (cmd) != 0)
      return 1;
  }
  return tap_done ();
}
