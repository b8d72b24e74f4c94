# Fuzzing: included by Makefile.am. See fuzz/README.md and doc/FUZZING.md.
# Each harness builds twice: with a replay main (fuzz/standalone.c) for
# make check and AFL++, and with --enable-fuzzing as a libFuzzer binary.
# The qcow2 harnesses (image, read, check, chain, repair) link the
# structure-aware mutator (fuzz/mutator.c) into their libFuzzer binaries;
# the *-nomut binaries are the first four without it, to measure what it
# brings.
FUZZ_HARNESSES = image read check chain repair amend meta-file meta-bulk
FUZZ_COMMON = fuzz/fuzz.h fuzz/chainfs.h
FUZZ_REPLAY_LDADD = lib/libqcowkit-internal.la $(ZLIB_LIBS)
# fuzz-meta-bulk cuts the bulk reader's read(2)s into chunks the input
# chooses (see fuzz/fuzz-meta-bulk.c)
FUZZ_WRAP_READ = -Wl,--wrap=read

fuzz_fuzz_image_replay_SOURCES = fuzz/fuzz-image.c fuzz/standalone.c $(FUZZ_COMMON)
fuzz_fuzz_image_replay_LDADD = $(FUZZ_REPLAY_LDADD)
fuzz_fuzz_read_replay_SOURCES = fuzz/fuzz-read.c fuzz/standalone.c $(FUZZ_COMMON)
fuzz_fuzz_read_replay_LDADD = $(FUZZ_REPLAY_LDADD)
fuzz_fuzz_check_replay_SOURCES = fuzz/fuzz-check.c fuzz/standalone.c $(FUZZ_COMMON)
fuzz_fuzz_check_replay_LDADD = $(FUZZ_REPLAY_LDADD)
fuzz_fuzz_chain_replay_SOURCES = fuzz/fuzz-chain.c fuzz/standalone.c $(FUZZ_COMMON)
fuzz_fuzz_chain_replay_LDADD = $(FUZZ_REPLAY_LDADD)
fuzz_fuzz_repair_replay_SOURCES = fuzz/fuzz-repair.c fuzz/standalone.c $(FUZZ_COMMON)
fuzz_fuzz_repair_replay_LDADD = $(FUZZ_REPLAY_LDADD)
fuzz_fuzz_amend_replay_SOURCES = fuzz/fuzz-amend.c fuzz/standalone.c $(FUZZ_COMMON)
fuzz_fuzz_amend_replay_LDADD = $(FUZZ_REPLAY_LDADD)
fuzz_fuzz_meta_file_replay_SOURCES = fuzz/fuzz-meta-file.c fuzz/standalone.c $(FUZZ_COMMON)
fuzz_fuzz_meta_file_replay_LDADD = $(FUZZ_REPLAY_LDADD)
fuzz_fuzz_meta_bulk_replay_SOURCES = fuzz/fuzz-meta-bulk.c fuzz/standalone.c $(FUZZ_COMMON)
fuzz_fuzz_meta_bulk_replay_LDADD = $(FUZZ_REPLAY_LDADD)
fuzz_fuzz_meta_bulk_replay_LDFLAGS = $(AM_LDFLAGS) $(FUZZ_WRAP_READ)

if ENABLE_FUZZING
noinst_PROGRAMS = \
	fuzz/fuzz-image fuzz/fuzz-read fuzz/fuzz-check fuzz/fuzz-chain \
	fuzz/fuzz-repair fuzz/fuzz-amend fuzz/fuzz-meta-file fuzz/fuzz-meta-bulk \
	fuzz/fuzz-image-nomut fuzz/fuzz-read-nomut fuzz/fuzz-check-nomut \
	fuzz/fuzz-chain-nomut \
	$(NULL)
