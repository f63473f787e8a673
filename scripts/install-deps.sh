#!/usr/bin/env bash
# Installs the system packages Mirante's build needs on Debian/Ubuntu: cmake (to build the
# vendored FAISS) and OpenBLAS/LAPACK (which FAISS links). With --with-browser, also Chromium,
# which the tests use to check HTML reports in a real headless browser. Does nothing when the
# packages are present.
set -euo pipefail
missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
dpkg -s libopenblas-dev >/dev/null 2>&1 || missing+=(libopenblas-dev)
command -v c++ >/dev/null 2>&1 || missing+=(g++)
if [ "${1:-}" = "--with-browser" ]; then
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi
