"""The resident electronic health card (电子健康卡): card IDs, signed QR tokens, card status, keys."""
