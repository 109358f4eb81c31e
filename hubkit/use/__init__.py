"""hubkit.use."""
