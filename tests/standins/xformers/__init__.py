"""A stand-in for xformers (0.0.35): see xformers.ops."""
