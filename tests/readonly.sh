#!/bin/bash
# Read-only commands never modify anything: every read-only command (info,
# map, export, dump, snapshot list, check, repair -n; human and JSON) runs on every image of
# the matrix, and afterwards every file under the matrix directory (the
# image, its backing files, its external data file, the others) has the
# same sha256, mtime, ctime and size, and no file appeared or vanished.
# Under strace, no image file is even opened for writing. Also: with a
# QEMU process holding the image, reads work and warn.
srcdir=${srcdir:-.}
. "$srcdir/tests/tap.sh"
. "$srcdir/tests/functions.sh"
require qemu-img qemu-io jq strace
scratch

# (not in a || list: that would turn off the set -e inside build_matrix)
build_matrix "$T/m"
[ $? -eq 0 ] || { fail "build the image matrix"; done_testing; exit 1; }
cd "$T/m" || exit 1

# The state of every file here: names, mtimes, ctimes and sizes (any write
# changes mtime and ctime), with the sha256 of each file when "full".
tree_state () {
  find . \( -type f -o -type l \) -printf '%p %T@ %C@ %s\n' | LC_ALL=C sort
  [ "${1:-}" = full ] || return 0
  find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
}

# ro_commands IMG [SNAPSHOT...]: the read-only command lines, one a line,
# arguments separated by tabs
ro_commands () {
  local i=$1 s
  shift
  local t=$'\t'
  cat <<EOF
info${t}$i
info${t}--output=json${t}$i
info${t}--backing-chain${t}$i
info${t}--backing-chain${t}--output=json${t}$i
map${t}$i
map${t}--output=json${t}$i
map${t}--output=json${t}--start-offset${t}4097${t}--max-length${t}1M${t}$i
export${t}$i${t}$T/out.raw
snapshot${t}list${t}$i
snapshot${t}list${t}--output=json${t}$i
dump${t}$i${t}header
dump${t}--output=json${t}$i${t}header
dump${t}$i${t}extensions
dump${t}$i${t}l1
dump${t}--output=json${t}$i${t}l1
dump${t}$i${t}refcount-table
dump${t}--output=json${t}$i${t}refcount-table
dump${t}$i${t}refblock${t}0
dump${t}$i${t}snapshots
dump${t}--output=json${t}$i${t}snapshots
dump${t}$i${t}bitmaps
dump${t}--output=json${t}$i${t}bitmaps
check${t}--output=json${t}--deep${t}$i
repair${t}-n${t}$i
EOF
  # (an empty disk has no L2 table to show)
  if [ "$(qemu-img info --output=json "$i" | jq '."virtual-size"')" -gt 0 ]; then
    printf 'dump%s%s%sl2%s0\n' "$t" "$i" "$t" "$t"
  fi
  for s in "$@"; do
    printf 'export%s--snapshot%s%s%s%s%s%s\n' "$t" "$t" "$s" "$t" "$i" "$t" "$T/out.raw"
  done
  if [ $# -gt 0 ]; then
    printf 'dump%s%s%ssnapshot-l1%s0\n' "$t" "$i" "$t" "$t"
  fi
  if [ "$(qcowkit info --output=json "$i" | jq '."format-specific".data.bitmaps // [] | length')" -gt 0 ]; then
    printf 'dump%s%s%sbitmap-table%s0\n' "$t" "$i" "$t" "$t"
  fi
}

# Under strace: no image file may be opened for writing (the export's own
# output aside). One strace per image, not per command (a strace start
# costs more than the command it traces): under it a shell runs the
# image's commands one after the other. The shell opens nothing for
# writing itself: the files it writes to are opened before strace starts
# (stdout /dev/null; fd 3: each command's stderr, after a marker line;
# fd 4: each command's exit status), and a command gets only its stderr
# (fd 3 and 4 closed).
tracer=(strace -f -qq --seccomp-bpf -e trace=open,openat,openat2,creat -o "$T/st")
mark="@@readonly.sh $$ next command@@"
run_traced () {  # run_traced CMDS-FILE: the commands, a line each, tab-separated
  "${tracer[@]}" bash -c '
    while IFS=$'"'\\t'"' read -r -a c; do
      printf "\n%s\n" "$1" >&3
      qcowkit "${c[@]}" 2>&3 3>&- 4>&-
      echo $? >&4
    done < "$2"' run_traced "$mark" "$1" > /dev/null 3> "$T/err" 4> "$T/rcs"
}
# cmd_err K: the stderr of command K (from 0) of the last run_traced
cmd_err () {
  local all j
  all=$(cat "$T/err"; echo x); all=${all%x}
  all=${all#$'\n'"$mark"$'\n'}
  for (( j = 0; j < $1; j++ )); do all=${all#*$'\n'"$mark"$'\n'}; done
  printf '%s' "${all%%$'\n'"$mark"$'\n'*}"
}
# LeakSanitizer cannot run under ptrace (sanitizer builds)
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"

before=$(tree_state full)
while IFS=$'\t' read -r -a f; do
  i=${f[0]}
  pre=$(tree_state)
  pre_img=$(file_state "$i")
  bad=""
  ro_commands "$i" "${f[@]:1}" > "$T/cmds"
  run_traced "$T/cmds"
  mapfile -t rcs < "$T/rcs"
  k=0
  while IFS=$'\t' read -r -a c; do
    rc=${rcs[k]:-255}
    # check and repair -n exit with a verdict on the image
    case ${c[0]}:$rc in check:2|check:3|repair:4) rc=0 ;; esac
    [ $rc -eq 0 ] || bad="$bad${bad:+; }qcowkit ${c[*]} -> $rc: $(cmd_err $k | head -c 300)"
    k=$((k + 1))
  done < "$T/cmds"
  grep -v "$T/out.raw" "$T/st" |
    grep -E 'O_WRONLY|O_RDWR|O_CREAT|O_TRUNC|creat\(' |
    grep -vE '"/(dev|proc|sys)/' > "$T/opens"
  if [ -z "$bad" ]; then
    pass "$i: every read-only command exits 0"
  else
    fail "$i: every read-only command exits 0" "$bad"
  fi
  is "$(file_state "$i")" "$pre_img" "$i: sha256 and mtime unchanged"
  post=$(tree_state)
  if [ "$pre" = "$post" ]; then
    pass "$i: no file here changed (mtime, ctime, size, names)"
  else
    fail "$i: no file here changed (mtime, ctime, size, names)" \
      "$(diff <(echo "$pre") <(echo "$post") | head -10)"
  fi
  if [ ! -s "$T/opens" ]; then
    pass "$i: no file opened for writing (strace)"
  else
    fail "$i: no file opened for writing (strace)" "$(head -5 "$T/opens")"
  fi
done < MANIFEST
after=$(tree_state full)
if [ "$before" = "$after" ]; then
  pass "the whole matrix is unchanged (sha256, mtime, ctime, size, names)"
else
  fail "the whole matrix is unchanged (sha256, mtime, ctime, size, names)" \
    "$(diff <(echo "$before") <(echo "$after") | head)"
fi

# The dirty image stays dirty: QEMU repairs a dirty image on any
# read-write open; qcowkit must not (the refcounts are evidence).
is "$(qemu-img info --output=json dirty.qcow2 | jq '."dirty-flag"')" true \
  "dirty.qcow2 is still dirty"

# An image in use by QEMU: the commands still read it, and warn. A
# qemu-io holds it (and its lock) until its input closes (start_holder);
# the answer to its first command says it has the image open. Killed at
# exit.
ok "qemu-io holds cs4k.qcow2 (qemu-img sees the lock)" start_holder cs4k.qcow2
echo length >&"$holder_fd"
wait_for 60 eval '[ "$(wc -l < "$holder_out")" -gt 0 ]'   # a whole line
is "$(head -1 "$holder_out")" "qemu-io> 4 MiB" "qemu-io has the image open"
qemu-img info cs4k.qcow2 > /dev/null 2> "$T/err"
is "$?" 1 "QEMU's lock is held: qemu-img info refuses the image"
ok "... for the lock" grep -q 'Failed to get shared "write" lock' "$T/err"
pre=$(file_state cs4k.qcow2)
qcowkit info cs4k.qcow2 > /dev/null 2> "$T/err"
is "$?" 0 "image held by QEMU: info exits 0"
ok "... and warns that it is in use" grep -q 'in use by a running QEMU' "$T/err"
qcowkit export cs4k.qcow2 "$T/out.raw" 2> "$T/err"
is "$?" 0 "image held by QEMU: export exits 0"
ok "... and warns that it is in use" grep -q 'in use by a running QEMU' "$T/err"
is "$(file_state cs4k.qcow2)" "$pre" "image held by QEMU: unchanged by us"
# closing its input ends qemu-io (within 30 s, or it is killed)
stop_holder
is "$?" 0 "qemu-io exits when its input closes"

done_testing
