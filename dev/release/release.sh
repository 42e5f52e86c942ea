#!/usr/bin/env bash
# `make release`: checks that this commit may be released, builds the release binary for
# glibc 2.17 with cargo-zigbuild, and packages it into dist/ (dev/release/package.py).
#
#   RELEASE_CHECK_ONLY=1  stop after the checks (what the tests run)
#   SNAPSHOT=1            accept a CHANGELOG heading "## VERSION (unreleased)" (a trial
#                         build; a real release dates the heading first)
#   GPG_KEY=KEYID         sign the SHA256SUMS file (skipped with a message otherwise)
#   DIST=dir              output directory (default dist)
set -euo pipefail
cd "$(dirname "$0")/../.."

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
[ -n "$version" ] || { echo "make release: no version in Cargo.toml" >&2; exit 1; }

# 1. The artifacts must be exactly a commit: no change, staged or not, no untracked file.
git rev-parse --git-dir >/dev/null 2>&1 || { echo "make release: refused: not a git work tree (a release is made from a commit)" >&2; exit 1; }
status=$(git status --porcelain --untracked-files=normal)
if [ -n "$status" ]; then
    echo "make release: refused: the work tree is dirty (commit or stash first):" >&2
    git status --short >&2
    exit 1
fi

# 2. The version must have its CHANGELOG.md entry, dated: a heading exactly
#    "## VERSION (YYYY-MM-DD)". "## VERSION (unreleased)" is the entry still being
#    written and counts only for a SNAPSHOT=1 trial build. Compared as text, not as a
#    pattern (a version may hold "+").
heading=$(awk -v v="$version" '$1 == "##" && $2 == v { print; exit }' CHANGELOG.md)
if [ -z "$heading" ]; then
    echo "make release: refused: CHANGELOG.md has no entry for $version (a heading \"## $version (YYYY-MM-DD)\")" >&2
    exit 1
fi
if [ "$heading" = "## $version (unreleased)" ] && [ "${SNAPSHOT:-0}" = 1 ]; then
    echo "make release: SNAPSHOT=1: building $version from an unreleased CHANGELOG entry" >&2
elif ! printf '%s\n' "$heading" | grep -Eq '^## [^ ]+ \([0-9]{4}-[0-9]{2}-[0-9]{2}\)$'; then
    echo "make release: refused: CHANGELOG.md's entry for $version is \"$heading\"; date it (\"## $version (YYYY-MM-DD)\") to release, or SNAPSHOT=1 for a trial build of an \"(unreleased)\" entry" >&2
    exit 1
fi
echo "make release: checks passed for $version ($(git rev-parse --short HEAD))" >&2
if [ "${RELEASE_CHECK_ONLY:-0}" = 1 ]; then exit 0; fi

# 3. The tools: cargo-zigbuild links against glibc 2.17's symbols with zig's linker, so
#    the binary runs on any Linux with glibc >= 2.17 (this machine's own would need
#    2.34). Both come from PyPI into a virtualenv under dev/.state.
command -v cargo >/dev/null || { echo "make release: cargo is not installed (Rust stable is needed)" >&2; exit 1; }
venv=dev/.state/release-venv
if [ ! -x "$venv/bin/cargo-zigbuild" ] || ! "$venv/bin/python" -c 'import ziglang' 2>/dev/null; then
    mkdir -p dev/.state
    rm -rf "$venv"
    python3 -m venv "$venv" || { echo "make release: python3 -m venv failed (Debian: apt install python3-venv)" >&2; exit 1; }
    "$venv/bin/pip" install --quiet cargo-zigbuild==0.24.0 ziglang==0.17.0 || {
        echo "make release: pip could not install cargo-zigbuild and ziglang from PyPI (network, or PIP_INDEX_URL for a local index)" >&2
        rm -rf "$venv"; exit 1; }
fi
export PATH="$PWD/$venv/bin:$PATH"

target=x86_64-unknown-linux-gnu
target_dir=${CARGO_TARGET_DIR:-target}
nice -n 10 cargo zigbuild --locked --release --target "$target.2.17"
bin="$target_dir/$target/release/terraform-provider-circleci"
echo "make release: $bin: $(stat -c %s "$bin") bytes"
# The point of the zig build: refuse a binary that needs a glibc newer than 2.17.
command -v objdump >/dev/null || { echo "make release: objdump (binutils) is needed to check the glibc floor" >&2; exit 1; }
floor=$(objdump -T "$bin" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1)
echo "make release: highest glibc symbol version needed: $floor"
if [ "$(printf '%s\n%s\n' "$floor" GLIBC_2.17 | sort -V | tail -1)" != GLIBC_2.17 ]; then
    echo "make release: refused: $bin needs $floor, above GLIBC_2.17" >&2
    exit 1
fi

python3 dev/release/package.py --binary "$bin" --out "${DIST:-dist}"
