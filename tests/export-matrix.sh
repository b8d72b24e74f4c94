#!/bin/bash
# Differential test: `qcowkit export` against `qemu-img convert -O raw` over
# the image matrix (tests/functions.sh: build_matrix): the raw files must be
# byte-identical (cmp).
#
# Internal snapshots (--snapshot NAME) are compared with two oracles:
#  - `qemu-img snapshot -a NAME` on a copy, then `qemu-img convert -O raw`:
#    the guest's view after reverting; ours must be identical, size included.
#  - `qemu-img convert -l snapshot.name=NAME -O raw` (snapshot.id= for IDs):
#    QEMU loads the snapshot's L1 table but keeps the *current* virtual
#    size (bdrv_snapshot_load_tmp does not resize). qcowkit exports the
#    snapshot at its own size (the disk_size in its table entry), as
#    `snapshot -a` does. So where the sizes differ, the common prefix must
#    be identical, and whatever qemu-img writes past the snapshot's size
#    must be zeros (a grown disk); where the snapshot is bigger than the
#    current disk (taken before a shrink), ours holds more.
# The snapshots themselves: `qcowkit snapshot list` prints exactly what
# `qemu-img snapshot -l` prints, and the disk size it gives each snapshot
# is the size qemu-img's revert (snapshot -a) gives the disk.
srcdir=${srcdir:-.}
. "$srcdir/tests/tap.sh"
. "$srcdir/tests/functions.sh"
require qemu-img qemu-io jq
scratch

# (not in a || list: that would turn off the set -e inside build_matrix)
build_matrix "$T/m"
[ $? -eq 0 ] || { fail "build the image matrix"; done_testing; exit 1; }
cd "$T/m" || exit 1

# cmp_files DESC A B: identical files, with the first difference on failure
cmp_files () {
  if cmp -s "$2" "$3"; then
    pass "$1"
  else
    fail "$1" "$(cmp "$2" "$3" 2>&1 | head -1)" \
      "sizes: $(stat -c %s "$2") $(stat -c %s "$3")"
  fi
}

