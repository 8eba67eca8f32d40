"""Third-party caveats in the macaroon bakery's formats: tokensvc as a discharger, and as a client.

- `codec`: third-party caveat ids (bakery versions 1, 2 and 3), sealed with a NaCl box.
- `jsonmacaroon`: the JSON macaroon shapes bakery clients and dischargers exchange.
- `conditions` and `discharger`: what tokensvc discharges, and the discharge macaroons it mints.
- `thirdparty`: adding caveats addressed to other dischargers when minting.
- `config`, `appkeys`, `cli`: wiring.

The bakery package itself (`macaroonbakery`) is only a test dependency: everything here is written
from its wire formats, so that its unmodified clients and dischargers interoperate with us.
"""
