#!/bin/bash
# contrib/ansible: the qcowkit_audit role over an inventory of four hosts
# on this machine (ansible_connection=local), each with its own generated
# root: a clean one (a --sysroot), one with damaged images (leaks; a
# corruption), one with broken snapshot metadata, one with an image held by
# a running qemu-io. The play fails exactly for the hosts with problems,
# for none with qcowkit_audit_report_only; the gathered report names
# exactly the planted problems, their counters are qemu-img check's on the
# same images; the table is sorted by severity; nothing in the roots is
# written; the tarball install is skipped when the version matches.
srcdir=${srcdir:-.}
. "$srcdir/tests/tap.sh"
. "$srcdir/tests/functions.sh"
require qemu-img qemu-io jq qkpoke ansible-playbook
. "$srcdir/tests/check/functions.sh"
top=$(cd "$srcdir" && pwd)
scratch
cd "$T" || exit 1
bin=$(command -v qcowkit)

# ansible: everything in the scratch directory, nothing in ~/.ansible
export ANSIBLE_LOCAL_TEMP=$T/ans-tmp ANSIBLE_REMOTE_TEMP=$T/ans-tmp \
  ANSIBLE_HOME=$T/ans-home ANSIBLE_HOST_KEY_CHECKING=False ANSIBLE_NOCOLOR=1 \
  ANSIBLE_RETRY_FILES_ENABLED=False ANSIBLE_CONFIG=$T/ansible.cfg \
  ANSIBLE_PYTHON_INTERPRETER=auto_silent ANSIBLE_FORKS=4 ANSIBLE_INVENTORY_UNPARSED_WARNING=False
: > "$T/ansible.cfg"

fdisk () {  # fdisk TARGET FILE
  echo "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='$2'/><target dev='$1' bus='virtio'/></disk>"
}
domain () {  # domain DIR NAME DISK-XML...
  local d=$1 n=$2; shift 2
  { echo "<domain type='qemu'><name>$n</name><memory unit='MiB'>64</memory>"
    echo "<os><type arch='x86_64' machine='pc'>hvm</type></os><devices>"
    printf '%s\n' "$@"
    echo "</devices></domain>"; } > "$d/$n.xml"
}
set -e
new () { IMG=$1; qemu-img create -q -f qcow2 "$IMG" 16M; wr 0 256k 1; }
# h-clean: a sysroot, the host's disk mounted elsewhere
S=$T/h-clean
mkdir -p "$S/etc/libvirt/qemu" "$S/var/lib/libvirt/images"
new "$S/var/lib/libvirt/images/a.qcow2"
new "$S/var/lib/libvirt/images/b.qcow2"
domain "$S/etc/libvirt/qemu" vm-a "$(fdisk vda /var/lib/libvirt/images/a.qcow2)" \
  "$(fdisk vdb /var/lib/libvirt/images/b.qcow2)"
# the others: embedded libvirt roots, the images beside them
for h in h-damaged h-meta h-busy; do mkdir -p "$T/$h/etc/qemu" "$T/$h/run/qemu" "$T/$h/img"; done
D=$T/h-damaged
new "$D/img/leak.qcow2"
IMG=$D/img/leak.qcow2 add_cluster > /dev/null
IMG=$D/img/leak.qcow2 add_cluster > /dev/null
IMG=$D/img/leak.qcow2 add_cluster > /dev/null
new "$D/img/corrupt.qcow2"
IMG=$D/img/corrupt.qcow2 set_refcount "$(IMG=$D/img/corrupt.qcow2 data_off 0 0)" 0
new "$D/img/fine.qcow2"
domain "$D/etc/qemu" vm-leak "$(fdisk vda "$D/img/leak.qcow2")"
domain "$D/etc/qemu" vm-corrupt "$(fdisk vda "$D/img/corrupt.qcow2")" "$(fdisk vdb "$D/img/fine.qcow2")"
M=$T/h-meta
new "$M/img/meta.qcow2"
qemu-img snapshot -c s2 "$M/img/meta.qcow2"
domain "$M/etc/qemu" vm-meta "$(fdisk vda "$M/img/meta.qcow2")"
mkdir -p "$M/lib/qemu/snapshot/vm-meta"
cat > "$M/lib/qemu/snapshot/vm-meta/s2.xml" <<XML
<domainsnapshot><name>s2</name><state>shutoff</state><parent><name>gone</name></parent><creationTime>1700000000</creationTime><memory snapshot='no'/><disks><disk name='vda' snapshot='internal'/></disks><active>1</active><domain type='qemu'><name>vm-meta</name><devices>$(fdisk vda "$M/img/meta.qcow2")</devices></domain></domainsnapshot>
XML
B=$T/h-busy
new "$B/img/busy.qcow2"
new "$B/img/idle.qcow2"
domain "$B/etc/qemu" vm-busy "$(fdisk vda "$B/img/busy.qcow2")"
domain "$B/etc/qemu" vm-idle "$(fdisk vda "$B/img/idle.qcow2")"
echo "<domstatus state='running' reason='booted' pid='$$'><domain type='qemu' id='1'><name>vm-busy</name><devices>$(fdisk vda "$B/img/busy.qcow2")</devices></domain></domstatus>" \
  > "$B/run/qemu/vm-busy.xml"

