"""hubkit.publish."""
