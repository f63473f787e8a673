#!/usr/bin/env bash
# The Python package's tests: builds `mirante` (bindings/python, maturin, the workspace's dev
# profile, so the Rust test build's dependencies are reused) into the virtual environment
# target/py-venv, then runs ruff and pytest (no tests collected is a failure: pytest's status
# 5). Part of the README's test command, after `cargo test --workspace`, whose `mirante` binary
# the tests compare results with.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/py-venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q --disable-pip-version-check -r bindings/python/requirements-test.txt
VIRTUAL_ENV="$PWD/$venv" PATH="$PWD/$venv/bin:$PATH" maturin develop -q -m bindings/python/Cargo.toml
"$venv/bin/ruff" check bindings/python examples/python
"$venv/bin/ruff" format --check bindings/python examples/python
"$venv/bin/pytest" -q bindings/python/tests
