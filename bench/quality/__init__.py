"""Speech quality: per-utterance metrics, the composite measures, evaluate (the entry point)."""
