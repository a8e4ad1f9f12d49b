# brokerbench: the two commands a newcomer needs.
#   make demo   install brokers if missing, build, run scenarios/orders.toml (10 s per broker)
#   make test   install brokers (and chromium, cargo-nextest) if missing, fmt + clippy + every test
SHELL := /bin/bash
CARGO ?= cargo
# scripts/install-brokers puts Kafka's launchers and nats-server in
# $(BROKERBENCH_TOOLS)/bin, first so that they win over any older system
# nats-server; Debian installs rabbitmq-server in /usr/sbin.
export BROKERBENCH_TOOLS ?= $(HOME)/.local/share/brokerbench
export PATH := $(BROKERBENCH_TOOLS)/bin:$(PATH):/usr/sbin:/usr/local/sbin:$(HOME)/.cargo/bin
# A build from scratch, as on a fresh clone, is faster without incremental
# compilation: brokerbench's own library took 84 s against 134 s with it
# (2026-12-07). Set CARGO_INCREMENTAL=1 when rebuilding often.
export CARGO_INCREMENTAL ?= 0

.PHONY: demo test brokers build check tools

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

# What the tests need, installed while clippy checks: on a fresh machine
# much of it is downloads. (Building cargo-nextest beside clippy gained
# nothing measurable over one after the other on two cores: 305-390 s
# together against about 330 s, 2026-12-07.)
tools:
	@scripts/install-brokers --test-tools

# cargo-nextest runs the tests two at a time across files (.config/nextest.toml
# says which run alone); it runs no doctests, so cargo test runs those.
test:
	@scripts/install-brokers --build-deps
	@$(MAKE) --no-print-directory -j2 check tools
	$(CARGO) nextest run --locked
	$(CARGO) test --locked --doc
