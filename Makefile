# elfin: `make demo` runs the main job, `make test` the test suite.
# Every target installs what it lacks first (scripts/setup.sh, quick when done).

ELFIN_ENV ?= $(shell if [ -w /opt ] || [ "$$(id -u)" = 0 ]; then echo /opt/elfin/venv; else echo $$HOME/.cache/elfin/venv; fi)
export ELFIN_ENV
# tch builds against the libtorch inside the torch wheel of that environment.
export PATH := $(ELFIN_ENV)/bin:$(HOME)/.cargo/bin:$(PATH)
export LIBTORCH_USE_PYTORCH := 1
# The tests start real `mpirun` jobs; as root Open MPI refuses without these.
export OMPI_ALLOW_RUN_AS_ROOT := 1
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM := 1
# Keep a test's ranks from fighting over the two cores for intra-op threads.
test: export OMP_NUM_THREADS := 1

CARGO ?= cargo

.PHONY: setup build test bench demo gpu-bundle clean

setup:
	@bash scripts/setup.sh

build: setup
	$(CARGO) build --release --workspace

test: build
	$(CARGO) test --release --workspace

bench: build
	$(CARGO) bench --workspace

demo: build
	@bash scripts/demo.sh

gpu-bundle: build
	@bash scripts/gpu-bundle.sh

clean:
	$(CARGO) clean
