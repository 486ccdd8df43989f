# moed build.  `make` builds bin/moed and the tools; `make test` runs every
# test that this machine can run; `make run` builds and starts the daemon.
#
# Variables:
#   DEPS=/prefix     C dependencies unpacked under a prefix (the GPU machine:
#                    see ../shared/DEVICE.md) instead of the system's.
#   MOED_CUDA=auto|0|1   build the CUDA kernels (auto: when nvcc is found).
#   CUDA_ARCH=sm_90  GPU target for nvcc.
#   SAN=1            AddressSanitizer + UBSan build (objects in build-san/).
#   WERROR=0         do not turn warnings into errors.
#   SHARED=../shared the shared folder (tokenizer vectors, corpus).

CC       ?= gcc
NVCC     ?= nvcc
DEPS     ?=
MOED_CUDA ?= auto
CUDA_ARCH ?= sm_90
SAN      ?= 0
WERROR   ?= 1
SHARED   ?= ../shared
FUZZ_SECONDS ?= 60

ifeq ($(SAN),1)
BUILD    ?= build-san
else
BUILD    ?= build
endif

ifeq ($(MOED_CUDA),auto)
HAVE_CUDA := $(if $(shell command -v $(NVCC) 2>/dev/null),1,0)
else
HAVE_CUDA := $(MOED_CUDA)
endif
# Sanitizer builds run on the CPU path only (ASan and the CUDA runtime do
# not share an address space layout happily).
ifeq ($(SAN),1)
HAVE_CUDA := 0
endif

CPPFLAGS += -I. -D_GNU_SOURCE
CFLAGS   += -std=c11 -O2 -g -pthread -Wall -Wextra -Wshadow -Wno-unused-parameter \
            -fno-strict-aliasing
LDLIBS   += -luv -lcjson -lhwloc -lpcre2-8 -lm -pthread
ifeq ($(WERROR),1)
CFLAGS   += -Werror
endif
ifeq ($(SAN),1)
SANFLAGS := -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
CFLAGS   += $(SANFLAGS) -O1
LDFLAGS  += $(SANFLAGS)
endif
ifneq ($(DEPS),)
DEPLIB   := $(DEPS)/usr/lib/x86_64-linux-gnu
CPPFLAGS += -I$(DEPS)/usr/include -I$(DEPS)/usr/include/x86_64-linux-gnu
LDFLAGS  += -L$(DEPLIB) -Wl,-rpath,$(DEPLIB)
endif
# llhttp ships as C sources (Debian's node-llhttp); they are compiled into
# the library with their own, relaxed warning flags.
LLHTTP_DIR := $(DEPS)/usr/share/llhttp
CPPFLAGS += -I$(DEPS)/usr/share/include/llhttp

ISA_AVX2   := -mavx2 -mfma -mf16c
ISA_AVX512 := -mavx2 -mfma -mf16c -mavx512f -mavx512bw -mavx512vl -mavx512dq \
              -mavx512vnni -mavx512bf16

