#!/usr/bin/env bash
# Builds the library and generates its Kotlin, Swift and Python bindings in one go.
#   ffi/generate-bindings.sh            -> target/bindings/{kotlin,swift,python}
#   PROFILE=release ffi/generate-bindings.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE="${PROFILE:-debug}"
flag=""; [ "$PROFILE" = release ] && flag="--release"
cargo build $flag -p qiaomen-ffi -p uniffi-bindgen
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
LIB="$TARGET_DIR/$PROFILE/libqiaomen.so"
OUT="$TARGET_DIR/bindings"
rm -rf "$OUT"
for lang in kotlin swift python; do
  "$TARGET_DIR/$PROFILE/uniffi-bindgen" generate --no-format --library "$LIB" --language "$lang" --out-dir "$OUT/$lang"
done
# Python loads the library from beside qiaomen.py.
cp "$LIB" "$OUT/python/"
# The Swift header must at least be valid C.
# (`_Nonnull` / `_Nullable` are clang nullability annotations; gcc checks the rest.)
gcc -fsyntax-only -D_Nonnull= -D_Nullable= -x c "$OUT/swift/qiaomenFFI.h"
echo "bindings in $OUT: $(cd "$OUT" && find . -type f | sort | tr '\n' ' ')"
