"""Node families: one module per family, each registering its node types with the registry."""
