#!/bin/bash
# The repair catalog: every damage case of the check catalog
# (tests/check/*/script) repaired by qcowkit and by qemu-img check -r all,
# side by side, on copies of the same image. For each case:
#
#   - qcowkit check -r all exits with a check status (no crash), and that
#     status is the one a plain qcowkit check gives on the result (the exit
#     describes the image after the repair, as qemu-img's does);
#   - against the oracle: qemu-img check on qcowkit's result finds no more
#     corruptions and no more leaks than qemu-img check on qemu-img's own
#     result, where qemu-img can check both ("not comparable" otherwise,
#     counted and listed at the end, never a pass). Cases where we
#     deliberately do less are listed below with the reason, and what we do
#     there is asserted instead; known gaps (we do less and should not) are
#     listed too, and their comparison is a TAP TODO (an expected failure;
#     an unexpected pass fails the test, so that the entry goes);
#   - snapshots: qemu-img info lists at least as many snapshots with an id
#     or a name after our repair as after qemu-img's;
#   - guest data: qemu-img compare of the original and the result is equal,
#     unless the repair reported lost guest ranges; where qemu-img cannot
#     read the original, qemu-img convert of the result equals qcowkit
#     export of the original;
#   - the two-run rule: a second check -r all changes no byte;
#   - qcowkit repair -n changes no byte (sha256 and mtime);
#   - qcowkit repair -y makes the same bytes as check -r all, and qcowkit
#     undo then puts back the original bytes exactly (sha256).
#
# REPAIR_SHARD=K/N runs every Nth case from the Kth (tests/repair-cases-K.sh);
# REPAIR_CASES="a b" runs only those.
srcdir=${srcdir:-.}
. "$srcdir/tests/tap.sh"
require qemu-img qemu-io jq qkpoke
scratch

cases_dir=$(cd "$srcdir/tests/check" && pwd)
shard=${REPAIR_SHARD:-1/1}
shard_k=${shard%/*} shard_n=${shard#*/}

# Where qcowkit deliberately repairs less than qemu-img check -r all.
declare -A keeps_leaks=(
  [sn-l1-too-large]="a snapshot's L1 table could not be read, so its clusters are not freed as leaks (qemu-img frees them and the snapshot's data with them)"
  [l1-past-eof]="the active L1 table lies past the end of the file, so the clusters its L2 tables held are not freed as leaks (qemu-img frees them)"
  [l1-torn]="the active L1 table runs past the end of the file, so the clusters its L2 tables held are not freed as leaks (qemu-img frees them)"
  [sn-l1-unaligned]="a snapshot's L1 table could not be read, so its clusters are not freed as leaks (qemu-img frees them and the snapshot's data with them)"
  [subcluster-compressed-bitmap]="QEMU still reads a compressed cluster whose entry has subcluster bits set, so its data is in use and not freed as a leak (qemu-img frees it, and the next allocation can write over the guest data)"
)
declare -A unrepaired=(
  [l1-size-max]="the L1 table runs past the end of the file, so qcowkit reads no mapping from it and has nothing to repair; neither repair restores the L1 size (qemu-img's turns one of its thousands of corruptions, entries read from other clusters, into a leak)"
)
# Known gaps: qcowkit repairs less than qemu-img check -r all and should
# not. The comparison runs as for any case and is a TAP TODO: an expected
# failure while the gap is open, and an unexpected pass (which fails the
# test) once it is closed, so that the entry goes.
declare -A gaps=(
)
todo () {  # todo PASSED DESCRIPTION REASON: one TAP TODO line
  tap_n=$((tap_n + 1))
  if $1; then echo "ok $tap_n - $2 # TODO $3"; else echo "not ok $tap_n - $2 # TODO $3"; fi
}

# (one process each: sha256sum's " -" is cut by the shell)
stamp () { local h; h=$(sha256sum < "$1"); echo "${h%% *} $(stat -c %y "$1")"; }
sha () { local h; h=$(sha256sum < "$1"); echo "${h%% *}"; }
# counts FILE: "corruptions leaks" of a qemu-img check JSON report, or
# nothing when it gave none.
counts () {
  jq -r 'select(type == "object" and has("check-errors")) |
         "\(.corruptions // 0) \(.leaks // 0)"' "$1" 2>/dev/null
}

