"""prepare: raw rows in any supported layout -> cleaned, filtered, deduplicated, split conversations."""
