# modelfleet — developer entry points. `make test` is what CI runs (.ci/run).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Tests run in parallel (pytest-xdist); the short --basetemp keeps gpg's socket paths under the 108-byte limit.
# It holds about 1 GB after a run: removed when the tests pass, kept (and named) when they fail.
JOBS   ?= 2
STAMP  := $(VENV)/.installed

.PHONY: test demo bench lint docs venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml hatch_build.py $(wildcard reconciler/*/*/*.c)
	@echo "make: installing modelfleet and its dependencies into $(VENV) (once, and after pyproject.toml changes: a minute or two) …"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

# System tools first (scripts/install-deps.sh: apt-get only when one is missing; SKIP_SYSTEM_DEPS=1 skips it),
# then the venv. The tests commit with the identity tests/conftest.py puts in their environment: no global git
# configuration is needed, and none is written.
test:
	scripts/install-deps.sh test
	@$(MAKE) --no-print-directory venv
	@base=$$(mktemp -d /tmp/mft.XXXXXX) && rc=0 && \
	  $(BIN)/python -m pytest -q -n $(JOBS) --basetemp=$$base tests || rc=$$?; \
	  if [ $$rc = 0 ]; then rm -rf $$base; else echo "make: the tests' files are kept in $$base" >&2; fi; exit $$rc

demo:
	scripts/install-deps.sh demo
	@$(MAKE) --no-print-directory venv
	$(BIN)/python -m reconciler.devkit.demo

# the benchmarks' own tools (py-spy, and the HTTP stacks bench_serving compares ours with): the bench extra.
$(VENV)/.installed-bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[test,bench]'
	touch $@

bench: $(VENV)/.installed-bench
	@for b in bench/bench_*.py; do echo "== $$b" >&2; $(BIN)/python $$b || exit 1; done

lint: $(STAMP)
	$(BIN)/ruff check reconciler tests bench hatch_build.py
	$(BIN)/lint-imports

docs: $(STAMP)
	$(BIN)/modelfleet docs generate --output docs/manifests.md
	$(BIN)/modelfleet docs cli --output docs/cli.md

clean:
	rm -rf $(VENV) build dist *.egg-info
