"""Long-tailed data: dataset cards, raw sources, LT profiles and selection, in-memory batching."""
