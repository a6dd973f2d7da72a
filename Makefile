# One entry point. `make demo` runs the main job; `make test` runs every test. Both set up what they need.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
JAR := fabric/target/perper-fabric.jar
JAVA_SOURCES := $(shell find fabric/src -name '*.java')

.PHONY: setup demo test lint clean

setup: $(VENV)/.installed $(JAR)

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test]"
	touch $@

$(JAR): fabric/pom.xml $(JAVA_SOURCES)
	mvn -q -B -f fabric/pom.xml package -DskipTests

demo: setup
	$(BIN)/perper-lab demo --output output

lint: setup
	$(BIN)/ruff check perper_lab tests

test: lint
	env -u PERPER_FABRIC $(BIN)/pytest tests notebooks --nbval-lax --nbval-current-env

clean:
	rm -rf $(VENV) fabric/target output
