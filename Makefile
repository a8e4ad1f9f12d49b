# brokerbench: the two commands a newcomer needs.
#   make demo   install brokers if missing, build, run scenarios/orders.toml (10 s per broker)
#   make test   install brokers (and chromium, cargo-nextest) if missing, fmt + clippy + every test
SHELL := /bin/bash
CARGO ?= cargo
# Debian installs rabbitmq-server and nats-server in /usr/sbin; cargo installs tansu in ~/.cargo/bin.
export PATH := $(PATH):/usr/sbin:/usr/local/sbin:$(HOME)/.cargo/bin

.PHONY: demo test brokers build check

brokers:
	@scripts/install-brokers

build:
	$(CARGO) build --release --locked

demo: brokers build
	./target/release/brokerbench env check
	./target/release/brokerbench run scenarios/orders.toml --duration 10s

check:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

# cargo-nextest runs the tests two at a time across files (.config/nextest.toml
# says which run alone); it runs no doctests, so cargo test runs those.
test: check
	@scripts/install-brokers --test-tools
	$(CARGO) nextest run --locked
	$(CARGO) test --locked --doc
