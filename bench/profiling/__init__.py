"""Measuring models: parameters, MACs, memory, time, op counts; profile_variants is the entry point."""
