"""hubkit.run."""
