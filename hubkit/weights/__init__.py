"""hubkit.weights."""
