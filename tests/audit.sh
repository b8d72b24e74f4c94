#!/bin/bash
# qcowkit audit over a generated libvirt root with one domain per case:
# clean; leaked clusters; a corrupt image; broken snapshot metadata; a
# network disk; a missing image; an image held by a running qemu-io; a
# sparse image with a huge L1 over a small --memory-limit. Each image
# record's counters are qemu-img check's on the same image (the oracle);
# the records name exactly the planted problems; the exit status is the
# worst verdict; --jobs 1 and 2 give the same records; the prometheus file
# is complete; nothing is written (the images' sha256 are unchanged).
srcdir=${srcdir:-.}
. "$srcdir/tests/tap.sh"
. "$srcdir/tests/functions.sh"
require qemu-img qemu-io jq qkpoke
. "$srcdir/tests/check/functions.sh"
scratch
cd "$T" || exit 1

R=$T/lr IMG_D=$T/img
mkdir -p "$R/etc/qemu" "$R/lib/qemu/snapshot" "$R/run/qemu" "$IMG_D"
# domain NAME DISK-XML...: a definition in the embedded root
domain () {
  local n=$1; shift
  { echo "<domain type='qemu'><name>$n</name><uuid>$(printf '%08d' "${#n}")-0000-0000-0000-$(printf '%012d' "$RANDOM")</uuid><memory unit='MiB'>64</memory>"
    echo "<os><type arch='x86_64' machine='pc'>hvm</type></os><devices>"
    printf '%s\n' "$@"
    echo "</devices></domain>"; } > "$R/etc/qemu/$n.xml"
}
fdisk () {  # fdisk TARGET FILE [FORMAT]
  echo "<disk type='file' device='disk'><driver name='qemu' type='${3:-qcow2}'/><source file='$2'/><target dev='$1' bus='virtio'/></disk>"
}
set -e
new () { IMG=$IMG_D/$1; qemu-img create -q -f qcow2 "$IMG" "${2:-16M}"; wr 0 256k 1; }

new clean.qcow2
qemu-img create -q -f qcow2 -b clean.qcow2 -F qcow2 "$IMG_D/clean-top.qcow2"
IMG=$IMG_D/clean-top.qcow2 wr 1M 64k 2
qemu-img create -q -f raw "$IMG_D/data.raw" 1M
domain vm-clean "$(fdisk vda "$IMG_D/clean-top.qcow2")" "$(fdisk vdb "$IMG_D/data.raw" raw)" \
  "<disk type='file' device='cdrom'><target dev='hdc'/><readonly/></disk>"

new leak.qcow2
IMG=$IMG_D/leak.qcow2 add_cluster > /dev/null
IMG=$IMG_D/leak.qcow2 add_cluster > /dev/null
domain vm-leak "$(fdisk vda "$IMG_D/leak.qcow2")"

new corrupt.qcow2
IMG=$IMG_D/corrupt.qcow2 set_refcount "$(IMG=$IMG_D/corrupt.qcow2 data_off 0 0)" 0
domain vm-corrupt "$(fdisk vda "$IMG_D/corrupt.qcow2")"

new meta.qcow2
qemu-img snapshot -c s2 "$IMG_D/meta.qcow2"
domain vm-meta "$(fdisk vda "$IMG_D/meta.qcow2")"
mkdir -p "$R/lib/qemu/snapshot/vm-meta"
cat > "$R/lib/qemu/snapshot/vm-meta/s2.xml" <<EOF
<domainsnapshot><name>s2</name><state>shutoff</state><parent><name>gone</name></parent><creationTime>1700000000</creationTime><memory snapshot='no'/><disks><disk name='vda' snapshot='internal'/></disks><active>1</active><domain type='qemu'><name>vm-meta</name><devices>$(fdisk vda "$IMG_D/meta.qcow2")</devices></domain></domainsnapshot>
EOF

domain vm-net "<disk type='network' device='disk'><driver name='qemu' type='raw'/><source protocol='nbd' name='x'><host name='127.0.0.1' port='1'/></source><target dev='vda'/></disk>"
domain vm-missing "$(fdisk vda "$IMG_D/missing.qcow2")"
new busy.qcow2
domain vm-busy "$(fdisk vda "$IMG_D/busy.qcow2")"
# a sparse 4 TiB image with 4 KiB clusters: a 16 MiB L1 table
qemu-img create -q -f qcow2 -o cluster_size=4096 "$IMG_D/huge.qcow2" 4T
domain vm-huge "$(fdisk vda "$IMG_D/huge.qcow2")"
# vm-busy runs (libvirt's status XML); vm-trans runs, not defined (a
# transient domain), on vm-clean's base image
status () {  # status NAME DISK-XML
  echo "<domstatus state='running' reason='booted' pid='$$'><domain type='qemu' id='1'><name>$1</name><devices>$2</devices></domain></domstatus>" > "$R/run/qemu/$1.xml"
}
status vm-busy "$(fdisk vda "$IMG_D/busy.qcow2")"
status vm-trans "$(fdisk vda "$IMG_D/clean.qcow2")"
set +e

sums () { (cd "$IMG_D" && sha256sum -- *) ; }
sums > sums.before
start_holder "$IMG_D/busy.qcow2" || fail "qemu-io holds busy.qcow2"

qcowkit audit --libvirt-root "$R" --output=jsonl --memory-limit 24M \
  --prometheus "$T/audit.prom" > a1.jsonl 2> a1.err
is "$?" 2 "exit status 2: the worst verdict is a corruption"
qcowkit audit --libvirt-root "$R" --output=jsonl --memory-limit 24M --jobs 2 \
  > a2.jsonl 2> /dev/null
is "$?" 2 "--jobs 2: the same exit status"
ok "--jobs 1 and --jobs 2 give the same records" cmp a1.jsonl a2.jsonl
is "$(jq -c 'type' a1.jsonl | sort -u)" '"object"' "every line is a JSON object"
is "$(jq -r 'select(.type == "domain") | "\(.domain)=\(.verdict)"' a1.jsonl | tr '\n' ' ')" \
  "vm-busy=in-use vm-clean=clean vm-corrupt=corrupt vm-huge=error vm-leak=leaks vm-meta=corrupt vm-missing=error vm-net=clean vm-trans=clean " \
  "one record per domain, with the planted verdicts"
is "$(jq -r 'select(.type == "image") | "\(.domain):\(.disk):\(.depth):\(.verdict)"' a1.jsonl | tr '\n' ' ')" \
  "vm-busy:vda:0:in-use vm-clean:vda:0:clean vm-clean:vda:1:clean vm-clean:vdb:0:clean vm-clean:hdc:0:not-checked vm-corrupt:vda:0:corrupt vm-huge:vda:0:error vm-leak:vda:0:leaks vm-meta:vda:0:clean vm-missing:vda:0:error vm-net:vda:0:not-checked " \
  "one record per image (the chain's too), with the planted verdicts"

is "$(jq -r 'select(.type == "domain") | select(.running) | "\(.domain):\(.persistent):\(.metadata.verdict)"' a1.jsonl | tr '\n' ' ')" \
  "vm-busy:true:clean vm-trans:false:not-checked " "running domains from the status XML; a transient one has no metadata"
is "$(jq -c 'select(.filename | tostring | endswith("/clean.qcow2")) | ."used-by"' a1.jsonl)" \
  '["vm-clean:vda","vm-trans:vda"]' "a base image shared by two disks: one record, both users"
# bounded memory: the same records under a 150 MB address space, 2 jobs
vlimited 150000 qcowkit audit --libvirt-root "$R" --output=jsonl --memory-limit 24M --jobs 2 \
  > a4.jsonl 2> /dev/null
ok "under ulimit -v 150 MB with --jobs 2: the same records" cmp a1.jsonl a4.jsonl

# the oracle: qemu-img check of each checked qcow2 image
fields='."check-errors", (.corruptions // 0), (.leaks // 0)'
bad=
for f in clean-top clean leak corrupt meta; do
  q=$(qemu-img check --output=json "$IMG_D/$f.qcow2" 2> /dev/null | jq -c "[$fields]")
  o=$(jq -c --arg f "$IMG_D/$f.qcow2" "select(.filename == \$f) | [$fields]" a1.jsonl)
  [ "$q" = "$o" ] || bad="$bad $f:qemu-img=$q,audit=$o"
done
is "$bad" "" "check-errors, corruptions and leaks are qemu-img check's, image by image"
is "$(jq -r 'select(.type == "image") | select(.leaks > 0 or .corruptions > 0) | "\(.domain):\(.corruptions):\(.leaks)"' a1.jsonl | tr '\n' ' ')" \
  "vm-corrupt:2:0 vm-leak:0:2 " "exactly the planted image problems"
is "$(jq -r 'select(.domain == "vm-meta" and .type == "domain") | [.metadata.problems[] | select(.class == "corruption") | .name] | join(",")' a1.jsonl)" \
  "MISSING_PARENT" "vm-meta: the broken snapshot metadata (a missing parent)"
is "$(jq -r 'select(.type == "domain") | select(.domain != "vm-meta") | .metadata.errors' a1.jsonl | sort -u)" \
  "0" "no metadata errors in the other domains"
is "$(jq -r 'select(.domain == "vm-busy" and .type == "image") | .reason' a1.jsonl | grep -c 'in use by a running QEMU.*"write" lock')" \
  1 "vm-busy: in use, the lock named, not read"
is "$(jq -r 'select(.domain == "vm-net" and .type == "image") | .reason' a1.jsonl)" \
  "network disk (nbd): not checked" "vm-net: not checked, with the reason"
is "$(jq -r 'select(.domain == "vm-missing" and .type == "image") | .reason' a1.jsonl)" \
  "No such file or directory" "vm-missing: the image is missing"
is "$(jq -r 'select(.domain == "vm-huge" and .type == "image") | .reason | test("^checking it needs about [0-9]+ MiB \\(its L1 table has 2097152 entries\\), over --memory-limit 24 MiB; not checked$")' a1.jsonl)" \
  true "vm-huge: over --memory-limit, a clear reason (the process goes on)"

# prometheus: every domain and disk, the severities, the time and duration
p=$T/audit.prom
is "$(grep -c '^qcowkit_audit_problems{' "$p")" $(( (11 + 9) * 4 )) \
  "prometheus: 4 severities per disk (11) and per domain's metadata (9)"
ok "prometheus: vm-corrupt's corruption" grep -qx 'qcowkit_audit_problems{domain="vm-corrupt",disk="vda",severity="corruption"} 2' "$p"
ok "prometheus: vm-leak's leaks" grep -qx 'qcowkit_audit_problems{domain="vm-leak",disk="vda",severity="leak"} 2' "$p"
ok "prometheus: vm-meta's metadata" grep -qx 'qcowkit_audit_problems{domain="vm-meta",disk="metadata",severity="corruption"} 1' "$p"
ok "prometheus: last run time, duration, exit status" \
  grep -qE '^qcowkit_audit_last_run_timestamp_seconds [0-9]{10}\.[0-9]+$' "$p" \
  -a -n "$(grep -E '^qcowkit_audit_duration_seconds [0-9.]+$' "$p")" \
  -a -n "$(grep -x 'qcowkit_audit_exit_status 2' "$p")"
ok "prometheus: no temporary file left" test "$(ls "$T" | grep -c 'audit.prom.')" = 0

# --force-share reads the busy image, marked stale
qcowkit audit --libvirt-root "$R" --output=jsonl -U --memory-limit 24M > a3.jsonl 2> /dev/null
is "$(jq -r 'select(.domain == "vm-busy" and .type == "image") | "\(.verdict) \(.stale)"' a3.jsonl)" \
  "clean true" "--force-share: read, clean, marked stale"
stop_holder

# human output: a table, the summary; the exit status without damage
qcowkit audit --libvirt-root "$R" > h.txt 2> h.err
is "$?" 2 "human output: the same exit status"
ok "human output: the summary of the domains' verdicts" \
  grep -q '^9 domains, 11 disks, 9 images: 5 clean, 1 with leaks, 0 in use, 1 with errors, 2 corrupt\.$' h.txt
rm "$R/etc/qemu/vm-corrupt.xml" "$R/etc/qemu/vm-meta.xml" "$R/etc/qemu/vm-missing.xml" "$R/etc/qemu/vm-huge.xml"
qcowkit audit --libvirt-root "$R" --output=json > j.json 2> /dev/null
is "$?" 3 "without the corrupt, missing and huge ones: exit 3 (leaks)"
is "$(jq -r '"\(.verdict) \(.exit) \([.records[] | select(.type == "domain")] | length)"' j.json)" \
  "leaks 3 5" "--output=json: one document, the worst verdict"
rm "$R/etc/qemu/vm-leak.xml"
qcowkit audit --libvirt-root "$R" -q > /dev/null 2>&1
is "$?" 0 "clean domains only: exit 0"

sums > sums.after
ok "read-only: every image's sha256 unchanged" cmp sums.before sums.after

# a sysroot: the system layout below it, image paths resolved inside it
S=$T/sys
mkdir -p "$S/etc/libvirt/qemu" "$S/var/lib/libvirt/images"
cp "$IMG_D/leak.qcow2" "$S/var/lib/libvirt/images/"
ln -s /var/lib/libvirt/images "$S/images"
echo "<domain><name>host-vm</name><devices>$(fdisk vda /images/leak.qcow2)</devices></domain>" \
  > "$S/etc/libvirt/qemu/host-vm.xml"
qcowkit audit --sysroot "$S" --output=jsonl > s.jsonl 2> /dev/null
is "$?" 3 "--sysroot: leaks, exit 3"
is "$(jq -r 'select(.type == "image") | "\(.filename) \(.leaks)"' s.jsonl)" \
  "$S/var/lib/libvirt/images/leak.qcow2 2" "--sysroot: the image found inside it"

done_testing
