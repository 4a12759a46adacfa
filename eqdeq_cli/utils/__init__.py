"""Small helpers used across the package: atomic files, strict argument checks, seeded draws, the autocast check."""
