# Two entry points: `make demo` and `make test`. Both set up .venv on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export NO_ALBUMENTATIONS_UPDATE := 1
# pip < 25.3 applies PIP_CONSTRAINT to build environments; newer pip reads PIP_BUILD_CONSTRAINT.
export PIP_CONSTRAINT := $(CURDIR)/constraints-build.txt
export PIP_BUILD_CONSTRAINT := $(CURDIR)/constraints-build.txt
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: venv demo test dashboard clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt constraints-build.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=23" "setuptools<82" wheel
	$(PY) -m pip install -q -r requirements-dev.txt
	# the optional dm extra (RosettaSciIO + h5py: DM3/DM4 and Velox EMD), so the instrument-format tests run
	$(PY) -m pip install -q rosettasciio h5py
	PIP_BUILD_CONSTRAINT= PIP_CONSTRAINT= $(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py --out demo_out

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q

dashboard: $(STAMP)
	$(PY) scripts/dashboard.py

clean:
	rm -rf demo_out .pytest_cache
