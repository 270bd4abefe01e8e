"""China's commercial cryptography (SM2 / SM3 / SM4) behind one small API, plus field encryption.

Pure: no Flask, no pymongo. SM2 runs on the system OpenSSL 3 through ctypes, or on gmssl when libcrypto
cannot be loaded (`backend_name()`); SM3 on hashlib; SM4 on the `cryptography` package.

- `sm3(data)`, `sm3_hmac(key, data)`                       GB/T 32905, RFC 2104
- `sm4_ecb_encrypt/decrypt(key, data)`                     GB/T 32907, raw blocks, no padding
- `sm4_gcm_encrypt(key, pt, aad)` -> nonce|ct|tag          SP 800-38D / RFC 8998; decrypt raises CryptoError
- `SM2PrivateKey`, `SM2PublicKey`                          GB/T 32918.2 signatures, raw 64-byte r|s
- `FieldCipher`                                            encrypted fields with blind indexes
"""

from app.crypto.errors import CryptoError
from app.crypto.fields import FieldCipher
from app.crypto.sm2 import DEFAULT_UID, SM2PrivateKey, SM2PublicKey, backend_name
from app.crypto.sm3 import sm3, sm3_hmac
from app.crypto.sm4 import sm4_ecb_decrypt, sm4_ecb_encrypt, sm4_gcm_decrypt, sm4_gcm_encrypt

__all__ = [
    "DEFAULT_UID",
    "CryptoError",
    "FieldCipher",
    "SM2PrivateKey",
    "SM2PublicKey",
    "backend_name",
    "sm3",
    "sm3_hmac",
    "sm4_ecb_decrypt",
    "sm4_ecb_encrypt",
    "sm4_gcm_decrypt",
    "sm4_gcm_encrypt",
]