cat > inventory <<INV
[hypervisors]
h-clean qcowkit_audit_sysroot=$S
h-damaged qcowkit_audit_libvirt_root=$D
h-meta qcowkit_audit_libvirt_root=$M
h-busy qcowkit_audit_libvirt_root=$B

[hypervisors:vars]
ansible_connection=local
qcowkit_audit_binary=$bin
INV
set +e

sums () { find "$T"/h-* -type f -print0 | sort -z | xargs -0 sha256sum; }
sums > sums.before
start_holder "$B/img/busy.qcow2" || fail "qemu-io holds busy.qcow2"

play () {  # play WANT LOG ARGS...: ansible-playbook of contrib/ansible/audit.yml
  local want=$1 log=$2 rc; shift 2
  ansible-playbook -i "${INV:-inventory}" "$top/contrib/ansible/audit.yml" "$@" > "$log" 2>&1
  rc=$?
  [ "$rc" = "$want" ] || tail -40 "$log" | sed 's/^/# /'
  return $rc
}
# recap LOG: "host:failed" per host, from the play recap
recap () { sed -n 's/^\(h-[a-z]*\) *: .* failed=\([0-9]*\) .*/\1:\2/p' "$1" | sort | tr '\n' ' '; }

play 2 p1.log -e qcowkit_audit_report_dir="$T/r1"
is "$?" 2 "the play fails (ansible-playbook exit 2: failed hosts)"
is "$(recap p1.log)" "h-busy:1 h-clean:0 h-damaged:1 h-meta:1 " \
  "it fails exactly the hosts with problems"
j=$T/r1/report.json
is "$(jq -r '.hosts[] | "\(.host)=\(.exit):\(.verdict):\(.domains):\(.images)"' "$j" | tr '\n' ' ')" \
  "h-busy=1:in-use:2:2 h-clean=0:clean:1:2 h-damaged=2:corrupt:2:3 h-meta=2:corrupt:1:1 " \
  "report.json: every host, its exit status, worst verdict, domains, images"
is "$(jq -r '.records[] | select(.type == "domain") | "\(.host):\(.domain)=\(.verdict)"' "$j" | tr '\n' ' ')" \
  "h-busy:vm-busy=in-use h-busy:vm-idle=clean h-clean:vm-a=clean h-damaged:vm-corrupt=corrupt h-damaged:vm-leak=leaks h-meta:vm-meta=corrupt " \
  "report.json: every domain's record, with its host and the planted verdict"
is "$(jq -r '.records[] | select(.type == "image" and .verdict != "clean") | "\(.host):\(.filename | split("/") | last)=\(.verdict):\(.corruptions):\(.leaks)"' "$j" | tr '\n' ' ')" \
  "h-busy:busy.qcow2=in-use:0:0 h-damaged:corrupt.qcow2=corrupt:2:0 h-damaged:leak.qcow2=leaks:0:3 " \
  "report.json: exactly the planted image problems"
is "$(jq -r '.records[] | select(.type == "domain" and .metadata.errors > 0) | "\(.host):\(.domain):\([.metadata.problems[] | select(.class == "corruption") | .name] | join(","))"' "$j")" \
  "h-meta:vm-meta:MISSING_PARENT" "report.json: the broken snapshot metadata, on its host only"
