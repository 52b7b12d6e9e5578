# SPDX-License-Identifier: Apache-2.0
# Fuzzing the C decoders of untrusted input (fuzz/README.md), included by the Makefile.
#
#   make fuzz [FUZZ_SECONDS=12] [FUZZ_JOBS=2] [FUZZ_ONLY="lz delta"]
#       build every harness with clang, libFuzzer, ASan and UBSan into build/fuzz/, seed each
#       corpus from the test vectors, run each for FUZZ_SECONDS; fails on any crash
#   make fuzz-regress
#       replay fuzz/regressions/<harness>/ and the vector seeds through each harness with a plain
#       main (no libFuzzer; $(CC) with ASan and UBSan); part of `make test`

FUZZ := $(BUILD)/fuzz
FUZZ_CC ?= clang
FUZZ_SECONDS ?= 12
FUZZ_JOBS ?= 2
FUZZ_NAMES := cbor manifest rotation golden lz delta transfer link messages device
FUZZ_ONLY ?= $(FUZZ_NAMES)
FUZZ_SAN := -fsanitize=address,undefined -fno-sanitize-recover=undefined
FUZZ_INC := $(COMMON_INC) -Iports/posix -Ifuzz
FUZZ_CFLAGS := $(WARN) -O1 -g -fno-omit-frame-pointer $(FUZZ_INC) $(FUZZ_SAN)
FUZZ_LIB_SRC := $(CORE:%=src/%.c) src/$(RUNNER).c ports/posix/platform_posix.c \
                ports/posix/seed_posix.c ports/common/trusted_keys.c fuzz/fuzz_common.c \
                fuzz/device_session.c
# The regression replay: the same harnesses with $(CC) and a plain main.
FUZZ_REGRESS_SAN ?= -fsanitize=address,undefined -fno-sanitize-recover=all
FUZZ_REGRESS_CFLAGS := $(WARN) -O1 -g -fno-omit-frame-pointer $(FUZZ_INC) $(FUZZ_REGRESS_SAN)

FUZZ_OBJ := $(FUZZ)/obj
FUZZ_ROBJ := $(FUZZ)/regress-obj
FUZZ_LIB_OBJS := $(patsubst %.c,$(FUZZ_OBJ)/%.o,$(notdir $(FUZZ_LIB_SRC))) $(FUZZ_OBJ)/base.o
FUZZ_RLIB_OBJS := $(patsubst %.c,$(FUZZ_ROBJ)/%.o,$(notdir $(FUZZ_LIB_SRC))) $(FUZZ_ROBJ)/base.o
FUZZ_BINS := $(FUZZ_NAMES:%=$(FUZZ)/fuzz_%)
FUZZ_REGRESS_BINS := $(FUZZ_NAMES:%=$(FUZZ)/regress_%)
FUZZ_SEEDS := $(FUZZ)/seeds/.stamp
vpath %.c src ports/posix ports/common fuzz
# Objects made through pattern rules: keep them (make would delete them as intermediates).
.SECONDARY: $(FUZZ_LIB_OBJS) $(FUZZ_RLIB_OBJS) $(FUZZ_NAMES:%=$(FUZZ_OBJ)/fuzz_%.o) \
            $(FUZZ_NAMES:%=$(FUZZ_ROBJ)/fuzz_%.o) $(FUZZ_ROBJ)/regress_main.o

.PHONY: fuzz fuzz-build fuzz-regress fuzz-seeds
fuzz: fuzz-build $(FUZZ_SEEDS)
	$(PYTHON) tools/fuzz_run.py --build $(FUZZ) --seconds $(FUZZ_SECONDS) --jobs $(FUZZ_JOBS) \
	  --dicts fuzz/dict $(FUZZ_ONLY)
fuzz-build: $(FUZZ_BINS)
fuzz-seeds: $(FUZZ_SEEDS)

fuzz-regress: $(FUZZ_REGRESS_BINS) $(FUZZ_SEEDS)
	@set -e; for h in $(FUZZ_NAMES); do \
	  $(FUZZ)/regress_$$h fuzz/regressions/$$h $(FUZZ)/seeds/$$h; done

# The delta base of the vectors, compiled in (the harnesses read no files while fuzzing).
$(FUZZ)/gen/base.c: $(VECTORS)/transfers/delta.base.bin
	@mkdir -p $(dir $@)
	$(PYTHON) -c "import sys; d = open(sys.argv[1], 'rb').read(); assert len(d) == 9000; \
	  print('#include \"fuzz.h\"\nconst uint8_t fuzz_delta_base[FUZZ_BASE_BYTES] = {' + \
	  ','.join(map(str, d)) + '};')" $< > $@.tmp && mv $@.tmp $@

$(FUZZ_SEEDS): tools/fuzz_seeds.py $(wildcard $(VECTORS)/*.vec)
	$(PYTHON) tools/fuzz_seeds.py $(VECTORS) $(FUZZ)/seeds
	@touch $@

# libFuzzer build: the core instrumented for coverage; Monocypher as fetched (its fast, table-
# driven curve code, not the compact one of the images), optimised and not instrumented: its
# edges are not the decoders', and signing and verifying dominate every signed input's time.
FUZZ_MONO_FLAGS := -I$(MONO_DIR) -DTML_MONOCYPHER_PRISTINE
$(FUZZ_OBJ)/%.o: %.c $(HEADERS) fuzz/fuzz.h $(GEN)/trusted_keys_data.h
	@mkdir -p $(FUZZ_OBJ)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -c $< -o $@
$(FUZZ_OBJ)/base.o: $(FUZZ)/gen/base.c fuzz/fuzz.h
	@mkdir -p $(FUZZ_OBJ)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -c $< -o $@
$(FUZZ_OBJ)/monocypher.o: src/monocypher_base.c $(MONO_SRC)
	@mkdir -p $(FUZZ_OBJ)
	$(FUZZ_CC) -std=c99 -O2 -g $(FUZZ_MONO_FLAGS) -c $< -o $@
$(FUZZ)/fuzz_%: $(FUZZ_OBJ)/fuzz_%.o $(FUZZ_LIB_OBJS) $(FUZZ_OBJ)/monocypher.o
	$(FUZZ_CC) $(FUZZ_SAN) -fsanitize=fuzzer $^ -o $@

$(FUZZ_ROBJ)/%.o: %.c $(HEADERS) fuzz/fuzz.h $(GEN)/trusted_keys_data.h
	@mkdir -p $(FUZZ_ROBJ)
	$(CC) $(FUZZ_REGRESS_CFLAGS) -c $< -o $@
$(FUZZ_ROBJ)/base.o: $(FUZZ)/gen/base.c fuzz/fuzz.h
	@mkdir -p $(FUZZ_ROBJ)
	$(CC) $(FUZZ_REGRESS_CFLAGS) -c $< -o $@
$(FUZZ_ROBJ)/monocypher.o: src/monocypher_base.c $(MONO_SRC)
	@mkdir -p $(FUZZ_ROBJ)
	$(CC) -std=c99 -O2 -g $(FUZZ_MONO_FLAGS) -c $< -o $@
$(FUZZ)/regress_%: $(FUZZ_ROBJ)/fuzz_%.o $(FUZZ_ROBJ)/regress_main.o $(FUZZ_RLIB_OBJS) \
  $(FUZZ_ROBJ)/monocypher.o
	$(CC) $(FUZZ_REGRESS_SAN) $^ -o $@
