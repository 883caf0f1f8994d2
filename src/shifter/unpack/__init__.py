"""unpack."""
