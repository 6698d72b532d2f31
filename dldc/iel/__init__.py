"""IEL, the internal evaluation loop: contrastive image–text scoring of every pair."""
