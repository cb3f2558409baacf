# What the GPU image has and what a device call carries beside it; sourced by gpu_protocol.sh and gpu_checks.sh.
# IMAGE: on the image (../shared/docs/STACK-NOTES.md, "Seen on the H200"), with what they require.
# WHEELS: what the runs import beyond it, carried as wheels (gpu_protocol.sh --pack DIR puts them in DIR/whl) and
# installed there without the network or their requirements (the image had those). tests/gpu_image.py runs the dry
# runs with nothing else importable.
IMAGE="torch transformers accelerate sentence-transformers peft jax"
WHEELS="bm25s==0.3.16 PyStemmer==3.1.0 evaluate==0.4.6 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
        pytrec-eval-terrier==0.5.11"

install_wheels() {  # WHEEL_DIR TARGET: the carried wheels into TARGET (then put TARGET first on PYTHONPATH)
  ls "$1"/*.whl > /dev/null 2>&1 || { echo "no $1/*.whl: make the pack (scripts/gpu_protocol.sh --pack DIR)" >&2; return 1; }
  "${PY:-python3}" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$2" "$1"/*.whl
}
