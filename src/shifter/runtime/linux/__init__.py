"""runtime/linux."""