while IFS=$'\t' read -r -a f; do
  i=${f[0]}
  rm -f "$T/q.raw" "$T/o.raw"
  qemu-img convert -O raw "$i" "$T/q.raw" 2> "$T/q.err" ||
    { fail "$i: qemu-img convert failed" "$(cat "$T/q.err")"; continue; }
  qcowkit export "$i" "$T/o.raw" 2> "$T/o.err"
  is "$?" 0 "$i: export exits 0"
  [ -s "$T/o.err" ] && diag "stderr: $(cat "$T/o.err")"
  cmp_files "$i: export equals qemu-img convert -O raw" "$T/q.raw" "$T/o.raw"

  if [ ${#f[@]} -gt 1 ]; then
    qemu-img snapshot -l "$i" > "$T/q.list" 2>&1
    qcowkit snapshot list "$i" > "$T/o.list" 2>&1
    if cmp -s "$T/q.list" "$T/o.list"; then
      pass "$i: snapshot list is qemu-img snapshot -l's"
    else
      fail "$i: snapshot list is qemu-img snapshot -l's" \
        "$(diff "$T/q.list" "$T/o.list" | head -8 | tr '\n' '|')"
    fi
  fi
  for s in "${f[@]:1}"; do
    names=$(qemu-img info --output=json "$i" | jq -r '.snapshots[].name')
    if printf '%s\n' "$names" | grep -qxF -- "$s"; then
      opt="snapshot.name=$s"
    else
      opt="snapshot.id=$s"
    fi
    rm -f "$T/q.raw" "$T/o.raw" "$T/a.raw" "$T/copy.qcow2"
    qcowkit export --snapshot "$s" "$i" "$T/o.raw" 2> "$T/o.err"
    is "$?" 0 "$i: export --snapshot '$s' exits 0"

    # oracle 1: revert a copy, convert it
    cp "$i" "$T/copy.qcow2"
    qemu-img snapshot -a "$s" "$T/copy.qcow2" &&
      qemu-img convert -O raw "$T/copy.qcow2" "$T/a.raw" ||
      { fail "$i: qemu-img snapshot -a '$s' + convert failed"; continue; }
    cmp_files "$i: export --snapshot '$s' equals snapshot -a + convert" \
      "$T/a.raw" "$T/o.raw"

    # oracle 2: convert -l, up to the sizes' difference
    qemu-img convert -l "$opt" -O raw "$i" "$T/q.raw" 2> "$T/q.err" ||
      { fail "$i: qemu-img convert -l $opt failed" "$(cat "$T/q.err")"; continue; }
    qs=$(stat -c %s "$T/q.raw")
    os=$(stat -c %s "$T/o.raw")
    # the snapshot's disk size: what qemu-img's revert made of the disk
    as=$(stat -c %s "$T/a.raw")
    is "$os" "$as" "$i: snapshot '$s' exported at its own disk size (snapshot -a's)"
    is "$(qcowkit snapshot list --output=json "$i" |
          jq --arg s "$s" '[.[] | select(.id == $s or .name == $s)][0]."disk-size"')" \
      "$as" "$i: snapshot list gives '$s' the disk size of qemu-img's revert"
    if [ "$qs" = "$os" ]; then
      cmp_files "$i: export --snapshot '$s' equals convert -l $opt" \
        "$T/q.raw" "$T/o.raw"
    else
      n=$((qs < os ? qs : os))
      if cmp -s -n "$n" "$T/q.raw" "$T/o.raw"; then
        pass "$i: export --snapshot '$s' and convert -l agree on $n bytes"
      else
        fail "$i: export --snapshot '$s' and convert -l agree on $n bytes" \
          "$(cmp -n "$n" "$T/q.raw" "$T/o.raw" 2>&1)"
      fi
      if [ "$qs" -gt "$os" ]; then
        ok "$i: convert -l '$s' past the snapshot's size is zeros" \
          cmp -s -i "$os:0" -n $((qs - os)) "$T/q.raw" /dev/zero
      fi
    fi
  done
done < MANIFEST

# A raw image read directly, its size not a multiple of 512: qemu-img
# rounds the disk up to whole sectors
i=chain2/base.raw
rm -f "$T/q.raw" "$T/o.raw"
qemu-img convert -O raw "$i" "$T/q.raw"
qcowkit export "$i" "$T/o.raw"
cmp_files "$i: export equals qemu-img convert -O raw" "$T/q.raw" "$T/o.raw"

# The output is replaced, not merged: export over a bigger file full of
# non-zero bytes
i=cs64k.qcow2
qemu-img convert -O raw "$i" "$T/q.raw"
head -c 20M /dev/zero | tr '\0' '\377' > "$T/o.raw"
qcowkit export "$i" "$T/o.raw"
cmp_files "$i: export over an existing bigger file" "$T/q.raw" "$T/o.raw"

# A pipe is not seekable: the export is written as a stream
for i in cs64k.qcow2 chain/sub/top.qcow2; do
  qemu-img convert -O raw "$i" "$T/q.raw"
  qcowkit export "$i" /dev/stdout 2> "$T/o.err" | cat > "$T/o.raw"
  is "${PIPESTATUS[0]}" 0 "$i: export to a pipe exits 0"
  [ -s "$T/o.err" ] && diag "stderr: $(cat "$T/o.err")"
  cmp_files "$i: export to a pipe equals qemu-img convert" "$T/q.raw" "$T/o.raw"
done

# The flush: one fsync of the output by default, none with --no-flush (the
# bytes are the same); a new output is sized with one ftruncate, never
# emptied first (ext4's replace-via-truncate would force the data out)
i=cs64k.qcow2
qemu-img convert -O raw "$i" "$T/q.raw"
if have strace "export's fsync and ftruncate calls"; then
  for flush in "" --no-flush; do
    rm -f "$T/o.raw"
    traced_env strace -f -qq --seccomp-bpf -e trace=fsync,fdatasync,ftruncate -o "$T/st" \
      qcowkit export $flush "$i" "$T/o.raw"
    cmp_files "$i: export ${flush:-(flushed)} equals qemu-img convert" "$T/q.raw" "$T/o.raw"
    is "$(grep -cE '^[0-9]+ +f(data)?sync\(' "$T/st")" "$([ -z "$flush" ] && echo 1 || echo 0)" \
      "$i: export ${flush:-without --no-flush}: $([ -z "$flush" ] && echo one fsync || echo no fsync)"
    is "$(grep -E '^[0-9]+ +ftruncate\(' "$T/st" | sed -E 's/.*, ([0-9]+)\).*/\1/' | tr '\n' ' ')" \
      "$(stat -c %s "$T/q.raw") " "$i: a new output is sized once, not emptied first"
  done
fi

# Unknown snapshot: exit 1 and a message
qcowkit export --snapshot no-such-snapshot snap.qcow2 "$T/o.raw" 2> "$T/o.err"
is "$?" 1 "export --snapshot of an unknown snapshot exits 1"
ok "... and says so" grep -q "no-such-snapshot" "$T/o.err"

done_testing
