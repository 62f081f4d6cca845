#!/bin/sh
# POST $BODY to $URL signed (RFC 9421, HMAC-SHA256) as API client $KEYID with its secret
# $SECRET; any arguments go to curl as they are (a step-up answer: -H "Txgate-OTP: 123456").
# docs/clients.md explains each line. (-macopt key: puts the secret on the command line,
# visible to other local users in `ps`: on shared machines use a real client library.)
set -eu
CREATED=$(date +%s)
NONCE=$(openssl rand -hex 16)
DIGEST="sha-256=:$(printf %s "$BODY" | openssl dgst -sha256 -binary | openssl base64 -A):"
PARAMS="(\"@method\" \"@target-uri\" \"content-digest\");created=$CREATED;keyid=\"$KEYID\";nonce=\"$NONCE\";alg=\"hmac-sha256\""
BASE=$(printf '"@method": POST\n"@target-uri": %s\n"content-digest": %s\n"@signature-params": %s' \
  "$URL" "$DIGEST" "$PARAMS")
SIG=$(printf %s "$BASE" | openssl dgst -sha256 -mac HMAC -macopt "key:$SECRET" -binary | openssl base64 -A)
curl -sS "$URL" -H "Content-Type: application/json" -H "Content-Digest: $DIGEST" \
  -H "Signature-Input: sig1=$PARAMS" -H "Signature: sig1=:$SIG:" --data-binary "$BODY" "$@"
