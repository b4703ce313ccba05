"""KD losses as pure tensor functions, each checked in tests against hand-computed values."""