# the oracle: qemu-img check of every image not held, against its record
bad=
fields='."check-errors", (.corruptions // 0), (.leaks // 0)'
for f in "$S/var/lib/libvirt/images/a.qcow2" "$S/var/lib/libvirt/images/b.qcow2" \
         "$D"/img/*.qcow2 "$M/img/meta.qcow2" "$B/img/idle.qcow2"; do
  q=$(qemu-img check --output=json "$f" 2> /dev/null | jq -c "[$fields]")
  o=$(jq -c --arg f "$f" ".records[] | select(.filename == \$f) | [$fields]" "$j")
  [ -n "$q" ] && [ "$q" = "$o" ] || bad="$bad ${f#$T/}:qemu-img=$q,report=$o"
done
is "$bad" "" "check-errors, corruptions and leaks are qemu-img check's, image by image"

# the table: the worst first, then the hosts
t=$T/r1/report.txt
rows=$(sed -n '/^VERDICT *HOST *RECORD/,/^$/p' "$t" | sed '1d;/^$/d')
is "$(printf '%s\n' "$rows" | awk '{print $1 ":" $2 ":" $3 ":" $4}' | tr '\n' ' ')" \
  "corrupt:h-damaged:image:vm-corrupt corrupt:h-damaged:domain:vm-corrupt corrupt:h-meta:domain:vm-meta in-use:h-busy:image:vm-busy in-use:h-busy:domain:vm-busy leaks:h-damaged:image:vm-leak leaks:h-damaged:domain:vm-leak " \
  "report.txt: every record that is not clean, the worst first"
is "$(sed -n '/^VERDICT *HOST *EXIT/,$p' "$t" | sed 1d | awk '{print $1 ":" $2}' | tr '\n' ' ')" \
  "corrupt:h-damaged corrupt:h-meta in-use:h-busy clean:h-clean " "report.txt: the hosts, the worst first"
ok "report.txt: the problems named" grep -q 'vm-meta .*metadata corrupt: .*MISSING_PARENT' "$t"

# report only: the same report, no host fails; one more host, where
# qcowkit is missing, is reported as failed
sed "s|^h-busy .*|&\nh-nobin qcowkit_audit_libvirt_root=$B qcowkit_audit_binary=$T/nowhere/qcowkit|" inventory > inventory2
INV=inventory2 play 0 p2.log -e qcowkit_audit_report_dir="$T/r2" -e qcowkit_audit_report_only=true
is "$?" 0 "qcowkit_audit_report_only=true: the play succeeds"
ok "report only: the same records" test -s "$T/r2/report.json" -a "$(jq -c .records "$j")" = "$(jq -c .records "$T/r2/report.json")"
is "$(jq -r '.hosts[] | select(.host == "h-nobin") | "\(.verdict) \(.error | test("No such file"))"' "$T/r2/report.json")" \
  "failed true" "a host where qcowkit is missing: failed, with the reason"
is "$(sed -n '/^VERDICT *HOST *RECORD/{n;p}' "$T/r2/report.txt" | awk '{print $1 ":" $2 ":" $3}')" \
  "failed:h-nobin:host" "report.txt: the failed host first"
stop_holder

# the tarball install, in --check: a host whose installed qcowkit has the
# tarball's version copies and builds nothing; another version would be
# rebuilt (the build directory shows as a change; copying and building
# are skipped in --check)
mkdir -p "$T/pfx/bin"
printf '#!/bin/sh\nexec %s "$@"\n' "$bin" > "$T/pfx/bin/qcowkit"
chmod +x "$T/pfx/bin/qcowkit"
ver=$("$bin" --version | cut -d' ' -f2)
: > "qcowkit-$ver.tar.gz"
cat > inv2 <<INV
h-clean ansible_connection=local qcowkit_audit_sysroot=$S qcowkit_audit_prefix=$T/pfx qcowkit_audit_build_dir=$T/build
INV
INV=inv2 play 0 p3.log --check -e qcowkit_audit_hosts=all -e qcowkit_audit_tarball="$T/qcowkit-$ver.tar.gz" \
  -e qcowkit_audit_report_dir="$T/r3"
is "$?" 0 "tarball, same version installed: the play succeeds in --check"
# tasks TASK-NAME-PREFIX... < LOG: the status of each (changed, ok, skipping)
tasks () {
  local p a=()
  for p in "$@"; do a+=(-e "^TASK \\[qcowkit_audit : $p"); done
  grep -A1 "${a[@]}" | grep -v -e ^TASK -e ^-- | cut -d: -f1 | tr '\n' ' '
}
is "$(tasks 'Build directory' 'Copy and unpack' configure < p3.log)" "skipping skipping skipping " \
  "tarball, same version: nothing copied or built (the block skipped)"
ok "tarball, same version: the audit ran with PREFIX/bin/qcowkit" \
  test ! -e "$T/build" -a "$(jq -r '.hosts[0].verdict' "$T/r3/report.json")" = clean
mkdir qcowkit-9.9.9 && printf '#!/bin/sh\nexit 1\n' > qcowkit-9.9.9/configure
tar czf qcowkit-9.9.9.tar.gz qcowkit-9.9.9
INV=inv2 play 0 p4.log --check -e qcowkit_audit_hosts=all -e qcowkit_audit_tarball="$T/qcowkit-9.9.9.tar.gz" \
  -e qcowkit_audit_report_dir="$T/r4"
is "$(tasks 'Build directory' 'Copy and unpack' configure < p4.log)" "changed skipping skipping " "tarball, another version: it would be copied and built (skipped in --check)"
sums > sums.after
ok "read-only: every file in the hosts' roots unchanged" cmp sums.before sums.after

done_testing
