#!/usr/bin/env bash
# Compiles the generated Kotlin bindings with the test and runs it on the JVM against a real
# server. Needs: target/bindings (ffi/generate-bindings.sh), target/debug/qiaomen-server,
# Debian's libjna-java, and the npm package kotlin-compiler in .tools/kotlin.
set -euo pipefail
cd "$(dirname "$0")/../../.."
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
KC=.tools/kotlin/node_modules/kotlin-compiler
JNA=$(dpkg -L libjna-java | grep '/jna.jar$' | head -1)
CP="$JNA:$KC/lib/kotlinx-coroutines-core-jvm.jar"
OUT="$TARGET_DIR/kotlin-test"
mkdir -p "$OUT"
"$KC/bin/kotlinc" -nowarn -cp "$CP" "$TARGET_DIR/bindings/kotlin/uniffi/qiaomen/qiaomen.kt" ffi/tests/kotlin/PhoneTest.kt -d "$OUT/test.jar"
java -Djna.library.path="$TARGET_DIR/debug" -cp "$OUT/test.jar:$CP:$KC/lib/kotlin-stdlib.jar" PhoneTestKt "$TARGET_DIR/debug/qiaomen-server"
