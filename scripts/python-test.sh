#!/usr/bin/env bash
# CI: the Python package (python/) and its Ray Data layer. Creates the
# git-ignored virtualenv .venv-py (pinned packages from PyPI; a second run
# only checks a stamp), builds and installs the package into it with
# `maturin develop` in the dev profile and the same target/ as `cargo test`,
# then runs pytest
# on python/tests. Prints how long each step took.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
venv=$root/.venv-py
python=${PYTHON:-python3}
# Pinned: what the tests were run with.
packages=(
    maturin==1.16.0
    numpy==2.4.6
    pyarrow==26.0.1
    pytest==9.2.0
    "ray[data]==2.60.0"
)
t0=$SECONDS
stamp="$venv/.embedtune-stamp"
if [[ ! -f $stamp || "$(cat "$stamp")" != "${packages[*]}" ]]; then
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-cache-dir "${packages[@]}"
    echo "${packages[*]}" >"$stamp"
fi
t1=$SECONDS
echo "python-test: venv took $((t1 - t0)) s"

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
# The Python build shares the tests' compiled dependencies only while both
# resolve the same features for them (see [build-dependencies] in
# Cargo.toml); say so when a dependency change breaks that.
features() {
    cargo tree --quiet --locked --prefix none -f '{p} {f}' "$@" | sed 's/ (\*)$//' | sort -u
}
drift=$(comm -3 <(features -p embedtune-python -e normal,build) \
    <(features -p embedtune -e normal,build,dev) | awk '{print $1}' | sort | uniq -d | paste -sd' ')
if [[ -n $drift ]]; then
    echo "python-test: the Python build resolves other features than cargo test for: $drift" >&2
    echo "python-test: it compiles them and what depends on them again (see Cargo.toml)" >&2
fi
# The binary the tests compare against, as `cargo test` builds it (nothing
# to do right after `cargo test`; `cargo build` would resolve other features
# and compile the dependencies again).
cargo test --locked --no-run --quiet
VIRTUAL_ENV=$venv "$venv/bin/maturin" develop --locked --quiet -m python/Cargo.toml
t2=$SECONDS
echo "python-test: build took $((t2 - t1)) s"

export EMBEDTUNE_BIN=$CARGO_TARGET_DIR/debug/embedtune
"$venv/bin/python" -m pytest -q python/tests "$@"
echo "python-test: pytest took $((SECONDS - t2)) s"
