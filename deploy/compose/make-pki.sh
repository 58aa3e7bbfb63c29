#!/bin/sh
# Make the throwaway PKI for the Compose demo with openssl: a CA, a server
# certificate for the nginx service "upstream", and a client certificate for
# mtlsproxy. Everything is valid for 30 days. Not for production.
#
#   ./make-pki.sh [DIR]        default DIR: pki/ beside this script
#
# Files: ca.crt ca.key server.crt server.key client.crt client.key
set -eu

dir=${1:-$(dirname "$0")/pki}
days=30
mkdir -p "$dir"
cd "$dir"

umask 077
ext=$(mktemp)
trap 'rm -f "$ext" server.csr client.csr ca.srl' EXIT

# CA
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ca.key
openssl req -x509 -new -key ca.key -sha256 -days "$days" \
	-subj "/O=mtlsproxy demo/CN=mtlsproxy demo CA" \
	-addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
	-addext "keyUsage=critical,keyCertSign,cRLSign" \
	-addext "subjectKeyIdentifier=hash" \
	-out ca.crt

# leaf NAME CN EXTENSIONS: a key and a certificate signed by the CA.
leaf() {
	openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1.key"
	openssl req -new -key "$1.key" -subj "/O=mtlsproxy demo/CN=$2" -out "$1.csr"
	printf '%s\n' "$3" >"$ext"
	openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial \
		-sha256 -days "$days" -extfile "$ext" -out "$1.crt"
}

leaf server upstream "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=DNS:upstream,DNS:localhost,IP:127.0.0.1
authorityKeyIdentifier=keyid"

leaf client legacy-client "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth
authorityKeyIdentifier=keyid"

chmod 644 ca.crt server.crt client.crt
# mtlsproxy runs as user 65532 in its container and reads client.key through
# a bind mount, which keeps this file's owner: as root, hand the key to 65532;
# otherwise make it readable by all (mtlsproxy then warns about it).
if [ "$(id -u)" = 0 ]; then
	chown 65532:65532 client.key
else
	chmod 644 client.key
fi

openssl verify -CAfile ca.crt server.crt client.crt >/dev/null
echo "demo PKI in $(pwd): ca.crt, server.crt/.key (upstream), client.crt/.key (legacy-client)"
