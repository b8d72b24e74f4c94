/* QEMU's image locking, on the file layer's descriptor (io/io.h).
 *
 * What QEMU does (block/file-posix.c, raw_apply_lock_bytes and
 * raw_check_lock_bytes, QEMU 6.1 and later, where there are four
 * permissions): for every permission p it holds it takes an OFD read lock
 * on byte 100 + p, and for every permission it does not share, on byte
 * 200 + p. Then it tests (F_OFD_GETLK, a write lock on one byte) byte
 * 200 + p for every p it wants (someone refuses to share it) and byte
 * 100 + p for every p it does not share (someone holds it). Taking the
 * locks before testing means two openers racing both see each other and
 * at worst both fail; neither can slip past the other.
 *
 * We do the same, so qemu-img and QEMU see us as one of their own, and
 * we see them. The locks are read locks on our own open file description:
 * they never conflict with each other, only a test sees them; they go
 * away when the descriptor is closed (a crash included).
 *
 * On a conflict the locks return to what they were before the call and
 * the error is EBUSY, naming the permission as QEMU does ("Failed to get
 * "write" lock") and, when /proc/<pid>/fdinfo shows it, the process
 * that holds the byte (OFD locks report no pid through fcntl). */
#include <config.h>

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "internal.h"
#include "io/io.h"

#define PERM_BASE 100
#define SHARED_BASE 200
#define NPERMS 4

enum {
  PERM_CONSISTENT_READ = 0x1,
  PERM_WRITE = 0x2,
  PERM_WRITE_UNCHANGED = 0x4,
  PERM_RESIZE = 0x8,
};

static const char *const perm_names[NPERMS] = {
  "consistent read", "write", "write unchanged", "resize",
};

/* What a mode holds and what it does not share, as qemu-img: a format
 * driver's file child always holds consistent read and never shares
 * write or resize; writing adds write and resize
 * (bdrv_default_perms_for_storage). */
static void
mode_perms (unsigned mode, unsigned *perm, unsigned *unshared)
{
  *perm = 0;
  *unshared = 0;
  if (mode == QK_LOCK_NONE)
    return;
  *perm = PERM_CONSISTENT_READ;
  if (mode & QK_LOCK_WRITE)
    *perm |= PERM_WRITE | PERM_RESIZE;
  *unshared = PERM_WRITE | PERM_RESIZE;
}

#ifdef F_OFD_SETLK

/* Lock (read lock) or unlock the len bytes from off: one call for a run
 * of bytes that change the same way (the kernel keeps the same state as
 * for a call a byte). */
static int
set_bytes (int fd, int off, int len, bool lock)
{
  struct flock fl = {
    .l_type = lock ? F_RDLCK : F_UNLCK,
    .l_whence = SEEK_SET,
    .l_start = off,
    .l_len = len,
  };
  return fcntl (fd, F_OFD_SETLK, &fl);
}

/* 1: another open file description holds a lock on one of the len bytes
 * from off. */
static int
bytes_taken (int fd, int off, int len)
{
  struct flock fl = {
    .l_type = F_WRLCK,
    .l_whence = SEEK_SET,
    .l_start = off,
    .l_len = len,
  };
  if (fcntl (fd, F_OFD_GETLK, &fl) < 0)
    return -1;
  return fl.l_type != F_UNLCK;
}

/* Take or drop the locks so that they are (perm, unshared), from what
 * they were (from_perm, from_unshared): only the bytes that change, as
 * QEMU does (raw_apply_lock_bytes skips bytes it holds already). A
 * restore after a failure passes ALL_BYTES as the "from", which sets
 * every byte, whatever a half-done change left. */
#define ALL_BYTES 0x100u

static int
apply (int fd, unsigned from_perm, unsigned from_unshared, unsigned perm,
       unsigned unshared)
{
  static const int base[2] = { PERM_BASE, SHARED_BASE };
  const unsigned from[2] = { from_perm, from_unshared };
  const unsigned to[2] = { perm, unshared };

  /* per range of bytes, the runs of neighbours that change alike: a
   * writer's open takes bytes 100-101, 103, 201 and 203 in four calls */
  for (int r = 0; r < 2; r++) {
    unsigned change = (from[r] & ALL_BYTES) ? (1u << NPERMS) - 1
                                            : (from[r] ^ to[r]);
    for (int i = 0; i < NPERMS;) {
      int j = i + 1;
      bool lock = to[r] & (1u << i);
      if (!(change & (1u << i))) {
        i++;
        continue;
      }
      while (j < NPERMS && (change & (1u << j))
             && !!(to[r] & (1u << j)) == lock)
        j++;
      if (set_bytes (fd, base[r] + i, j - i, lock) < 0)
        return -1;
      i = j;
    }
  }
  return 0;
}

/* Who holds a lock on byte off of the file (dev, ino): the first process
 * whose /proc/PID/fdinfo lists one, as "NAME (pid PID)"; NULL if /proc
 * does not tell (another user's process, no /proc). */
