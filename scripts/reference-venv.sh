# Sourced by the benchmark scripts: install_reference VENV TORCH-SPEC MARKER creates VENV (once,
# 3-5 GB) with TORCH-SPEC and the Hugging Face stack the references import, and leaves MARKER
# in it when done, so an interrupted install is taken up again next time.
install_reference() {
  if [ ! -f "$1/$3" ]; then
    echo "installing a PyTorch reference ($2) into $1 (3-5 GB, once)" >&2
    [ -x "$1/bin/python" ] || python3 -m venv "$1"
    "$1/bin/python" -m pip install --quiet --disable-pip-version-check "$2" >&2
    "$1/bin/python" -m pip install --quiet --disable-pip-version-check transformers accelerate gguf numpy pyarrow >&2
    touch "$1/$3"
  fi
}
