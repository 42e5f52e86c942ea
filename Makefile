# The commands a person types. README.md explains each.
SHELL := /bin/bash
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
# Where `make install` puts the provider: a local filesystem mirror, laid out as
# HOSTNAME/NAMESPACE/TYPE/VERSION/OS_ARCH. Set PLUGIN_DIR=~/.terraform.d/plugins to
# install into Terraform's implicit mirror instead.
PLUGIN_DIR ?= $(CURDIR)/dev/.state/plugins
INSTALL_DIR := $(PLUGIN_DIR)/registry.terraform.io/circleci/circleci/$(VERSION)/linux_amd64

.PHONY: build install release package demo test bench faults services-up services-down docs docs-check lint clean

build:
	cargo build --locked

install: build
	mkdir -p "$(INSTALL_DIR)"
	cp target/debug/terraform-provider-circleci "$(INSTALL_DIR)/terraform-provider-circleci_v$(VERSION)"
	@echo "installed into $(INSTALL_DIR)"

# Release artifacts in $(DIST)/ (default dist/): the linux_amd64 zip built for glibc
# >= 2.17 (cargo-zigbuild), SHA256SUMS (signed when GPG_KEY=KEYID is given), the
# manifest, a filesystem mirror and a network-mirror tree. Refuses a dirty tree and a
# version without a dated CHANGELOG.md entry (SNAPSHOT=1 accepts "(unreleased)").
DIST ?= dist
release:
	DIST="$(DIST)" dev/release/release.sh

# The packaging step alone, for a binary already built (no default: `make release`'s
# own is target/x86_64-unknown-linux-gnu/release/, a plain release build's needs 2.34):
# make package BIN=target/debug/terraform-provider-circleci
package:
	@[ -n "$(BIN)" ] || { echo "make package: say which binary: make package BIN=path/to/terraform-provider-circleci" >&2; exit 1; }
	python3 dev/release/package.py --binary "$(BIN)" --out "$(DIST)"

# Starts the real servers, builds and installs the provider, applies examples/complete
# and shows the files it wrote.
demo:
	dev/demo.sh

# Every test, against real servers (started here, stopped at the end).
test:
	dev/test.sh

# The fault suite alone, with its table (also part of `make test`).
faults:
	dev/faults.sh

# Timing and memory figures (release build).
bench:
	dev/bench.sh

services-up:
	dev/services/up.sh

services-down:
	dev/services/down.sh

# Regenerates docs/ from the schema and examples/.
docs:
	UPDATE_DOCS=1 cargo test --locked --test it docs::

# Fails when docs/ is stale (part of `make test`).
docs-check:
	cargo test --locked --test it docs::

lint:
	cargo fmt --all -- --check
	cargo clippy --locked --workspace --all-targets -- -D warnings
	terraform fmt -check -recursive examples

clean:
	dev/services/down.sh
	rm -rf dev/.state
