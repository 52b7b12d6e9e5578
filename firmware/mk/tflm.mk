# SPDX-License-Identifier: Apache-2.0
#
# TensorFlow Lite Micro for one Cortex-M variant, compiled out of tree into $(TFLM_OUT): the
# interpreter core plus ONLY the kernels of the ops declared in include/tml/ops.h (the same
# X-macro list registers them in the resolver and reports them as capabilities). Sources come
# from a read-only tree made by TFLM's create_tflm_tree.py (../shared/third_party/tflm/, or
# scripts/fetch_tflm.sh). Included by the Makefile with these set:
#   TFLM_TREE  the tree (tflm-cortex-m-ref: reference kernels; tflm-cortex-m: CMSIS-NN)
#   TFLM_MCPU  -mcpu for TFLM (cortex-m3, cortex-m4+nofp, cortex-m55)
#   TFLM_CORE  CMSIS core name (M3, M4, M55)   TFLM_FLOAT  soft or hard
#   TFLM_OUT   build folder of this variant (shared by the firmware and the probe image)
# TFLM_CORE=host builds the same subset for the host (tflm-host tree, the host's g++, -O2): the
# posix port's TFLM runner for the power-cut tests (Makefile: `make test-tflm`).

# The ops of ops.h -> the kernel sources (stems, in kernels/cmsis_nn/ when the tree has one,
# else kernels/) and the CMSIS-NN source folders they call. An op missing here is an error.
OPS_SED := s/^ *X(\([A-Z0-9_]*\),.*/\1/p
TFLM_OPS := $(shell sed -n '$(OPS_SED)' include/tml/ops.h)
K_ADD := add add_common
K_AVERAGE_POOL_2D := pooling pooling_common
K_CONV_2D := conv conv_common
K_DEPTHWISE_CONV_2D := depthwise_conv depthwise_conv_common
K_DEQUANTIZE := dequantize dequantize_common
K_FULLY_CONNECTED := fully_connected fully_connected_common
K_MAX_POOL_2D := pooling pooling_common
K_MEAN := reduce reduce_common
K_MUL := mul mul_common
K_QUANTIZE := quantize quantize_common
K_RELU := activations activations_common
K_RESHAPE := reshape reshape_common
K_SOFTMAX := softmax softmax_common
NN_ADD := BasicMathFunctions
NN_AVERAGE_POOL_2D := PoolingFunctions
NN_CONV_2D := ConvolutionFunctions
NN_DEPTHWISE_CONV_2D := ConvolutionFunctions TransposeFunctions
NN_FULLY_CONNECTED := FullyConnectedFunctions
NN_MAX_POOL_2D := PoolingFunctions
NN_MUL := BasicMathFunctions
NN_SOFTMAX := SoftmaxFunctions
$(foreach op,$(TFLM_OPS),$(if $(K_$(op)),,$(error ops.h declares $(op): add its kernel \
  sources to mk/tflm.mk)))

TFLM_KDIR := tensorflow/lite/micro/kernels
TFLM_NN := $(wildcard $(TFLM_TREE)/third_party/cmsis_nn/Source)
TFLM_KERNEL_SRCS := $(foreach s,$(sort kernel_util micro_tensor_utils \
  $(foreach op,$(TFLM_OPS),$(K_$(op)))),$(if $(wildcard \
  $(TFLM_TREE)/$(TFLM_KDIR)/cmsis_nn/$(s).cc),$(TFLM_KDIR)/cmsis_nn/$(s).cc,$(TFLM_KDIR)/$(s).cc))
TFLM_NN_SRCS := $(if $(TFLM_NN),$(patsubst $(TFLM_TREE)/%,%,$(wildcard $(addprefix \
  $(TFLM_NN)/,$(addsuffix /*.c,$(sort NNSupportFunctions \
  $(foreach op,$(TFLM_OPS),$(NN_$(op)))))))))

# The interpreter core (no test helpers, recording allocators, profiler output or signal lib).
# Not TFLM's cortex_m_generic/debug_log.cc: it formats with vsnprintf, which drags newlib's
# stdio and malloc in. The firmware's adapter gives DebugLog its own (no formatting); the probe
# links TFLM's (TFLM_DEBUG_LOG_OBJ) and routes it with RegisterDebugLogCallback.
M := tensorflow/lite/micro
TFLM_CORE_SRCS := \
  tensorflow/compiler/mlir/lite/core/api/error_reporter.cc \
  tensorflow/compiler/mlir/lite/schema/schema_utils.cc \
  tensorflow/lite/core/api/flatbuffer_conversions.cc tensorflow/lite/core/api/tensor_utils.cc \
  tensorflow/lite/core/c/common.cc tensorflow/lite/kernels/kernel_util.cc \
  $(addprefix tensorflow/lite/kernels/internal/,common.cc quantization_util.cc \
    runtime_shape.cc tensor_ctypes.cc portable_tensor_utils.cc tensor_utils.cc \
    reference/portable_tensor_utils.cc) \
  $(addprefix $(M)/arena_allocator/,non_persistent_arena_buffer_allocator.cc \
    persistent_arena_buffer_allocator.cc single_arena_buffer_allocator.cc) \
  $(addprefix $(M)/memory_planner/,greedy_memory_planner.cc linear_memory_planner.cc \
    non_persistent_buffer_planner_shim.cc) \
  $(M)/tflite_bridge/flatbuffer_conversions_bridge.cc $(M)/tflite_bridge/micro_error_reporter.cc \
  $(if $(filter host,$(TFLM_CORE)),$(M)/micro_time.cc,$(M)/cortex_m_generic/micro_time.cc) \
  $(addprefix $(M)/,flatbuffer_utils.cc memory_helpers.cc micro_allocation_info.cc \
    micro_allocator.cc micro_context.cc micro_interpreter.cc micro_interpreter_context.cc \
    micro_interpreter_graph.cc micro_log.cc micro_op_resolver.cc micro_profiler.cc \
    micro_resource_variable.cc micro_utils.cc system_setup.cc)

# Flags of the tree's own Makefile (tools/make + cortex_m_generic_makefile.inc), -Os throughout.
TFLM_ARCH := -mcpu=$(TFLM_MCPU) -mthumb -mfloat-abi=$(TFLM_FLOAT) -mlittle-endian \
  -DTF_LITE_MCU_DEBUG_LOG -fomit-frame-pointer -DCPU_$(TFLM_CORE)=1 -funsigned-char \
  -DCMSIS_DEVICE_ARM_CORTEX_M_XX_HEADER_FILE='"ARMC$(TFLM_CORE).h"' -DARMC$(TFLM_CORE) \
  $(if $(TFLM_NN),-DCMSIS_NN -DARM_NN_ENABLE_F16=0 -DARM_NN_ENABLE_F32=0) \
  $(if $(filter M55 M85,$(TFLM_CORE)),-DARM_MODEL_USE_PMU_COUNTERS)
ifeq ($(TFLM_CORE),host)
  TFLM_ARCH := -O2
  TFLM_TOOL :=
else
  TFLM_ARCH += -Os
  TFLM_TOOL := arm-none-eabi-
endif
TFLM_COMMON := -fno-unwind-tables -fno-asynchronous-unwind-tables -ffunction-sections \
  -fdata-sections -fmessage-length=0 -DTF_LITE_STATIC_MEMORY -DTF_LITE_DISABLE_X86_NEON \
  -DKERNELS_OPTIMIZED_FOR_SPEED -Wno-type-limits -g0 $(TFLM_ARCH)
TFLM_INC := -I$(TFLM_TREE) -I$(TFLM_TREE)/third_party/gemmlowp \
  -I$(TFLM_TREE)/third_party/flatbuffers/include -I$(TFLM_TREE)/third_party/ruy \
  -I$(TFLM_TREE)/third_party/cmsis/Cortex_DFP/Device/ARMC$(TFLM_CORE)/Include \
  -I$(TFLM_TREE)/third_party/cmsis/CMSIS/Core/Include \
  $(if $(TFLM_NN),-I$(TFLM_TREE)/third_party/cmsis -I$(TFLM_TREE)/third_party/cmsis_nn \
    -I$(TFLM_TREE)/third_party/cmsis_nn/Include)
TFLM_CXXFLAGS := -std=c++17 -fno-rtti -fno-exceptions -fno-threadsafe-statics $(TFLM_COMMON) \
  $(TFLM_INC)
TFLM_CFLAGS := -std=c17 $(TFLM_COMMON) $(TFLM_INC)
# For our own C++ against TFLM (adapter, probe): TFLM's headers as system headers, so that our
# -Wall -Wextra -Werror applies to our code only.
TFLM_APP_CXXFLAGS := -std=c++17 -fno-rtti -fno-exceptions -fno-threadsafe-statics \
  $(TFLM_COMMON) $(patsubst -I%,-isystem %,$(TFLM_INC)) -Wall -Wextra -Werror
# The pinned upstream commit, reported in the capabilities as "tflite-micro@<12 hex>".
TFLM_COMMIT := $(shell sed -n 's|^tensorflow/tflite-micro *@ *\([0-9a-f]\{12\}\).*|\1|p' \
  $(TFLM_TREE)/VERSIONS.txt 2>/dev/null)
TFLM_VERSION := tflite-micro@$(or $(TFLM_COMMIT),unknown)

# Two archives, so `make size` can tell the runtime from the kernels of the registered ops.
TFLM_RUNTIME_LIB := $(TFLM_OUT)/libtflm-runtime.a
TFLM_DEBUG_LOG_OBJ := $(TFLM_OUT)/$(M)/cortex_m_generic/debug_log.o
TFLM_KERNELS_LIB := $(TFLM_OUT)/libtflm-kernels.a
TFLM_CORE_OBJS := $(TFLM_CORE_SRCS:%.cc=$(TFLM_OUT)/%.o)
TFLM_KERNEL_OBJS := $(TFLM_KERNEL_SRCS:%.cc=$(TFLM_OUT)/%.o) $(TFLM_NN_SRCS:%.c=$(TFLM_OUT)/%.o)

$(TFLM_OUT)/%.o: $(TFLM_TREE)/%.cc
	@mkdir -p $(dir $@)
	$(TFLM_TOOL)g++ $(TFLM_CXXFLAGS) -c $< -o $@
$(TFLM_OUT)/%.o: $(TFLM_TREE)/%.c
	@mkdir -p $(dir $@)
	$(TFLM_TOOL)gcc $(TFLM_CFLAGS) -c $< -o $@
$(TFLM_RUNTIME_LIB): $(TFLM_CORE_OBJS)
	@test -f $(TFLM_TREE)/VERSIONS.txt || { echo "no TFLM tree at $(TFLM_TREE)" \
	  "(scripts/fetch_tflm.sh makes one; or set TFLM_DIR / TFLM_NN_DIR)"; exit 1; }
	rm -f $@ && $(TFLM_TOOL)ar rcs $@ $^
$(TFLM_KERNELS_LIB): $(TFLM_KERNEL_OBJS)
	rm -f $@ && $(TFLM_TOOL)ar rcs $@ $^
