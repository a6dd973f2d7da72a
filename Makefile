# One entry point. `make demo` runs the main job; `make test` runs every test; `make bench` the benchmark
# (issue 4: writes benchmarks/RESULTS.md and benchmarks/throughput.png). Each sets up what it needs.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
JAR := fabric/target/perper-fabric.jar
JAVA_SOURCES := $(shell find fabric/src -name '*.java')
CHROMIUM := /usr/bin/chromium
# The JupyterLab extension is built by `pip install -e .` (hatch-jupyter-builder; needs Node.js >= 20.19).
EXTENSION := extension/package.json extension/yarn.lock $(wildcard extension/src/*.ts extension/style/*)

.PHONY: setup demo test lint bench clean browser

setup: $(VENV)/.installed $(JAR)

$(VENV)/.installed: pyproject.toml $(EXTENSION)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test]"
	touch $@

$(JAR): fabric/pom.xml $(JAVA_SOURCES)
	mvn -q -B -f fabric/pom.xml package -DskipTests

demo: setup
	$(BIN)/perper-lab demo --output output

# The browser test (tests/browser) drives Debian's chromium through Playwright; no browser is downloaded.
# CI runs as root: install the package when it is missing. Elsewhere, without root, the test is skipped.
browser: $(CHROMIUM)

$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ]; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	else \
		echo "$(CHROMIUM) is missing (not root, so not installed): tests/browser will be skipped;" \
		     "install it with: sudo apt-get install chromium"; \
	fi

lint: setup
	$(BIN)/ruff check perper_lab tests benchmarks

test: lint browser
	env -u PERPER_FABRIC $(BIN)/pytest tests notebooks --nbval-lax --nbval-current-env

bench: setup
	$(BIN)/pip install -q -r benchmarks/requirements.txt
	$(BIN)/ruff check benchmarks
	env -u PERPER_FABRIC PYTHONPATH=. $(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) fabric/target output perper_lab/labextension extension/lib extension/node_modules extension/tsconfig.tsbuildinfo
