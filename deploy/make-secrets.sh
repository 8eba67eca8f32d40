#!/bin/sh
# Writes the secrets deploy/compose.yaml reads, once: a key-encryption key, the bootstrap admin's,
# PostgreSQL's and Redis's passwords, the database and Redis URLs holding them, and Redis's ACL
# file. Existing files are kept (a new KEK would make every stored root key unreadable).
#
# Compose bind-mounts file secrets with their owner and mode on this host (its uid/gid/mode
# options apply to Swarm only), so each file must belong to the user of the image that reads it:
# uid 10001 (tokensvc) and uid 999 (redis, for its ACL file). Run this as root (sudo), or chown
# them afterwards as it says.
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
redis_url() {
    printf 'redis://tokensvc:%s@redis:6379/0' "$(cat secrets/redis_password)"
}
# No default user: a client that does not log in can do nothing. tokensvc's user reaches its own
# keys and channels (TOKENSVC_REDIS_PREFIX, `tokensvc:`) and no admin command (FLUSHALL, CONFIG,
# KEYS, ...); its password is stored as a SHA-256, as Redis allows. The health check may PING.
redis_acl() {
    hash=$(printf '%s' "$(cat secrets/redis_password)" | sha256sum | cut -d' ' -f1)
    printf 'user default off\n'
    printf 'user healthcheck on nopass -@all +ping\n'
    printf 'user tokensvc on #%s ~tokensvc:* &tokensvc:* +@all -@dangerous\n' "$hash"
}
new kek kek
new admin_password password
new postgres_password password
new database_url database_url
new redis_password password
new redis_url redis_url
new redis_acl redis_acl
if [ "$(id -u)" = 0 ]; then
    chown 10001:10001 secrets/kek secrets/admin_password secrets/database_url secrets/redis_url
    chown 999:999 secrets/redis_acl
else
    echo "now run: sudo chown 10001:10001 $(pwd)/secrets/kek $(pwd)/secrets/admin_password $(pwd)/secrets/database_url $(pwd)/secrets/redis_url && sudo chown 999:999 $(pwd)/secrets/redis_acl"
fi
