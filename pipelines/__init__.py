"""Ray Data graphs: decide where each actor runs and how many copies; hold no model code."""