idx=0 ran=0 nc=0 nc_list=
for dir in "$cases_dir"/*/; do
  name=$(basename "$dir")
  [ -f "$dir/script" ] || continue
  idx=$((idx + 1))
  [ $(( (idx - 1) % shard_n + 1 )) -eq "$shard_k" ] || continue
  if [ -n "${REPAIR_CASES:-}" ] && ! [[ " $REPAIR_CASES " == *" $name "* ]]
  then
    continue
  fi
  ran=$((ran + 1))
  w=$T/$name
  mkdir -p "$w"
  if ! (cd "$w" && IMG=$w/orig.qcow2 bash -ec '. "$1"; . "$2"' script \
          "$cases_dir/functions.sh" "$dir/script") > "$w/script.log" 2>&1 \
     || [ ! -f "$w/orig.qcow2" ]; then
    fail "$name: the script builds the image" \
      "$(tail -n 5 "$w/script.log" | tr '\n' '|')"
    continue
  fi
  # the case's other files (backing files, data files) stay beside it
  # check -r flags: a case run with special check args is not repaired here
  # (the first "qemu-cmd:" line of expect, read by the shell)
  qcmd=
  if [ -f "$dir/expect" ]; then
    while IFS= read -r l || [ -n "$l" ]; do
      [[ $l =~ ^qemu-cmd:[[:space:]]*(.*)$ ]] && { qcmd=${BASH_REMATCH[1]}; break; }
    done < "$dir/expect"
  fi
  if [ -n "$qcmd" ]; then
    diag "$name: needs its own qemu-img command line ($qcmd): not repaired here"
    continue
  fi
  orig_sha=$(sha "$w/orig.qcow2")
  # the images keep the original's name in each of three directories, so
  # that relative backing and data file names still resolve
  # (the *.qcow2 and the other files, in one cp a directory)
  files=()
  for f in "$w"/*; do
    { [ "${f%.qcow2}" != "$f" ] || [ -f "$f" ]; } && files+=("$f")
  done
  mkdir -p "$w/k" "$w/q" "$w/y"
  for d in k q y; do
    cp -a "${files[@]}" "$w/$d/"
  done

  # ours, qemu-img's
  (cd "$w/k" && timeout 60 qcowkit check -r all --output=json orig.qcow2) \
    > "$w/k.json" 2> "$w/k.err"
  krc=$?
  (cd "$w/q" && timeout 60 qemu-img check -r all --output=json orig.qcow2) \
    > "$w/q.json" 2> "$w/q.err"
  qrc=$?
  (cd "$w/k" && timeout 60 qcowkit check --output=json orig.qcow2) \
    > "$w/kk.json" 2> "$w/kk.err"
  kkrc=$?
  case $krc in
    0|1|2|3|63)
      is "$kkrc" "$krc" "$name: check -r all exits $krc, the status of the repaired image" ;;
    *)
      fail "$name: check -r all exits with a check status" \
        "exit $krc: $(head -c 300 "$w/k.err")" ;;
  esac

  # against the oracle
  (cd "$w/k" && timeout 60 qemu-img check --output=json orig.qcow2) \
    > "$w/qk.json" 2> "$w/qk.err"
  (cd "$w/q" && timeout 60 qemu-img check --output=json orig.qcow2) \
    > "$w/qq.json" 2> "$w/qq.err"
  ck=$(counts "$w/qk.json") cq=$(counts "$w/qq.json")
  if [ -n "${unrepaired[$name]:-}" ]; then
    is "$(sha "$w/k/orig.qcow2")" "$orig_sha" \
      "$name: left as it was (${unrepaired[$name]})"
  elif [ -z "$cq" ]; then
    nc=$((nc + 1)) nc_list="$nc_list $name"
    diag "$name: not comparable: qemu-img check -r all exit $qrc," \
      "$(head -n 2 "$w/q.err" | tr '\n' ' ' | cut -c 1-200)"
  elif [ -z "$ck" ]; then
    fail "$name: qemu-img can check our repair as it can its own" \
      "$(head -n 3 "$w/qk.err" | tr '\n' ' ')"
  else
    read -r kc kl <<< "$ck"
    read -r qc ql <<< "$cq"
    if [ -n "${keeps_leaks[$name]:-}" ]; then
      if [ "$kc" -le "$qc" ] && [ "$kl" -gt "$ql" ]; then
        pass "$name: qemu-img finds $kc corruptions (its own repair: $qc), and the $kl kept leaks: ${keeps_leaks[$name]}"
      else
        fail "$name: keeps leaks: ${keeps_leaks[$name]}" \
          "ours: $kc corruptions $kl leaks; qemu-img's repair: $qc $ql"
      fi
    elif [ -n "${gaps[$name]:-}" ]; then
      if [ "$kc" -le "$qc" ] && [ "$kl" -le "$ql" ]; then t=true; else t=false; fi
      todo $t "$name: repaired at least as well as qemu-img check -r all (qemu-img check after ours: $kc corruptions $kl leaks; after its own: $qc $ql)" \
        "known gap: ${gaps[$name]}"
    elif [ "$kc" -le "$qc" ] && [ "$kl" -le "$ql" ]; then
      pass "$name: qemu-img check finds $kc corruptions and $kl leaks after our repair, $qc and $ql after its own"
    else
      fail "$name: repaired at least as well as qemu-img check -r all" \
        "qemu-img check after ours: $kc corruptions $kl leaks; after its own: $qc $ql"
    fi
  fi

  # snapshots: never fewer than qemu-img's repair keeps (counting those
  # with an id or a name: qemu-img turns entries that name nothing into
  # nameless snapshots, qcowkit drops them)
  named='[.snapshots // [] | .[] | select(.id != "" or .name != "")] | length'
  if sk=$(cd "$w/k" && qemu-img info --output=json orig.qcow2 2>/dev/null) &&
     sq=$(cd "$w/q" && qemu-img info --output=json orig.qcow2 2>/dev/null); then
    nk=$(jq "$named" <<< "$sk") nq=$(jq "$named" <<< "$sq")
    if [ "$nk" -ge "$nq" ]; then
      pass "$name: $nk named snapshots after our repair, $nq after qemu-img's"
    else
      fail "$name: keeps at least the named snapshots qemu-img's repair keeps" "ours $nk, qemu-img's $nq"
    fi
  fi

  # guest data
  if (cd "$w" && timeout 60 qemu-img compare -q orig.qcow2 k/orig.qcow2) \
       > "$w/cmp.out" 2>&1; then
    pass "$name: the guest data is unchanged (qemu-img compare)"
  elif [ $? -eq 1 ]; then
    if grep -q "is lost" "$w/k.err"; then
      pass "$name: the guest data changed only where the repair said it was lost"
    else
      fail "$name: the guest data changed without a lost range reported" \
        "$(head -c 300 "$w/cmp.out")"
    fi
  elif (cd "$w" && timeout 60 qcowkit export orig.qcow2 orig.raw) \
         > /dev/null 2>&1 &&
       (cd "$w/k" && timeout 60 qemu-img convert -O raw orig.qcow2 ../k.raw) \
         > /dev/null 2>&1; then
    # qemu-img cannot read the original: qcowkit's reading of it against
    # qemu-img's reading of the repaired image
    if cmp -s "$w/orig.raw" "$w/k.raw" || grep -q "is lost" "$w/k.err"; then
      pass "$name: qemu-img reads the repaired image as qcowkit reads the original"
    else
      fail "$name: qemu-img reads the repaired image as qcowkit reads the original"
    fi
    rm -f "$w/orig.raw" "$w/k.raw"
  else
    diag "$name: guest data not comparable: qemu-img compare:" \
      "$(head -n 1 "$w/cmp.out" | cut -c 1-200)"
  fi

  # the two-run rule
  s1=$(sha "$w/k/orig.qcow2")
  (cd "$w/k" && timeout 60 qcowkit check -r all orig.qcow2) >/dev/null 2>&1
  is "$(sha "$w/k/orig.qcow2")" "$s1" "$name: a second check -r all changes nothing"

  # repair -n writes nothing
  before=$(stamp "$w/orig.qcow2")
  (cd "$w" && timeout 60 qcowkit repair -n orig.qcow2) > "$w/n.out" 2>&1
  nrc=$?
  after=$(stamp "$w/orig.qcow2")
  if [ "$after" = "$before" ] && { [ $nrc -eq 0 ] || [ $nrc -eq 4 ] || [ $nrc -eq 8 ]; }; then
    pass "$name: repair -n changes nothing (exit $nrc)"
  else
    fail "$name: repair -n changes nothing" "exit $nrc; $(head -c 200 "$w/n.out")"
  fi

  # repair -y = check -r all, and undo puts the original back
  (cd "$w/y" && timeout 60 qcowkit repair -y --undo ../y.undo orig.qcow2) \
    > "$w/y.out" 2>&1
  yrc=$?
  is "$(sha "$w/y/orig.qcow2")" "$(sha "$w/k/orig.qcow2")" \
    "$name: repair -y (exit $yrc) writes what check -r all writes"
  if [ -f "$w/y.undo" ]; then
    (cd "$w/y" && qcowkit undo ../y.undo orig.qcow2) > "$w/u.out" 2>&1
    is "$(sha "$w/y/orig.qcow2")" "$orig_sha" \
      "$name: undo puts back the original bytes"
  elif [ "$(sha "$w/y/orig.qcow2")" != "$orig_sha" ]; then
    fail "$name: a repair that wrote left an undo journal"
  fi
done
diag "$ran cases; $nc not comparable with qemu-img (its check -r all gave no report):$nc_list"
[ "$ran" -gt 0 ] || fail "some case ran"
done_testing
