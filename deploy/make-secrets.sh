#!/bin/sh
# Writes the secrets deploy/compose.yaml reads, once: a key-encryption key, the bootstrap admin's
# and PostgreSQL's passwords, and the database URL holding the latter. Existing files are kept
# (a new KEK would make every stored root key unreadable).
#
# Compose bind-mounts file secrets with their owner and mode on this host (its uid/gid/mode
# options apply to Swarm only), so the files tokensvc reads must belong to the image's user,
# uid 10001: run this as root (sudo), or chown them afterwards as it says.
set -eu
cd "$(dirname "$0")"
umask 077
mkdir -p secrets
new() { [ -e "secrets/$1" ] || { "$2" > "secrets/$1"; echo "wrote secrets/$1"; }; }
password() { head -c 32 /dev/urandom | base64 | tr -d '\n/+=' | head -c 32; }
kek() { head -c 32 /dev/urandom | base64; }
database_url() {
    printf 'postgresql+asyncpg://tokensvc:%s@postgres:5432/tokensvc' "$(cat secrets/postgres_password)"
}
new kek kek
new admin_password password
new postgres_password password
new database_url database_url
if [ "$(id -u)" = 0 ]; then
    chown 10001:10001 secrets/kek secrets/admin_password secrets/database_url
else
    echo "now run: sudo chown 10001:10001 $(pwd)/secrets/kek $(pwd)/secrets/admin_password $(pwd)/secrets/database_url"
fi
