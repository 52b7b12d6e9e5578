#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
#
# Make the pinned TFLite Micro source trees the firmware builds (firmware/mk/tflm.mk), on a
# machine without ../shared/third_party/tflm/: download the upstream archives at the commits
# ../shared/third_party/tflm/*/VERSIONS.txt name, prepare them as TFLM's download scripts do,
# run TFLM's own create_tflm_tree.py, and check every generated file against the digests below.
#
#   scripts/fetch_tflm.sh [DEST]     (default DEST: ../shared/third_party/tflm beside the repo)
#   make -C firmware TFLM_DIR=DEST/tflm-cortex-m-ref TFLM_NN_DIR=DEST/tflm-cortex-m ...
#
# Needs curl, tar, patch, git (for `git apply`), python3 with numpy and Pillow (the TFLM Makefile
# imports them while the generator parses it). Not runnable where GitHub is unreachable (as on
# the machine this was written on): it was checked against VERSIONS.txt's commands, not run.
#
# Integrity: the archives' own SHA-256 are not pinned (GitHub does not guarantee byte-stable
# tarballs); instead the generated tree is checked file by file: TREE_DIGEST is the SHA-256 of
# the tree's `sha256sum` list (paths sorted, LC_ALL=C, without ./Makefile, ./VERSIONS.txt,
# ./SHA256SUMS and ./third_party/PATCHES/), derived from ../shared's SHA256SUMS. The trees
# there also carry a build Makefile of their own; the firmware does not use it.
set -euo pipefail

DEST=${1:-$(cd "$(dirname "$0")/../.." && pwd)/shared/third_party/tflm}
PYTHON=${PYTHON:-python3}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

TFLM=90b983c2b3f1480642e040bbd2ddb37b998f3424
declare -A TREE_DIGEST=(
  [tflm-cortex-m-ref]=5e5ae598607f93e5651f2174212350aab6dc318df055d9d2e6c8870ce45a28cc
  [tflm-cortex-m]=78dd54be11491de9ac74d0698ed91b6f3d8baf0e1a8974e52254096e2e71e0c1
)
declare -A OPTIONS=(
  [tflm-cortex-m-ref]="TARGET=cortex_m_generic TARGET_ARCH=cortex-m3 TARGET_TOOLCHAIN_ROOT=/usr/bin/"
  [tflm-cortex-m]="TARGET=cortex_m_generic TARGET_ARCH=cortex-m3 OPTIMIZED_KERNEL_DIR=cmsis_nn TARGET_TOOLCHAIN_ROOT=/usr/bin/"
)

fetch() { # owner/repo commit-or-tag dest
  mkdir -p "$3"
  curl -fsSL "https://codeload.github.com/$1/tar.gz/$2" | tar -xz --strip-components=1 -C "$3"
  find "$3" -type f -name '*BUILD' -delete
}

T=$WORK/tflite-micro
D=$T/tensorflow/lite/micro/tools/make/downloads
fetch tensorflow/tflite-micro "$TFLM" "$T"
fetch google/gemmlowp 719139ce755a0f31cbf1c37f7f98adcc7fc9f425 "$D/gemmlowp"
fetch google/ruy d37128311b445e758136b8602d1bbd2a755e115d "$D/ruy"
fetch google/flatbuffers v25.9.23 "$D/flatbuffers"
patch -p1 -d "$D/flatbuffers" < "$T/tensorflow/lite/micro/tools/make/flatbuffers.patch"
fetch mborgerding/kissfft v130 "$D/kissfft"
patch -p1 -d "$D/kissfft" < "$T/third_party/kissfft/kissfft.patch"
fetch google/pigweed 47268dff45019863e20438ca3746c6c62df6ef09 "$D/pigweed"
(cd "$D/pigweed" && git apply --ignore-space-change --ignore-whitespace ../../pigweed.patch)
fetch ARM-software/CMSIS_6 5782d6f8057906d360f4b95ec08a2354afe5c9b9 "$D/cmsis"
fetch ARM-software/Cortex_DFP c2c70a97a20fb355815e2ead3d4a40e35a4a3cdf "$D/cmsis/Cortex_DFP"
fetch ARM-software/CMSIS-NN 4ab83cc3cc98fb85ed6dafb55e8ca02f1628dcae "$D/cmsis_nn"

for tree in "${!TREE_DIGEST[@]}"; do
  out=$WORK/trees/$tree
  (cd "$T" && "$PYTHON" tensorflow/lite/micro/tools/project_generation/create_tflm_tree.py \
    --makefile_options="${OPTIONS[$tree]}" "$out")
  # The additions VERSIONS.txt lists (step 4).
  cp "$D/ruy/LICENSE" "$out/third_party/ruy/LICENSE"
  mkdir -p "$out/third_party/cmsis/CMSIS/Core" "$out/third_party/cmsis/Cortex_DFP"
  cp -r "$D/cmsis/CMSIS/Core/Include" "$out/third_party/cmsis/CMSIS/Core/"
  cp "$D/cmsis/Cortex_DFP/LICENSE" "$out/third_party/cmsis/Cortex_DFP/"
  for core in ARMCM0 ARMCM0plus ARMCM3 ARMCM4 ARMCM7 ARMCM33 ARMCM55 ARMCM85; do
    mkdir -p "$out/third_party/cmsis/Cortex_DFP/Device/$core"
    cp -r "$D/cmsis/Cortex_DFP/Device/$core/Include" "$out/third_party/cmsis/Cortex_DFP/Device/$core/"
  done
  got=$(cd "$out" && find . -type f | LC_ALL=C sort | xargs -d '\n' sha256sum \
    | grep -v '  \./Makefile$' | grep -v '  \./third_party/PATCHES/' | sha256sum | cut -c1-64)
  if [ "$got" != "${TREE_DIGEST[$tree]}" ]; then
    echo "$tree: generated tree digest $got, expected ${TREE_DIGEST[$tree]}" >&2
    exit 1
  fi
  printf 'TFLM standalone source tree: %s\n(fetched by scripts/fetch_tflm.sh)\n%s\n' "$tree" \
    "tensorflow/tflite-micro  @ $TFLM" > "$out/VERSIONS.txt"
  mkdir -p "$DEST" && rm -rf "${DEST:?}/$tree" && mv "$out" "$DEST/$tree"
  echo "$DEST/$tree: ok"
done
