"""Datasets: readers, the manifest, safe image loading and SynthRS."""
