"""schemathesis hooks for tests/api-fuzz.sh (SCHEMATHESIS_HOOKS=api_fuzz_hooks).

`PATCH /v1/photos/{hash}` takes `application/offset+octet-stream` (the resumable-upload
draft's media type, SYNC-v1 §14.3): raw bytes, as schemathesis sends `application/octet-stream`.
"""
import schemathesis

schemathesis.serializer.alias("application/offset+octet-stream", "application/octet-stream")
