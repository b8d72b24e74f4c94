#!/bin/bash
# Every file of libvirt's own snapshot and checkpoint XML tests
# (a copy in tests/corpus/libvirt, see its README.md) loads, or is rejected with the right problems,
# in the per-file layout and inside a bulk file; and every file with a
# usable name survives bulk -> per-file -> bulk byte for byte (the
# elements qcowkit does not interpret included).
srcdir=${srcdir:-.}
. "$srcdir/tests/tap.sh"
. "$srcdir/tests/meta-lib.sh"
require jq
scratch

corpus=${QCOWKIT_CORPUS:-$srcdir/tests/corpus/libvirt}
if [ ! -d "$corpus" ]; then
  echo "1..1"
  echo "not ok 1 - the libvirt corpus is not at $corpus"
  exit 1
fi

R=$T/r
Q () { qcowkit meta "$1" --libvirt-root "$R" "${@:2}"; }
kind_of () {
  case $1 in
    *checkpoint*) echo checkpoint ;;
    *) echo snapshot ;;
  esac
}
# got LAYOUT FILE: the problems (FILE_NAME aside: corpus files are not
# named after their snapshots)
got () {
  local lay=$1 f=$2 k; k=$(kind_of "$f")
  rm -rf "$R"; mkdir -p "$R/etc/qemu" "$R/lib/qemu/$k"
  echo "<domain type='qemu'><name>c</name></domain>" > "$R/etc/qemu/c.xml"
  if [ "$lay" = per-file ]; then
    mkdir "$R/lib/qemu/$k/c"; cp "$corpus/$f" "$R/lib/qemu/$k/c/"
  else
    { echo "<${k}s>"; cat "$corpus/$f"; echo "</${k}s>"; } > "$R/lib/qemu/$k/c.xml"
  fi
  Q check c --no-images --output=json > "$T/c.json"
  jq -r '[.problems[].name | select(. != "FILE_NAME")] | sort | join(" ")' "$T/c.json"
}

