"""The training engine: the loop, its state, and the run that wires a recipe to it."""
