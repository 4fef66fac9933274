"""Dev-only helpers for the tests and offline development (not shipped in the wheel)."""