static char *
lock_holder (dev_t dev, ino_t ino, int off)
{
  DIR *proc = opendir ("/proc");
  struct dirent *de;
  char want[64], *found = NULL;
  pid_t self = getpid ();

  if (proc == NULL)
    return NULL;
  snprintf (want, sizeof want, "%02x:%02x:%ju ", major (dev), minor (dev),
            (uintmax_t) ino);
  while (found == NULL && (de = readdir (proc)) != NULL) {
    char path[64], line[256];
    DIR *fds;
    struct dirent *fe;
    long pid = strtol (de->d_name, NULL, 10);

    if (pid <= 0 || pid == self)
      continue;
    snprintf (path, sizeof path, "/proc/%ld/fdinfo", pid);
    fds = opendir (path);
    if (fds == NULL)
      continue;
    while (found == NULL && (fe = readdir (fds)) != NULL) {
      char fpath[600];
      FILE *f;

      if (fe->d_name[0] == '.')
        continue;
      snprintf (fpath, sizeof fpath, "%s/%s", path, fe->d_name);
      f = fopen (fpath, "re");
      if (f == NULL)
        continue;
      while (fgets (line, sizeof line, f)) {
        char *p = strstr (line, want);
        long long a, b;
        if (strncmp (line, "lock:", 5) != 0 || p == NULL)
          continue;
        if (sscanf (p + strlen (want), "%lld %lld", &a, &b) == 2
            && a <= off && off <= b) {
          char comm[64] = "?";
          FILE *c;
          snprintf (fpath, sizeof fpath, "/proc/%ld/comm", pid);
          if ((c = fopen (fpath, "re")) != NULL) {
            if (fgets (comm, sizeof comm, c))
              comm[strcspn (comm, "\n")] = '\0';
            fclose (c);
          }
          if (asprintf (&found, "%s (pid %ld)", comm, pid) < 0)
            found = NULL;
          break;
        }
      }
      fclose (f);
    }
    closedir (fds);
  }
  closedir (proc);
  return found;
}

static void
busy_error (int fd, const char *name, int off, bool shared)
{
  struct stat st;
  char *who = NULL;

  if (fstat (fd, &st) == 0)
    who = lock_holder (st.st_dev, st.st_ino, off);
  /* set_error would name busy_error: name the API the caller used */
  qk_internal_set_error (EBUSY, "qk_source_lock",
                         "%s: Failed to get %s\"%s\" lock: the image is in "
                         "use by %s", name, shared ? "shared " : "",
                         perm_names[off % 100],
                         who ? who : "another process (a running QEMU or "
                         "qemu-img?)");
  free (who);
}

/* Test byte base + p for each permission p in bits; 0: none taken. */
static int
check_bytes (int fd, const char *name, unsigned bits, int base)
{
  for (int i = 0; i < NPERMS; i++)
    if (bits & (1u << i)) {
      int r = bytes_taken (fd, base + i, 1);
      if (r < 0) {
        set_error (errno, "%s: test lock byte %d", name, base + i);
        return -1;
      }
      if (r) {
        busy_error (fd, name, base + i, base == PERM_BASE);
        return -1;
      }
    }
  return 0;
}

/* What we want must not be unshared by anyone, what we do not share must
 * not be held by anyone. 0: no conflict; -1 with the error set. One test
 * first over the span of all the bytes that matter (from the lowest to
 * the highest): when nobody holds a lock in it, as for nearly every
 * open, that is the answer; else each byte is tested on its own, as
 * QEMU does, to name the permission (the span also holds bytes nobody
 * needs free, such as another reader's consistent read). */
static int
check (int fd, const char *name, unsigned perm, unsigned unshared)
{
  int lo = -1, hi = -1;

  for (int i = 0; i < NPERMS; i++)
    if (unshared & (1u << i)) {
      lo = lo < 0 ? PERM_BASE + i : lo;
      hi = PERM_BASE + i;
    }
  for (int i = 0; i < NPERMS; i++)
    if (perm & (1u << i)) {
      lo = lo < 0 ? SHARED_BASE + i : lo;
      hi = SHARED_BASE + i;
    }
  if (lo >= 0) {
    int r = bytes_taken (fd, lo, hi - lo + 1);
    if (r < 0) {
      set_error (errno, "%s: test lock bytes %d-%d", name, lo, hi);
      return -1;
    }
    if (r == 0)
      return 0;
  }
  if (check_bytes (fd, name, perm, SHARED_BASE) < 0
      || check_bytes (fd, name, unshared, PERM_BASE) < 0)
    return -1;
  return 0;
}

int
qk_fd_lock (int fd, const char *name, unsigned old_mode, unsigned mode,
            bool test)
{
  unsigned perm, unshared, old_perm, old_unshared;

  mode_perms (mode, &perm, &unshared);
  if (test)
    return check (fd, name, perm, unshared);
  mode_perms (old_mode, &old_perm, &old_unshared);
  /* as QEMU: hold the union while checking, then drop what is left */
  if (apply (fd, old_perm, old_unshared, perm | old_perm,
             unshared | old_unshared) < 0) {
    int e = errno;
    apply (fd, ALL_BYTES, ALL_BYTES, old_perm, old_unshared);
    if (e == EAGAIN || e == EACCES)
      busy_error (fd, name, PERM_BASE, false);
    else
      set_error (e, "%s: lock", name);
    return -1;
  }
  if (check (fd, name, perm, unshared) < 0) {
    apply (fd, ALL_BYTES, ALL_BYTES, old_perm, old_unshared);
    return -1;
  }
  if (apply (fd, perm | old_perm, unshared | old_unshared, perm,
             unshared) < 0) {
    int e = errno;
    apply (fd, ALL_BYTES, ALL_BYTES, old_perm, old_unshared);
    set_error (e, "%s: unlock", name);
    return -1;
  }
  return 0;
}

#else /* !F_OFD_SETLK */

int
qk_fd_lock (int fd, const char *name, unsigned old_mode, unsigned mode,
            bool test)
{
  (void) fd; (void) old_mode; (void) test;
  if (mode == QK_LOCK_NONE)
    return 0;
  set_error (ENOTSUP, "%s: no OFD locks on this system, cannot honour "
             "QEMU's image locking", name);
  return -1;
}

#endif