FUZZ_LIBFUZZER_LDADD = lib/libqcowkit-internal.la
# ASan's defaults for the libFuzzer binaries (see the file)
FUZZ_LIBFUZZER_SRC = fuzz/asan-options.c
fuzz_fuzz_image_SOURCES = fuzz/fuzz-image.c fuzz/mutator.c $(FUZZ_COMMON) $(FUZZ_LIBFUZZER_SRC)
fuzz_fuzz_image_LDADD = $(FUZZ_LIBFUZZER_LDADD)
fuzz_fuzz_image_LDFLAGS = $(FUZZ_LDFLAGS)
fuzz_fuzz_read_SOURCES = fuzz/fuzz-read.c fuzz/mutator.c $(FUZZ_COMMON) $(FUZZ_LIBFUZZER_SRC)
fuzz_fuzz_read_LDADD = $(FUZZ_LIBFUZZER_LDADD)
fuzz_fuzz_read_LDFLAGS = $(FUZZ_LDFLAGS)
fuzz_fuzz_check_SOURCES = fuzz/fuzz-check.c fuzz/mutator.c $(FUZZ_COMMON) $(FUZZ_LIBFUZZER_SRC)
fuzz_fuzz_check_LDADD = $(FUZZ_LIBFUZZER_LDADD)
fuzz_fuzz_check_LDFLAGS = $(FUZZ_LDFLAGS)
fuzz_fuzz_chain_SOURCES = fuzz/fuzz-chain.c fuzz/mutator.c $(FUZZ_COMMON) $(FUZZ_LIBFUZZER_SRC)
fuzz_fuzz_chain_LDADD = $(FUZZ_LIBFUZZER_LDADD)
fuzz_fuzz_chain_LDFLAGS = $(FUZZ_LDFLAGS)
fuzz_fuzz_repair_SOURCES = fuzz/fuzz-repair.c fuzz/mutator.c $(FUZZ_COMMON) $(FUZZ_LIBFUZZER_SRC)
fuzz_fuzz_repair_LDADD = $(FUZZ_LIBFUZZER_LDADD)
fuzz_fuzz_repair_LDFLAGS = $(FUZZ_LDFLAGS)
fuzz_fuzz_amend_SOURCES = fuzz/fuzz-amend.c fuzz/mutator.c $(FUZZ_COMMON) $(FUZZ_LIBFUZZER_SRC)
fuzz_fuzz_amend_LDADD = $(FUZZ_LIBFUZZER_LDADD)
fuzz_fuzz_amend_LDFLAGS = $(FUZZ_LDFLAGS)
fuzz_fuzz_meta_file_SOURCES = fuzz/fuzz-meta-file.c $(FUZZ_COMMON) $(FUZZ_LIBFUZZER_SRC)
fuzz_fuzz_meta_file_LDADD = $(FUZZ_LIBFUZZER_LDADD)
fuzz_fuzz_meta_file_LDFLAGS = $(FUZZ_LDFLAGS)
fuzz_fuzz_meta_bulk_SOURCES = fuzz/fuzz-meta-bulk.c $(FUZZ_COMMON) $(FUZZ_LIBFUZZER_SRC)
fuzz_fuzz_meta_bulk_LDADD = $(FUZZ_LIBFUZZER_LDADD)
fuzz_fuzz_meta_bulk_LDFLAGS = $(FUZZ_LDFLAGS) $(FUZZ_WRAP_READ)
fuzz_fuzz_image_nomut_SOURCES = fuzz/fuzz-image.c $(FUZZ_COMMON) $(FUZZ_LIBFUZZER_SRC)
fuzz_fuzz_image_nomut_LDADD = $(FUZZ_LIBFUZZER_LDADD)
fuzz_fuzz_image_nomut_LDFLAGS = $(FUZZ_LDFLAGS)
fuzz_fuzz_read_nomut_SOURCES = fuzz/fuzz-read.c $(FUZZ_COMMON) $(FUZZ_LIBFUZZER_SRC)
fuzz_fuzz_read_nomut_LDADD = $(FUZZ_LIBFUZZER_LDADD)
fuzz_fuzz_read_nomut_LDFLAGS = $(FUZZ_LDFLAGS)
fuzz_fuzz_check_nomut_SOURCES = fuzz/fuzz-check.c $(FUZZ_COMMON) $(FUZZ_LIBFUZZER_SRC)
fuzz_fuzz_check_nomut_LDADD = $(FUZZ_LIBFUZZER_LDADD)
fuzz_fuzz_check_nomut_LDFLAGS = $(FUZZ_LDFLAGS)
fuzz_fuzz_chain_nomut_SOURCES = fuzz/fuzz-chain.c $(FUZZ_COMMON) $(FUZZ_LIBFUZZER_SRC)
fuzz_fuzz_chain_nomut_LDADD = $(FUZZ_LIBFUZZER_LDADD)
fuzz_fuzz_chain_nomut_LDFLAGS = $(FUZZ_LDFLAGS)
endif

check_PROGRAMS += \
	fuzz/fuzz-image-replay \
	fuzz/fuzz-read-replay \
	fuzz/fuzz-check-replay \
	fuzz/fuzz-chain-replay \
	fuzz/fuzz-repair-replay \
	fuzz/fuzz-amend-replay \
	fuzz/fuzz-meta-file-replay \
	fuzz/fuzz-meta-bulk-replay \
	$(NULL)
SH_TESTS += tests/fuzz-replay.sh
EXTRA_DIST += fuzz/README.md fuzz/local.mk fuzz/mutator.c fuzz/asan-options.c \
	fuzz/make-seeds.sh fuzz/smoke.sh fuzz/measure.sh fuzz/qcow2.dict fuzz/libvirt-xml.dict \
	doc/FUZZING.md tests/regress \
	$(NULL)