LIB_DIRS := common kernels/cpu kernels/cuda model sched cache conf api
LIB_SRC  := $(foreach d,$(LIB_DIRS),$(wildcard $(d)/*.c))
LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/%.o) \
            $(patsubst $(LLHTTP_DIR)/%.c,$(BUILD)/llhttp/%.o,$(wildcard $(LLHTTP_DIR)/*.c))
ifeq ($(HAVE_CUDA),1)
CUDA_HOME ?= $(patsubst %/bin/,%,$(dir $(shell command -v $(NVCC))))
CU_SRC   := $(foreach d,$(LIB_DIRS),$(wildcard $(d)/*.cu))
LIB_OBJ  += $(CU_SRC:%.cu=$(BUILD)/%.cu.o)
CPPFLAGS += -DMOED_HAVE_CUDA=1
LDFLAGS  += -L$(CUDA_HOME)/lib64 -L$(CUDA_HOME)/targets/x86_64-linux/lib
LDLIBS   += -lcudart_static -ldl -lrt -lstdc++
endif

MOED_OBJ  := $(patsubst %.c,$(BUILD)/%.o,$(wildcard daemon/*.c))
TEST_OBJ  := $(patsubst %.c,$(BUILD)/%.o,$(wildcard tests/unit/*.c))
# moed-mkmodel: tools/mkmodel.c is its main; the rest is linked into the tests too
MKMODEL_OBJ := $(patsubst %.c,$(BUILD)/%.o,$(wildcard tools/mkmodel_*.c))
LIB       := $(BUILD)/libmoed.a

ifeq ($(SAN),1)
BIN := $(BUILD)/bin
else
BIN := bin
endif

.PHONY: all deps test test-unit test-gpu test-san fuzz run clean
all: $(BIN)/moed $(BIN)/moed-tests $(BIN)/moed-mkmodel

$(LIB): $(LIB_OBJ)
	@mkdir -p $(@D)
	rm -f $@ && ar rcs $@ $^

$(BIN)/moed: $(MOED_OBJ) $(LIB)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BIN)/moed-mkmodel: $(BUILD)/tools/mkmodel.o $(MKMODEL_OBJ) $(LIB)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# the engine's unit tests run daemon/engine.c in-process
TEST_DAEMON_OBJ := $(BUILD)/daemon/engine.o

$(BIN)/moed-tests: $(TEST_OBJ) $(MKMODEL_OBJ) $(TEST_DAEMON_OBJ) $(LIB)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/%_avx2.o: %_avx2.c
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(ISA_AVX2) -MMD -MP -c $< -o $@

$(BUILD)/%_avx512.o: %_avx512.c
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(ISA_AVX512) -MMD -MP -c $< -o $@

$(BUILD)/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/llhttp/%.o: $(LLHTTP_DIR)/%.c
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) -std=c11 -O2 -g $(filter -fsanitize%,$(CFLAGS)) -w -c $< -o $@

$(BUILD)/%.cu.o: %.cu
	@mkdir -p $(@D)
	$(NVCC) -I. -DMOED_HAVE_CUDA=1 -O2 -arch=$(CUDA_ARCH) -Xcompiler -Wall,-fPIC -MMD -MP -c $< -o $@

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)

# ---- set-up and tests -------------------------------------------------------

# Checks (and, as root, installs) the Debian packages the build and the tests
# need; skipped when DEPS points at unpacked packages.
deps:
ifeq ($(DEPS),)
	@sh tools/deps.sh
endif

test: deps
	@MOED_SHARED=$(SHARED) sh tests/run.sh

test-unit: $(BIN)/moed-tests
	MOED_SHARED=$(SHARED) $(BIN)/moed-tests

# On a machine with a CUDA device: the GPU tests (unit tests named cuda_*),
# then the same under compute-sanitizer (memcheck, leaks) when it is there.
# API errors are not counted: the error-path tests fail CUDA calls on
# purpose (an invalid device, a second registration), and every call's
# result is checked by the code itself.
# Without a device they report themselves skipped.
SANITIZER ?= $(shell command -v compute-sanitizer 2>/dev/null || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)
# The models the GPU tests write go to tmpfs when there is one: registering
# (cudaHostRegister) the mapping of a file just written to ext4 hung on the
# GPU machine.  MOED_TEST_TMP overrides.
GPU_TEST_TMP ?= $(if $(wildcard /dev/shm),/dev/shm/moed-test-$(shell id -u),)
test-gpu: $(BIN)/moed-tests
	@st=0; $(if $(GPU_TEST_TMP),mkdir -p $(GPU_TEST_TMP); export MOED_TEST_TMP=$${MOED_TEST_TMP:-$(GPU_TEST_TMP)};) \
	MOED_SHARED=$(SHARED) $(BIN)/moed-tests cuda_ || st=1; \
	if [ -n "$(SANITIZER)" ]; then \
	  echo "test-gpu: under $(SANITIZER)"; \
	  MOED_SHARED=$(SHARED) $(SANITIZER) --tool memcheck --leak-check full --report-api-errors no --error-exitcode 1 \
	    $(BIN)/moed-tests cuda_ || st=1; \
	else echo "test-gpu: compute-sanitizer not found: memcheck skipped"; fi; exit $$st

# libFuzzer targets (clang): tests/fuzz/fuzz_NAME.c links the sources listed
# in FUZZ_SRC_NAME (only what it needs, built for the baseline ISA).
# FUZZ_SECONDS bounds each run.
FUZZ_TARGETS := $(patsubst tests/fuzz/%.c,build-fuzz/%,$(wildcard tests/fuzz/fuzz_*.c))
FUZZ_SRC_fuzz_gguf := common/err.c kernels/cpu/types.c model/gguf.c model/gguf_write.c
FUZZ_SRC_fuzz_tok := common/err.c common/utf8.c kernels/cpu/types.c model/gguf.c model/tok.c model/tok_bpe.c \
                     model/tok_dec.c model/tok_enc.c model/tok_map.c model/tok_pre.c \
                     model/tok_spm.c model/tok_utf8.c
FUZZ_SRC_fuzz_oai := common/err.c common/utf8.c model/sample.c api/oai_err.c api/oai_req.c api/oai_resp.c \
                     api/oai_text.c
FUZZ_SRC_fuzz_http := common/err.c api/conn.c api/server.c api/respond.c api/post.c api/metrics.c \
                      $(wildcard $(LLHTTP_DIR)/*.c)
# extra libraries per target (after the common ones)
FUZZ_LIBS_fuzz_http := -luv
FUZZ_FLAGS := -std=c11 -g -O1 -I. -D_GNU_SOURCE -fsanitize=fuzzer,address,undefined \
              -fno-sanitize-recover=all
.SECONDEXPANSION:
build-fuzz/fuzz_%: tests/fuzz/fuzz_%.c $$(FUZZ_SRC_fuzz_$$*)
	@mkdir -p $(@D)
	clang $(FUZZ_FLAGS) $(CPPFLAGS) -o $@ $^ $(FUZZ_LIBS_fuzz_$*) -lcjson -lpcre2-8 -lm -pthread

fuzz: $(FUZZ_TARGETS)
	@for t in $(FUZZ_TARGETS); do \
	  n=$$(basename $$t); mkdir -p build-fuzz/corpus-$$n; \
	  seeds=tests/fuzz/seeds/$$n; [ -d $$seeds ] || seeds=; \
	  echo "fuzz: $$n for $(FUZZ_SECONDS) s"; \
	  $$t -max_total_time=$(FUZZ_SECONDS) -max_len=65536 -print_final_stats=1 \
	    build-fuzz/corpus-$$n $$seeds 2>build-fuzz/$$n.log || { tail -40 build-fuzz/$$n.log; exit 1; }; \
	  grep -E 'stat::number_of_executed_units|stat::peak_rss' build-fuzz/$$n.log; \
	done

# make run: serve the default model on 127.0.0.1:8080 (RUN_PORT, RUN_ARGS to
# change); without it, a tiny random-weight model that moed-mkmodel writes.
DEFAULT_MODEL := model/default/moed-shakespeare.gguf
TINY_MODEL    := $(BUILD)/tiny-default.gguf
RUN_PORT      ?= 8080
RUN_ARGS      ?=
run: deps all
	@if [ -f $(DEFAULT_MODEL) ]; then m=$(DEFAULT_MODEL); else \
	  m=$(TINY_MODEL); \
	  echo "moed: $(DEFAULT_MODEL) is not there: serving a tiny random-weight model ($$m) instead; it writes gibberish"; \
	  if [ ! -f $$m ]; then \
	    v=$(SHARED)/vocab/ggml-vocab-gpt-2.gguf; \
	    if [ -f $$v ]; then vf="--vocab-from $$v"; else vf=; echo "moed: $$v not found: byte-level tokenizer"; fi; \
	    mkdir -p $(dir $(TINY_MODEL)); \
	    $(BIN)/moed-mkmodel --preset tiny-qwen3moe $$vf -o $$m || exit 1; \
	  fi; \
	fi; \
	echo "moed: bin/moed serve -m $$m --host 127.0.0.1 --port $(RUN_PORT) $(RUN_ARGS)"; \
	exec $(BIN)/moed serve -m $$m --host 127.0.0.1 --port $(RUN_PORT) $(RUN_ARGS)

clean:
	rm -rf build build-san build-fuzz bin
