"""The token format: the binary v2 macaroon codec, the HMAC chain, the identifier, `tsv1_` token
strings, and offline attenuation and inspection. Pure: no I/O (the C half: tokensvc/_speedups.c)."""