# FILE | problems per-file | problems in a bulk file
while IFS='|' read -r f want_pf want_bulk; do
  [ -z "$f" ] && continue
  if [ ! -f "$corpus/$f" ]; then fail "$f is in the corpus"; continue; fi
  is "$(got per-file "$f")" "$want_pf" "$f, per-file: ${want_pf:-clean}"
  is "$(got bulk "$f")" "$want_bulk" "$f, in a bulk file: ${want_bulk:-clean}"
  case " $want_bulk " in *" MISSING_NAME "*|*" UNSAFE_NAME "*)
    # not convertible: --force leaves it behind
    k=$(kind_of "$f")
    Q convert c --kind "$k" --to per-file --force > /dev/null 2>&1
    is "$(ls "$R/lib/qemu/$k/c" 2>/dev/null | wc -l)" 0 "$f: not convertible, left behind"
    continue ;;
  esac
  k=$(kind_of "$f")
  if grep -q '<active>' "$corpus/$f"; then
    # an on-disk per-file file: per-file -> bulk -> per-file
    got per-file "$f" > /dev/null
    b=$(basename "$f")
    want="$R/lib/qemu/$k/c/$b"
    cp "$want" "$T/orig"
    if Q convert c --kind "$k" --to bulk --force --no-backup > "$T/out" 2>&1 &&
       Q convert c --kind "$k" --to per-file --force --no-backup > "$T/out" 2>&1; then
      n=$(sed -n 's|.*<name>\(.*\)</name>.*|\1|p' "$T/orig" | head -1)
      # our files carry libvirt's header comment; the corpus files do not
      sed '1,/^-->$/d' "$R/lib/qemu/$k/c/$n.xml" | sed '1{/^$/d}' > "$T/back"
      if cmp -s "$T/back" <(sed -e '$a\' "$T/orig"); then
        pass "$f: per-file -> bulk -> per-file is byte for byte"
      else
        fail "$f: per-file -> bulk -> per-file is byte for byte" \
          "$(diff "$T/back" "$T/orig" | head -5)"
      fi
    else
      fail "$f: round trip converts" "$(cat "$T/out")"
    fi
    continue
  fi
  # a public (dumpxml) file: bulk (as got left it) -> per-file -> bulk
  if Q convert c --kind "$k" --to per-file --force --no-backup > "$T/out" 2>&1 &&
     Q convert c --kind "$k" --to bulk --force --no-backup > "$T/out" 2>&1; then
    sed '1,/^<'"$k"'s/d; $d' "$R/lib/qemu/$k/c.xml" | sed '1s/^  //' > "$T/back"
    if cmp -s "$T/back" <(sed -e '$a\' "$corpus/$f"); then
      pass "$f: bulk -> per-file -> bulk is byte for byte"
    else
      fail "$f: bulk -> per-file -> bulk is byte for byte" \
        "$(diff "$T/back" "$corpus/$f" | head -5)"
    fi
  else
    fail "$f: round trip converts" "$(cat "$T/out")"
  fi
done <<'TABLE'
domainsnapshotxml2xmlin/description_only.xml|MISSING_ACTIVE MISSING_CTIME MISSING_NAME MISSING_STATE|MISSING_CTIME MISSING_NAME MISSING_STATE
domainsnapshotxml2xmlin/disk-invalid.xml|MISSING_ACTIVE MISSING_CTIME MISSING_STATE|MISSING_CTIME MISSING_STATE
domainsnapshotxml2xmlin/disk-network-seclabel-invalid.xml|MISSING_ACTIVE MISSING_CTIME MISSING_STATE|MISSING_CTIME MISSING_STATE
domainsnapshotxml2xmlin/disk-seclabel-invalid.xml|MISSING_ACTIVE MISSING_CTIME MISSING_STATE|MISSING_CTIME MISSING_STATE
domainsnapshotxml2xmlin/disk_driver_name_null.xml|MISSING_ACTIVE MISSING_CTIME MISSING_STATE|MISSING_CTIME MISSING_STATE
domainsnapshotxml2xmlin/disk_snapshot.xml|MISSING_ACTIVE MISSING_CTIME MISSING_STATE|MISSING_CTIME MISSING_STATE
domainsnapshotxml2xmlin/empty.xml|MISSING_ACTIVE MISSING_CTIME MISSING_NAME MISSING_STATE|MISSING_CTIME MISSING_NAME MISSING_STATE
domainsnapshotxml2xmlin/external_vm.xml|MISSING_ACTIVE MISSING_CTIME|MISSING_CTIME
domainsnapshotxml2xmlin/name_and_description.xml|MISSING_ACTIVE MISSING_CTIME MISSING_STATE|MISSING_CTIME MISSING_STATE
domainsnapshotxml2xmlin/name_only.xml|MISSING_ACTIVE MISSING_CTIME MISSING_STATE|MISSING_CTIME MISSING_STATE
domainsnapshotxml2xmlin/noparent.xml|MISSING_ACTIVE|NO_CURRENT
domainsnapshotxml2xmlout/all_parameters.xml|MISSING_PARENT|MISSING_PARENT
domainsnapshotxml2xmlout/disk_driver_name_null.xml|MISSING_ACTIVE MISSING_CTIME MISSING_STATE|MISSING_CTIME MISSING_STATE
domainsnapshotxml2xmlout/disk_snapshot.xml|MISSING_ACTIVE MISSING_CTIME MISSING_STATE|MISSING_CTIME MISSING_STATE
domainsnapshotxml2xmlout/disk_snapshot_redefine.xml|MISSING_PARENT|MISSING_PARENT
domainsnapshotxml2xmlout/empty.xml|MISSING_ACTIVE MISSING_STATE|MISSING_STATE
domainsnapshotxml2xmlout/external_vm.xml|MISSING_ACTIVE MISSING_CTIME MISSING_STATE|MISSING_CTIME MISSING_STATE
domainsnapshotxml2xmlout/external_vm_redefine.xml|MISSING_ACTIVE|MISSING_PARENT
domainsnapshotxml2xmlout/full_domain.xml|MISSING_PARENT|MISSING_PARENT
domainsnapshotxml2xmlout/metadata.xml|MISSING_ACTIVE|MISSING_PARENT
domainsnapshotxml2xmlout/name_and_description.xml|MISSING_ACTIVE MISSING_CTIME MISSING_STATE|MISSING_CTIME MISSING_STATE
domainsnapshotxml2xmlout/noparent.xml|MISSING_ACTIVE MISSING_STATE|MISSING_STATE
domainsnapshotxml2xmlout/noparent_nodescription.xml||NO_CURRENT
domainsnapshotxml2xmlout/noparent_nodescription_noactive.xml|MISSING_ACTIVE|NO_CURRENT
qemudomaincheckpointxml2xmlin/disk-default.xml|MISSING_CTIME MISSING_NAME|MISSING_CTIME MISSING_NAME
qemudomaincheckpointxml2xmlin/disk-invalid.xml|DISK_INVALID MISSING_CTIME|DISK_INVALID MISSING_CTIME
qemudomaincheckpointxml2xmlin/empty.xml|MISSING_CTIME MISSING_NAME|MISSING_CTIME MISSING_NAME
qemudomaincheckpointxml2xmlin/name-invalid.xml|MISSING_CTIME UNSAFE_NAME|MISSING_CTIME UNSAFE_NAME
qemudomaincheckpointxml2xmlin/sample.xml|MISSING_CTIME MISSING_NAME|MISSING_CTIME MISSING_NAME
qemudomaincheckpointxml2xmlin/size.xml|MISSING_CTIME|MISSING_CTIME
qemudomaincheckpointxml2xmlout/disk-default.xml|MISSING_PARENT|MISSING_PARENT
qemudomaincheckpointxml2xmlout/empty.xml||
qemudomaincheckpointxml2xmlout/internal-active-invalid.xml|CHECKPOINT_ACTIVE MISSING_PARENT|CHECKPOINT_ACTIVE MISSING_PARENT
qemudomaincheckpointxml2xmlout/internal-inactive-invalid.xml|CHECKPOINT_ACTIVE MISSING_PARENT|CHECKPOINT_ACTIVE MISSING_PARENT
qemudomaincheckpointxml2xmlout/redefine.xml||
qemudomaincheckpointxml2xmlout/sample.xml|MISSING_PARENT|MISSING_PARENT
qemudomaincheckpointxml2xmlout/size.xml|MISSING_PARENT|MISSING_PARENT
qemudomainsnapshotxml2xmlin/disk_snapshot.xml|MISSING_ACTIVE MISSING_CTIME MISSING_STATE|MISSING_CTIME MISSING_STATE
qemudomainsnapshotxml2xmlin/external_vm.xml|MISSING_ACTIVE MISSING_CTIME|MISSING_CTIME
qemudomainsnapshotxml2xmlin/noparent.xml|MISSING_ACTIVE|NO_CURRENT
qemudomainsnapshotxml2xmlin/qcow2-metadata-cache.xml|MISSING_ACTIVE MISSING_CTIME MISSING_STATE|MISSING_CTIME MISSING_STATE
qemudomainsnapshotxml2xmlout/all_parameters.xml|MISSING_PARENT|MISSING_PARENT
qemudomainsnapshotxml2xmlout/disk-seclabel.xml|MISSING_ACTIVE MISSING_STATE|MISSING_STATE
qemudomainsnapshotxml2xmlout/disk_driver_name_null.xml|MISSING_ACTIVE MISSING_STATE|MISSING_STATE
qemudomainsnapshotxml2xmlout/disk_snapshot_redefine.xml|MISSING_PARENT|MISSING_PARENT
qemudomainsnapshotxml2xmlout/empty.xml|MISSING_ACTIVE MISSING_STATE|MISSING_STATE
qemudomainsnapshotxml2xmlout/external_vm.xml|MISSING_ACTIVE MISSING_STATE|MISSING_STATE
qemudomainsnapshotxml2xmlout/external_vm_redefine.xml|MISSING_ACTIVE|MISSING_PARENT
qemudomainsnapshotxml2xmlout/full_domain.xml|MISSING_PARENT|MISSING_PARENT
qemudomainsnapshotxml2xmlout/memory-snapshot-inactivedomain.xml|MISSING_ACTIVE|NO_CURRENT
qemudomainsnapshotxml2xmlout/metadata.xml|MISSING_ACTIVE|MISSING_PARENT
qemudomainsnapshotxml2xmlout/noparent_nodescription.xml||NO_CURRENT
qemudomainsnapshotxml2xmlout/noparent_nodescription_noactive.xml|MISSING_ACTIVE|NO_CURRENT
qemudomainsnapshotxml2xmlout/qcow2-metadata-cache.xml|MISSING_ACTIVE MISSING_STATE|MISSING_STATE
virshtestdata/checkpoint-c2.xml|MISSING_PARENT|MISSING_PARENT
virshtestdata/checkpoint-c3.xml||
virshtestdata/snapshot-s2.xml|MISSING_ACTIVE|MISSING_PARENT
virshtestdata/snapshot-s3.xml|MISSING_ACTIVE|NO_CURRENT
TABLE

# hostile and broken XML
hostile () {  # NAME WANT CONTENT
  rm -rf "$R"; mkdir -p "$R/etc/qemu" "$R/lib/qemu/snapshot/c"
  echo "<domain type='qemu'><name>c</name></domain>" > "$R/etc/qemu/c.xml"
  printf '%s' "$3" > "$R/lib/qemu/snapshot/c/s.xml"
  Q check c --no-images --output=json > "$T/c.json"
  is "$(problems "$T/c.json")" "$2" "$1"
}
good='<name>s</name><state>shutoff</state><creationTime>1</creationTime><active>1</active>'
hostile "a clean minimal file" "" "<domainsnapshot>$good</domainsnapshot>"
# libvirt parses a DOCTYPE and its internal entities; libxml2 refuses the
# amplification (tests/meta-fidelity.sh checks each against libvirt)
hostile "entities expanding to 1000 bytes: libxml2 refuses them" "PARSE" \
  "<?xml version='1.0'?><!DOCTYPE d [<!ENTITY a 'aaaaaaaaaa'><!ENTITY b '&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;'><!ENTITY c '&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;'>]><domainsnapshot>$good<description>&c;</description></domainsnapshot>"
hostile "an external entity is never read; the file loads" "" \
  "<!DOCTYPE d [<!ENTITY x SYSTEM 'file:///etc/passwd'>]><domainsnapshot>$good<description>&x;</description></domainsnapshot>"
hostile "a DOCTYPE after a comment is parsed" "" \
  "<!-- <domainsnapshot> --><!DOCTYPE d><domainsnapshot>$good</domainsnapshot>"
hostile "DOCTYPE text inside a comment is harmless" "" \
  "<!-- <!DOCTYPE d> --><domainsnapshot>$good</domainsnapshot>"
deep=$(printf '<a>%.0s' $(seq 2000))$(printf '</a>%.0s' $(seq 2000))
hostile "nesting deeper than the scanner's bound" "HOSTILE" "<domainsnapshot>$good$deep</domainsnapshot>"
hostile "an undefined entity does not parse" "PARSE" "<domainsnapshot>$good<description>&x;</description></domainsnapshot>"
hostile "two root elements" "PARSE" "<domainsnapshot>$good</domainsnapshot><domainsnapshot/>"
hostile "a truncated file" "PARSE" "<domainsnapshot>$good<disks>"
hostile "the wrong root element" "PARSE" "<domain>$good</domain>"
hostile "text outside the root element" "PARSE" "x"
printf '\xff\xfe<\x00d\x00/\x00>\x00' > "$R/lib/qemu/snapshot/c/s.xml"
Q check c --no-images --output=json > "$T/c.json"
is "$(problems "$T/c.json")" "PARSE" "UTF-16 is not what libvirt writes"
# the per-file size limit, and raising it
rm -rf "$R"; meta_gen "$R" c 1 per-file chain 200
Q check c --no-images --max-file-size 4K --output=json > "$T/c.json"
is "$(problems "$T/c.json")" "TOO_LARGE" "a file over --max-file-size is not read"
Q check c --no-images --max-file-size 1M --output=json > "$T/c.json"
is "$(problems "$T/c.json")" "" "--max-file-size raises the limit"
rm -rf "$R"; meta_gen "$R" c 1 per-file chain 12000
Q check c --no-images --output=json > "$T/c.json"
is "$(problems "$T/c.json")" "LIBVIRT_SIZE" "a file over 1 MiB: libvirt would skip it"
rm -rf "$R"; meta_gen "$R" c 3 bulk chain 200
Q check c --no-images --max-file-size 8K --output=json > "$T/c.json"
is "$(problems "$T/c.json")" "CURRENT_UNKNOWN TOO_LARGE TOO_LARGE TOO_LARGE" \
  "bulk: the limit applies to each element, not to the file"
Q check c --no-images --max-file-size 32K --output=json > "$T/c.json"
is "$(problems "$T/c.json")" "" "bulk: each element under the limit, the file over it: fine"
done_testing
