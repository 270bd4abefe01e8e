"""The one exception type of app.crypto (kept in its own module so every primitive can raise it)."""


class CryptoError(Exception):
    """A cryptographic operation failed: tampered ciphertext, unusable key, backend failure."""
