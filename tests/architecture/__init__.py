"""The package's shape: layers, import cycles, old module paths."""
