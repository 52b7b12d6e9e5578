#!/usr/bin/env bash
# Run every test: installs what is missing, then the suite on SQLite, then the database
# tests again on a real PostgreSQL started on a loopback port. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
FLEET_EXTRAS=test,convert bash scripts/bootstrap.sh

export CI=${CI:-}
# Firmware builds (TFLM for each board) use every core; make runs them from several tests.
export MAKEFLAGS="${MAKEFLAGS:--j$(nproc)}"
# In CI, admission must measure Cortex-M arenas in QEMU, never fall back to an estimate.
if [ "${CI,,}" = true ]; then export ADMISSION_REQUIRE_MEASURED=${ADMISSION_REQUIRE_MEASURED:-1}; fi
run_dir=$(mktemp -d /tmp/fleet-test.XXXXXX)
chmod 755 "$run_dir"  # the postgres user must reach its data folder
pg_port=${FLEET_TEST_PG_PORT:-55432}
cleanup() { bash scripts/postgres.sh stop "$run_dir/pg" "$pg_port"; rm -rf "$run_dir"; }
trap cleanup EXIT

mkdir -p test-artifacts
echo "== import contracts (docs/ARCHITECTURE.md)"
.venv/bin/lint-imports --no-cache

# Admission measures Cortex-M arenas with the firmware's probe images in QEMU
# (settings.ADMISSION_PROBE_DIR, default firmware/build/probe); in CI it must not estimate.
echo "== firmware: probe images and instruction counter for admission"
make -C firmware probes insn-plugin >/dev/null

# libFuzzer harnesses (ASan, UBSan) of every C decoder of untrusted input, FUZZ_SECONDS each,
# two at a time; a crash fails the run and names its input (firmware/fuzz/README.md).
echo "== fuzzing C decoders"
make -s -C firmware fuzz FUZZ_SECONDS="${FUZZ_SECONDS:-12}" FUZZ_JOBS=2

# The shared throttle cache table (fleet_throttle_cache) is made with each test database:
# Django's test setup runs createcachetable, and migrate does too (fleet.core.apps).
echo "== tests on SQLite"
.venv/bin/python -m pytest "$@"

echo "== database tests on PostgreSQL"
pg_url=$(bash scripts/postgres.sh start "$run_dir/pg" "$pg_port")
DATABASE_URL=$pg_url FLEET_EXPECT_DB=postgresql .venv/bin/python -m pytest -m "not browser" \
  tests/fleet "$@"
