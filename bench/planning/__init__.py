"""The CUDA memory planner: a training step traced on fake tensors, replayed through a caching-allocator model."""
