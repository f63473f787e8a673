#!/usr/bin/env bash
# Concurrency stress run (docs/reliability.md): one writer process appending, deleting,
# compacting, re-indexing and vacuuming, three reader processes and two reader threads in the
# writer's process, each checking every snapshot it reads, for SECONDS (default 300). The test
# suite runs the same test for 6 seconds.
#
# Usage: scripts/stress.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
export MIRANTE_STRESS_SECS="${1:-300}"
cargo test -p mirante-tests --test concurrency -- --nocapture
