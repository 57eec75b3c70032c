# Sourced by the scripts in this folder: where saescope keeps what it installs and builds.
# Everything lives outside the clone, so a second run (or a second clone) reuses it.
SAESCOPE_CACHE="${SAESCOPE_CACHE:-$HOME/.cache/saescope}"
SAESCOPE_TORCH_VERSION="2.11.0"
SAESCOPE_TORCH_DIR="$SAESCOPE_CACHE/libtorch-$SAESCOPE_TORCH_VERSION"
export SAESCOPE_CACHE
export LIBTORCH="$SAESCOPE_TORCH_DIR/torch"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$SAESCOPE_CACHE/target}"
