# The two commands the README names: `make run` (a bundle on embedded defaults) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install run test clean docker-test

install: $(VENV)/.installed

# torch first and pinned: it is the CPU build on this machine kind's disk; an unpinned torch
# would pull a multi-GB CUDA build. constraints.txt holds the exact set CI tests.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

run: install
	$(BIN)/genbundle run $(ARGS)

# pytest exits 5 when it collects no tests: that is not a failure here.
test: install
	$(BIN)/python -m pytest -q $(ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; exit 0; fi; exit $$rc

# The image and the compose stack, end to end (docker/smoke.sh): needs a Docker engine, no GPU,
# about 4 GB of disk and 5-8 minutes. Extra build arguments: DOCKER_BUILD_ARGS='...'.
docker-test:
	bash docker/smoke.sh

clean:
	rm -rf $(VENV) bundles .pytest_cache
