"""hubkit.formats."""
