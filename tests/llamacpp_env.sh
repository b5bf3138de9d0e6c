#!/usr/bin/env bash
# Make .venv-llamacpp: llama-cpp-python on a CPU build of llama.cpp, for
# tests/test_export_gguf_llamacpp.py (which runs tests/llamacpp_probe.py with its python).
# From the repository root: `bash tests/llamacpp_env.sh`; tests/setup_and_run.sh runs it.
#
# llama-cpp-python is published as a source archive only. Its own build compiles llama.cpp
# with the `common` library and the multimodal `mtmd` one (neither of which its Python API
# needs: 16 CPU minutes on the 2-core CI machine); this compiles only `libllama` and the
# ggml libraries it loads, from the llama.cpp sources inside the archive (the version it
# binds), for this machine's CPU only, without OpenMP (ggml's own thread pool), without
# the llamafile matrix kernels and the Q4_0 repacking, at -O1 (the tests' models are tiny):
# 4.5 CPU minutes (6.5 at -O3 with those kernels). Then it installs the Python package
# without a build and puts the libraries where it loads them from.
# An environment that already imports the pinned version is kept.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=0.3.36
ENV=.venv-llamacpp
BUILD=.llamacpp-build

if [ -x "$ENV/bin/python" ] && "$ENV/bin/python" -c "import sys, llama_cpp; sys.exit(llama_cpp.__version__ != '$VERSION')" 2>/dev/null; then
    echo "$ENV has llama-cpp-python $VERSION"
    exit 0
fi
rm -rf "$ENV" "$BUILD"
python3 -m venv "$ENV"
"$ENV/bin/pip" download --no-deps --no-binary :all: -d "$BUILD" "llama-cpp-python==$VERSION"
tar -xzf "$BUILD/llama_cpp_python-$VERSION.tar.gz" -C "$BUILD"
SRC="$BUILD/llama_cpp_python-$VERSION"

generator=()
if command -v ninja >/dev/null; then generator=(-G Ninja); fi
cmake -S "$SRC/vendor/llama.cpp" -B "$BUILD/cmake" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON \
    -DLLAMA_BUILD_COMMON=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_OPENSSL=OFF \
    -DGGML_NATIVE=ON -DGGML_OPENMP=OFF -DGGML_LLAMAFILE=OFF -DGGML_CPU_REPACK=OFF \
    '-DCMAKE_C_FLAGS_RELEASE=-O1 -DNDEBUG' '-DCMAKE_CXX_FLAGS_RELEASE=-O1 -DNDEBUG' \
    -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON '-DCMAKE_INSTALL_RPATH=$ORIGIN'
time cmake --build "$BUILD/cmake" --target llama -j "$(nproc)"

CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" "$ENV/bin/pip" install "$SRC"
lib="$("$ENV/bin/python" -c 'import importlib.util, os; print(os.path.dirname(importlib.util.find_spec("llama_cpp").origin))')/lib"
mkdir -p "$lib"
cp -P "$BUILD"/cmake/bin/lib*.so* "$lib/"
rm -rf "$BUILD"
"$ENV/bin/python" -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__, llama_cpp.llama_print_system_info().decode())"
