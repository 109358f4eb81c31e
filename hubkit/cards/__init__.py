"""hubkit.cards."""
