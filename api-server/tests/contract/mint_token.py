"""Mints what an authenticated contract run needs: a P-256 key pair, its JWKS (written to
the path given) and a token for it (printed) with both scopes, for make test-contract."""
import json
import sys
import time

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

jwks_path, issuer, audience = sys.argv[1:4]
key = ec.generate_private_key(ec.SECP256R1())
jwk = json.loads(ECAlgorithm.to_jwk(key.public_key()))
jwk.update({"kid": "contract", "alg": "ES256", "use": "sig"})
with open(jwks_path, "w", encoding="utf-8") as out:
    json.dump({"keys": [jwk]}, out)
now = int(time.time())
claims = {
    "iss": issuer,
    "aud": audience,
    "sub": "contract-test",
    "scope": "users:read users:write",
    "iat": now,
    "exp": now + 3600,
}
print(jwt.encode(claims, key, algorithm="ES256", headers={"kid": "contract"}))
