# The two commands a newcomer needs (see README.md).

.PHONY: demo test

# Build the example app with kiln on the default store (as root; needs network for Debian and PyPI).
demo:
	examples/demo.sh

# What CI runs.
test:
	cargo test --workspace --locked
