"""Kubeflow pipelines: they only wire components together."""
