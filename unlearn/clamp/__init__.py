"""SAE feature edits: feature statistics, selection, the clamp hook, controls, gates, sweeps."""
