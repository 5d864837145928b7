# The two commands: `make demo` and `make test`. Both create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
STORE ?= ./galaxy-data
DEMO_N ?= 600
DEMO_EPOCHS ?= 12
DEMO_MIN_VAL_F1 ?= 0.5
DEMO_REPORT_FLAGS ?=

.PHONY: install demo serve test lint format clean

install: $(STAMP)

# torch first, from the pinned wheels; then the project and its dev tools.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/galaxy-pipeline synth --store $(STORE) --n $(DEMO_N) --incoming-batches 2 --batch-size 100 --seed 7
	$(BIN)/galaxy-pipeline labels summarize $(STORE)/raw/synthetic/labels.csv
	$(BIN)/galaxy-pipeline ingest --images $(STORE)/raw/synthetic/images --labels $(STORE)/raw/synthetic/labels.csv \
		--store $(STORE) --name synthetic --samples-per-shard 200
	$(BIN)/galaxy-pipeline models list
	$(BIN)/galaxy-pipeline train --store $(STORE) --preset smoke --epochs $(DEMO_EPOCHS) --set min_val_f1=$(DEMO_MIN_VAL_F1) --promote
	$(BIN)/galaxy-pipeline classify --store $(STORE) --model cs_resnet_tiny --embeddings
	$(BIN)/galaxy-pipeline catalog export --store $(STORE) --model cs_resnet_tiny --format csv --out $(STORE)/exports/demo.csv
	$(BIN)/galaxy-pipeline catalog export --store $(STORE) --model cs_resnet_tiny --format parquet --out $(STORE)/exports/demo.parquet
	$(BIN)/galaxy-pipeline catalog export --store $(STORE) --model cs_resnet_tiny --format fits --out $(STORE)/exports/demo.fits
	$(BIN)/galaxy-pipeline report --store $(STORE) --model cs_resnet_tiny --out $(STORE)/exports/report.html $(DEMO_REPORT_FLAGS)
	@echo
	@echo "Synthetic survey images:  $(STORE)/raw/synthetic/images/"
	@echo "Vote table (Kaggle fmt):  $(STORE)/raw/synthetic/labels.csv"
	@echo "Dataset (shards+manifest): $(STORE)/datasets/synthetic/"
	@echo "Trained models (cards):   $(STORE)/models/"
	@echo "New survey batches:       $(STORE)/incoming/"
	@echo "Catalogs (Parquet parts): $(STORE)/catalogs/"
	@echo "Exports and their figure: $(STORE)/exports/demo.csv, demo.parquet, demo.fits, demo.png"
	@echo "Catalog report (HTML):    $(STORE)/exports/report.html (open it in a browser)"
	@echo "Similar galaxies:         $(BIN)/galaxy-pipeline similar --store $(STORE) --model cs_resnet_tiny --galaxy ID"

# A local Prefect server, the cpu and gpu pools, every deployment, and a worker on the cpu pool.
# The server's database: DB=sqlite, or DB=postgres for a PostgreSQL cluster of its own (infra/serve.sh).
DB ?= sqlite
serve: $(STAMP)
	PREFECT_DB=$(DB) infra/serve.sh

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The suite runs in three pytest processes. In one process of all ~450 tests, the process itself
# segfaulted in the last training tests (3 of 3 runs on 2026-11-29; gdb: corrupted interpreter state
# in plain Python calls, no thread of ours running); each part below, with the training tests, passes.
# The cause is not found yet; see the closing note of issue 11.
TEST_FIRST := tests/catalogs tests/data tests/inference
TEST_E2E := tests/e2e
# The three parts (those two and the rest) and mypy run at once: much of the suite waits on servers,
# subprocesses and process groups (Prefect, PostgreSQL, moto, torchrun, Chromium), the end-to-end
# tests most of all, leaving cores idle in any part alone. The reports of the first two parts and
# mypy's follow the rest's; any of the four failing fails the target.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	first=$$(mktemp); e2e=$$(mktemp); types=$$(mktemp); \
	$(BIN)/mypy >"$$types" 2>&1 & typing=$$!; \
	$(BIN)/python -m pytest -p no:cacheprovider $(TEST_FIRST) >"$$first" 2>&1 & part=$$!; \
	$(BIN)/python -m pytest -p no:cacheprovider $(TEST_E2E) >"$$e2e" 2>&1 & ends=$$!; \
	$(BIN)/python -m pytest tests $(addprefix --ignore=,$(TEST_FIRST) $(TEST_E2E)); rest=$$?; \
	wait $$part; one=$$?; wait $$ends; two=$$?; wait $$typing; typed=$$?; \
	echo "== $(TEST_FIRST) =="; cat "$$first"; echo "== $(TEST_E2E) =="; cat "$$e2e"; \
	echo "== mypy =="; cat "$$types"; rm -f "$$first" "$$e2e" "$$types"; \
	test $$rest -eq 0 && test $$one -eq 0 && test $$two -eq 0 && test $$typed -eq 0

clean:
	rm -rf $(VENV) $(STORE) .pytest_cache .ruff_cache .mypy_cache
