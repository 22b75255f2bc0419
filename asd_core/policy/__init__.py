"""Policy layer: costs, the fitted policy model, the adaptive DP policy and the reference policies."""
